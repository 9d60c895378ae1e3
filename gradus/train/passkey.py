"""A long-context probe: synthetic passkey retrieval, reported as accuracy by position.

Loss at a long length says little about whether the model *uses* the far context, which is what a
long-context stage (stage C) is for. The passkey test asks it directly: a random five-digit key is hidden
at a given depth in filler text as long as the probe length, and the sequence ends with the question;
the model retrieves the key when it predicts every token of the answer (teacher-forced, one forward
pass). Accuracy is the share of trials retrieved, per depth (0% = the key at the start, 100% = just
before the question), so a model that only reads the recent past shows it as a falling row.

The prompts are made once per length from a fixed seed, so every evaluation asks the same questions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from gradus.config import PasskeyConfig
from gradus.errors import GradusError

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
"""Text with nothing to remember, repeated around the key."""


class TooShort(GradusError):
    """The probe length cannot hold the key, the question and the answer."""


@dataclass(frozen=True)
class PasskeyPrompt:
    """One trial: the token ids (exactly the probe length), where the answer starts, the key and its depth."""

    ids: list[int]
    """Filler with the key inside, the question, then the answer's tokens."""
    answer_start: int
    """Index in ``ids`` of the answer's first token."""
    key: str
    """The digits hidden and asked for."""
    depth: float
    """Where the key sits in the filler: 0 = its start, 1 = its end."""


def depths(count: int) -> list[float]:
    """``count`` depths evenly from 0 to 1 (just 0.5 for one)."""
    return [0.5] if count == 1 else [i / (count - 1) for i in range(count)]


def make_prompts(tokenizer, seq_len: int, cfg: PasskeyConfig) -> list[PasskeyPrompt]:
    """``cfg.trials`` prompts at each of ``cfg.depths`` depths, each exactly ``seq_len`` tokens."""
    rng = random.Random(cfg.seed)
    filler = tokenizer.encode(FILLER)
    question = tokenizer.encode(" What is the pass key? The pass key is")
    out = []
    for depth in depths(cfg.depths):
        for _ in range(cfg.trials):
            key = "".join(rng.choice("0123456789") for _ in range(cfg.digits))
            needle = tokenizer.encode(f" The pass key is {key}. Remember it. {key} is the pass key. ")
            answer = tokenizer.encode(f" {key}")
            room = seq_len - len(needle) - len(question) - len(answer)
            if room < 0:
                raise TooShort(f"passkey probe: {seq_len} tokens cannot hold the key and the question; "
                               f"set train.passkey.seq_len to a longer length")
            hay = (filler * (room // max(1, len(filler)) + 1))[:room]
            cut = round(depth * room)
            ids = hay[:cut] + needle + hay[cut:] + question + answer
            out.append(PasskeyPrompt(ids, len(ids) - len(answer), key, depth))
    return out


@torch.no_grad()
def retrieval_accuracy(model: torch.nn.Module, prompts: list[PasskeyPrompt], device: torch.device,
                       autocast, rows: int = 8) -> dict[float, float]:
    """Per depth, the share of prompts whose every answer token is the model's top prediction."""
    was_training = model.training
    model.eval()
    hits: dict[float, list[bool]] = {}
    try:
        for i in range(0, len(prompts), rows):
            chunk = prompts[i : i + rows]
            ids = torch.tensor([p.ids for p in chunk], dtype=torch.long, device=device)
            with autocast():
                logits, _ = model(ids)
            guess = logits.argmax(-1)
            for row, p in enumerate(chunk):
                # Position t predicts token t + 1: the answer's tokens are predicted from answer_start − 1.
                want = ids[row, p.answer_start:]
                got = guess[row, p.answer_start - 1 : len(p.ids) - 1]
                hits.setdefault(p.depth, []).append(bool(torch.equal(want, got)))
    finally:
        model.train(was_training)
    return {d: sum(h) / len(h) for d, h in hits.items()}


class PasskeyProbe:
    """The probe a run evaluates: prompts made once per length, figures as ``probe/passkey/...`` keys."""

    def __init__(self, cfg: PasskeyConfig, tokenizer):
        self.cfg = cfg
        """The probe's settings (``train.passkey``)."""
        self.tokenizer = tokenizer
        """The run's tokenizer (the prompts are text)."""
        self._prompts: dict[int, list[PasskeyPrompt] | None] = {}  # None: too short for the prompt

    def record(self, model: torch.nn.Module, stage_seq_len: int, device: torch.device, autocast,
               rows: int) -> dict[str, float]:
        """Evaluate at ``cfg.seq_len`` (else the stage's length): the mean accuracy, one key per depth
        (``probe/passkey/depth_50`` for the middle), and the length. Nothing at a stage too short to hold
        the prompt (an early, short stage: the probe is for the long ones)."""
        seq_len = self.cfg.seq_len or stage_seq_len
        if seq_len not in self._prompts:
            try:
                self._prompts[seq_len] = make_prompts(self.tokenizer, seq_len, self.cfg)
            except TooShort:
                self._prompts[seq_len] = None
        prompts = self._prompts[seq_len]
        if prompts is None:
            return {}
        by_depth = retrieval_accuracy(model, prompts, device, autocast, rows)
        out = {f"probe/passkey/depth_{round(d * 100)}": a for d, a in by_depth.items()}
        out["probe/passkey/accuracy"] = sum(by_depth.values()) / len(by_depth)
        out["probe/passkey/seq_len"] = seq_len
        return out
