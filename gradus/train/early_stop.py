"""When to stop early: patience (no new best in N evaluations) and a flat curve.

The lesson stops a stage when validation "flattens over 2–3 evaluations": each of the last
``flat_evals`` evaluations improved the followed loss by less than ``min_delta`` of it (relative, so one
threshold fits any loss scale). Patience alone waits for the curve to turn up, which a slowly improving
run never does. Pure: the counters live in :class:`~gradus.train.stateful.Progress`, so a resumed run
decides exactly as the uninterrupted one.
"""

from __future__ import annotations

import math

from gradus.config import TrainConfig
from gradus.train.stateful import Progress


def followed_loss(val: dict[str, float], metric: str) -> float:
    """The figure ``train.early_stopping_metric`` names in an evaluation's record (NaN when absent)."""
    return val.get(metric, float("nan"))


def observe_config(progress: Progress, loss: float, train: TrainConfig) -> tuple[bool, str | None]:
    """:func:`observe` with the thresholds of ``train`` (``early_stopping_patience``, ``_min_delta``,
    ``_flat_evals``)."""
    return observe(progress, loss, patience=train.early_stopping_patience, min_delta=train.early_stopping_min_delta,
                   flat_evals=train.early_stopping_flat_evals)


def observe(progress: Progress, loss: float, *, patience: int | None, min_delta: float | None,
            flat_evals: int) -> tuple[bool, str | None]:
    """Record one evaluation's followed ``loss`` in ``progress``. Returns (a new best?, the reason to stop
    or None)."""
    improved = math.isfinite(loss) and (progress.best_val_loss is None or loss < progress.best_val_loss)
    if improved:
        progress.best_val_loss = loss
        progress.evals_since_best = 0
    else:
        progress.evals_since_best += 1
    if math.isfinite(loss):
        # flat_evals improvements need flat_evals + 1 losses.
        progress.recent_val_losses = (progress.recent_val_losses + [loss])[-(flat_evals + 1):]
    if patience is not None and progress.evals_since_best >= patience:
        return improved, f"early stopping: no improvement in {patience} evaluations"
    if min_delta is not None and is_flat(progress.recent_val_losses, min_delta, flat_evals):
        return improved, (f"early stopping: flat curve, under {min_delta:.2%} relative improvement in each of "
                          f"the last {flat_evals} evaluations")
    return improved, None


def is_flat(losses: list[float], min_delta: float, flat_evals: int) -> bool:
    """True when each of the last ``flat_evals`` steps between ``losses`` improved by less than
    ``min_delta`` of the previous loss (a rise counts as no improvement)."""
    if len(losses) < flat_evals + 1:
        return False
    last = losses[-(flat_evals + 1):]
    return all((a - b) < min_delta * abs(a) for a, b in zip(last, last[1:], strict=False))
