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
