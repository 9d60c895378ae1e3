"""Sampling text from a GPT: temperature, top-k, top-p (nucleus), a token limit and a seed.

``temperature=0`` is greedy decoding (the most likely token each step; ties go to the lowest id, as
``torch.argmax`` and ``transformers``' greedy search both do), so it is deterministic and gives the same
tokens as ``AutoModelForCausalLM.generate(do_sample=False)`` on the exported model. Sampling draws from a
``torch.Generator`` seeded with ``seed``: the same seed and settings give the same text.

There is no key/value cache: each new token runs the model over the context again (at most
``max_seq_len`` tokens; older ones slide out), which is simple and fast enough for the models gradus trains
on one machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradus.errors import ConfigError


@dataclass(frozen=True)
class SamplingSettings:
    """How each next token is chosen."""

    max_new_tokens: int = 100
    """Tokens to generate at most (fewer when EOS comes first and ``stop_at_eos``)."""
    temperature: float = 0.8
    """Softmax temperature; 0 = greedy (deterministic)."""
    top_k: int | None = None
    """Sample only among the k most likely tokens (None = all)."""
    top_p: float | None = None
    """Sample only from the smallest set of tokens whose probabilities add up to p (None = all)."""
    seed: int = 0
    """Seed of the sampling generator."""
    stop_at_eos: bool = True
    """Stop at the end-of-document token (it is not returned)."""

    def check(self) -> None:
        """One-line ConfigError naming the flag for an impossible setting."""
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-tokens={self.max_new_tokens}: must be at least 1")
        if not self.temperature >= 0:
            raise ConfigError(f"--temperature={self.temperature}: must be ≥ 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"--top-k={self.top_k}: must be at least 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p={self.top_p}: must be in (0, 1]")


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """logits [V] with every token outside the top-k and outside the top-p nucleus set to -inf."""
    out = logits.clone()
    if top_k is not None and top_k < out.numel():
        kth = torch.topk(out, top_k).values[-1]
        out[out < kth] = float("-inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the more likely tokens
        drop = before >= top_p  # the most likely token always stays (its "before" is 0)
        out[order[drop]] = float("-inf")
    return out


def next_token(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator) -> int:
    """The next token id from the last position's logits [V]."""
    if settings.temperature == 0:
        return int(torch.argmax(logits))
    scaled = filter_logits(logits.float() / settings.temperature, settings.top_k, settings.top_p)
    probs = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.no_grad()
def generate(model, prompt_ids: list[int], settings: SamplingSettings, eos_id: int | None = None) -> list[int]:
    """New token ids after ``prompt_ids`` (the prompt is not included). A prompt longer than the
    model's context is a one-line ConfigError; an empty one starts from EOS, the token every training
    document follows."""
    settings.check()
    context = model.shape.max_seq_len
    if len(prompt_ids) > context:
        raise ConfigError(
            f"the prompt is {len(prompt_ids)} tokens but the model's context is {context} "
            f"(model.max_seq_len); shorten the prompt"
        )
    ids = list(prompt_ids) if prompt_ids else ([eos_id] if eos_id is not None else [])
    if not ids:
        raise ConfigError("empty prompt and no end-of-document token to start from; give --prompt TEXT")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(settings.seed)
    was_training = model.training
    model.eval()
    new: list[int] = []
    try:
        for _ in range(settings.max_new_tokens):
            window = torch.tensor([ids[-context:]], dtype=torch.long, device=device)  # [1, T]
            logits, _ = model(window)
            token = next_token(logits[0, -1].float(), settings, generator)
            if settings.stop_at_eos and eos_id is not None and token == eos_id:
                break
            ids.append(token)
            new.append(token)
    finally:
        model.train(was_training)
    return new
