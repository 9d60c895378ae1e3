"""Validation: loss, perplexity and next-token accuracy on held-out batches."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch

from gradus.train.ema import ema_evaluation


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable, device: torch.device, autocast) -> dict[str, float]:
    """Token-weighted mean loss, perplexity and next-token accuracy over ``batches`` (numpy arrays with
    ``inputs``/``labels``; labels of -100 are ignored). The model is put back in its previous mode.

    When the batches name their source (``batch.source``, as the held-out batches do), ``"sources"`` maps
    each source to the same figures over its own batches, so interference after a domain-infusion or
    long-context stage shows per source; the mixed figures are the token-weighted whole, as before."""
    total_loss = 0.0
    total_correct = 0
    total_tokens = 0
    by_source: dict[str, list[float]] = {}  # name -> [loss sum, correct, tokens]
    for b, logits, labels in _eval_logits(model, batches, device, autocast):
        mask = labels != -100
        n = int(mask.sum())
        if n == 0:
            continue
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        correct = int(((logits.argmax(-1) == labels) & mask).sum())
        total_loss += float(loss)
        total_correct += correct
        total_tokens += n
        source = getattr(b, "source", None)
        if source:
            acc = by_source.setdefault(source, [0.0, 0, 0])
            acc[0] += float(loss)
            acc[1] += correct
            acc[2] += n
    out = _figures(total_loss, total_correct, total_tokens)
    if by_source:
        out["sources"] = {name: _figures(*acc) for name, acc in by_source.items()}  # type: ignore[assignment]
    return out


def _eval_logits(model: torch.nn.Module, batches: Iterable, device: torch.device,
                 autocast) -> Iterator[tuple[object, torch.Tensor, torch.Tensor]]:
    """(batch, fp32 logits, labels on ``device``) for each of ``batches``, the model in eval mode without
    gradients; its previous mode is put back afterwards (also when the caller stops early): the forward pass
    every evaluation shares."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in batches:
                inputs = torch.from_numpy(b.inputs).to(device)
                labels = torch.from_numpy(b.labels).to(device)
                with autocast():
                    logits, _ = model(inputs)
                yield b, logits.float(), labels
    finally:
        model.train(was_training)


def _figures(loss_sum: float, correct: int, tokens: int) -> dict[str, float]:
    """Mean loss, perplexity, accuracy and token count from summed figures (NaN when no tokens)."""
    if tokens == 0:
        return {"loss": float("nan"), "ppl": float("nan"), "accuracy": float("nan"), "tokens": 0}
    mean = loss_sum / tokens
    return {"loss": mean, "ppl": math.exp(mean) if mean < 50 else float("inf"), "accuracy": correct / tokens,
            "tokens": tokens}


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

    def row_losses(self, model: torch.nn.Module, seq_len: int, device: torch.device, autocast) -> list[list[float]]:
        """[loss sum, label tokens] of each held-out row at ``seq_len``, in order: the rows two models are
        compared on, row by row (an adaptive run's verification)."""
        rows: list[list[float]] = []
        for _, logits, labels in _eval_logits(model, self.batches(seq_len), device, autocast):
            losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100,
                                                       reduction="none")
            sums, counts = losses.sum(dim=1), (labels != -100).sum(dim=1)
            rows.extend([float(v), int(n)] for v, n in zip(sums.tolist(), counts.tolist(), strict=True))
        return rows

    def reference(self, model: torch.nn.Module, device: torch.device, autocast) -> dict[str, float]:
        """:func:`evaluate`'s figures at the reference length only (the EMA weights' evaluation)."""
        return evaluate(model, self.batches(self.reference_seq_len), device, autocast)


def side_evaluations(ema, probe, model: torch.nn.Module, validation: Validation, seq_len: int,
                     rt) -> tuple[dict[str, float], str]:
    """What an evaluation adds when configured: the averaged weights at the reference length (``ema``, a
    :class:`~gradus.train.ema.WeightEMA`: ``val_ema/...``) and the passkey probe at ``seq_len`` (``probe``,
    a :class:`~gradus.train.passkey.PasskeyProbe`: ``probe/passkey/...``). Returns (record keys, console
    text to append)."""
    record: dict[str, float] = {}
    text = ""
    if ema is not None:
        record, text = ema_evaluation(ema, model, validation, rt)
    if probe is not None:  # (nothing at a stage too short for its prompt)
        figures = probe.record(model, seq_len, rt.device, rt.autocast, validation.max_rows)
        record.update(figures)
        if figures:
            text += f"; passkey {figures['probe/passkey/accuracy']:.2f} at {figures['probe/passkey/seq_len']}"
    return record, text
