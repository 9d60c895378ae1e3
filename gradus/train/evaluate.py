"""Validation: loss, perplexity and next-token accuracy on held-out batches."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable, device: torch.device, autocast) -> dict[str, float]:
    """Token-weighted mean loss, perplexity and next-token accuracy over ``batches`` (numpy arrays with
    ``inputs``/``labels``; labels of -100 are ignored). The model is put back in its previous mode."""
    was_training = model.training
    model.eval()
    total_loss = 0.0
    total_correct = 0
    total_tokens = 0
    try:
        for b in batches:
            inputs = torch.from_numpy(b.inputs).to(device)
            labels = torch.from_numpy(b.labels).to(device)
            with autocast():
                logits, _ = model(inputs)
            logits = logits.float()
            mask = labels != -100
            n = int(mask.sum())
            if n == 0:
                continue
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total_loss += float(loss)
            total_correct += int(((logits.argmax(-1) == labels) & mask).sum())
            total_tokens += n
    finally:
        model.train(was_training)
    if total_tokens == 0:
        return {"loss": float("nan"), "ppl": float("nan"), "accuracy": float("nan"), "tokens": 0}
    mean = total_loss / total_tokens
    return {
        "loss": mean,
        "ppl": math.exp(mean) if mean < 50 else float("inf"),
        "accuracy": total_correct / total_tokens,
        "tokens": total_tokens,
    }


class Validation:
    """A run's evaluations: the held-out batches at each length (made once, then cached) and the two
    evaluations of :meth:`run`, at the fixed reference length and at the current stage's length."""

    def __init__(self, data, tokens: int, max_rows: int, reference_seq_len: int):
        self.data = data
        """The run's :class:`~gradus.data.DataPipeline` (its held-out documents)."""
        self.tokens = tokens
        """Input tokens to evaluate on at each length (``data.validation.tokens``)."""
        self.max_rows = max_rows
        """Rows per evaluation batch at most (the run's micro-batch: what is known to fit)."""
        self.reference_seq_len = reference_seq_len
        """The length every evaluation is comparable at across stages."""
        self._cache: dict[int, list] = {}

    def batches(self, seq_len: int) -> list:
        """The held-out batches at ``seq_len`` (the same ones every time)."""
        if seq_len not in self._cache:
            rows = max(1, min(self.max_rows, max(1, self.tokens // seq_len)))
            self._cache[seq_len] = self.data.validation_batches(seq_len, self.tokens, rows)
        return self._cache[seq_len]

    def run(self, model: torch.nn.Module, seq_len: int, device: torch.device,
            autocast) -> tuple[dict[str, float], dict[str, float] | None]:
        """(at the reference length, at ``seq_len``): :func:`evaluate`'s figures; the second is None when
        ``seq_len`` is the reference length."""
        ref = evaluate(model, self.batches(self.reference_seq_len), device, autocast)
        if seq_len == self.reference_seq_len:
            return ref, None
        return ref, evaluate(model, self.batches(seq_len), device, autocast)
