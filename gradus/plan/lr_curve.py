"""The LR range test's curve analysis (``gradus lr-find``), pure: no torch, no model, no data.

A sweep trains a fresh model for K steps while the LR grows exponentially (:func:`lr_schedule`); what its
loss does along the way (:func:`analyse`) says where training is fastest and where it breaks. The sweep
itself runs in :mod:`gradus.train.lr_find`; everything here works on plain lists of floats.

Definitions (what the report's numbers mean)
--------------------------------------------
* LR of step i (i = 0 … K−1): ``min_lr · (max_lr / min_lr) ** (i / (K − 1))`` — exactly min_lr at the
  first step and max_lr at the last, a constant factor in between.
* Smoothed loss s_i: an exponential moving average of the step losses with bias correction (as the
  fastai LR finder): ``a_i = β·a_{i−1} + (1−β)·loss_i``, ``s_i = a_i / (1 − β^(i+1))``, with
  ``β = 1 − 1/w`` and ``w = max(2, K/20)`` steps. The window is a fixed share (5%) of the sweep, i.e.
  about 0.3 decades of LR for a 1e-6…1 sweep: wide enough to calm batch-to-batch noise, short enough
  that the curve lags the LR by a factor < 2 (fastai's β = 0.98 lags by ~50 steps, half the sweep).
* Divergence: the first step whose raw loss is not finite, or whose smoothed loss has risen above its
  minimum so far m_i by more than ``max(0.1, (s_0 − m_i) / 3)`` nats, s_0 being the first step's loss
  (the untrained model's, ≈ ln V): the sweep has given back a third of what it had learned. Why not
  fastai's "4 × the minimum": language-model cross-entropy with gradient clipping does not quadruple when
  training breaks, it climbs back towards ln V (measured: a 4 × 64 model falls from 6.24 to 4.9 and
  returns to 6.4 at LR 1, never near 4 × 4.9), so a ratio rule would call almost every sweep stable.
  The 0.1-nat floor keeps noise on the flat start (where s_0 − m_i ≈ 0) from counting. The sweep stops
  at the divergent step.
* Max stable LR: the LR of the last step before divergence; ``max_lr`` when the loss never diverged
  (the report flags it: the real limit is higher than the sweep went).
* Steepest-descent LR: the LR where the smoothed loss falls fastest per unit of log LR (most negative
  finite-difference slope ds/dlnLR), among the steps before divergence.
* Min-loss LR: the LR at the smallest smoothed loss before divergence.
* Suggested peak LR: ``min(steepest, max_stable / 3)`` — see :func:`suggest_peak` for why.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from gradus.errors import ConfigError

RISE_FRACTION = 1 / 3
"""Divergence: the smoothed loss rose above its minimum by this share of the progress made so far …"""
RISE_FLOOR = 0.1
"""… and by at least this many nats (see the module docstring)."""
STABILITY_MARGIN = 3.0
"""The suggested peak is at most max_stable / this (see :func:`suggest_peak`)."""
MIN_STEPS = 5
"""Fewer steps cannot give a slope, a minimum and a divergence point."""


def lr_schedule(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """The LR of each step: exponential from ``min_lr`` (step 0) to ``max_lr`` (step steps−1)."""
    check_sweep(min_lr, max_lr, steps)
    ratio = max_lr / min_lr
    lrs = [min_lr * ratio ** (i / (steps - 1)) for i in range(steps)]
    lrs[-1] = max_lr  # exact end point, not min·ratio¹ with its rounding
    return lrs


def check_sweep(min_lr: float, max_lr: float, steps: int) -> None:
    """One-line ConfigErrors for a sweep that cannot work."""
    for flag, value in (("--min-lr", min_lr), ("--max-lr", max_lr)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag}={value:g}: must be a positive learning rate, e.g. 1e-6")
    if min_lr >= max_lr:
        raise ConfigError(f"--min-lr={min_lr:g} must be below --max-lr={max_lr:g}; the sweep raises the LR")
    if steps < MIN_STEPS:
        raise ConfigError(f"--steps={steps}: the sweep needs at least {MIN_STEPS} steps (default 100)")


def smoothing_beta(steps: int) -> float:
    """EMA factor of the smoothed loss: a window of 5% of the sweep, at least 2 steps."""
    window = max(2.0, steps / 20)
    return 1.0 - 1.0 / window


class Smoother:
    """Bias-corrected exponential moving average, fed one loss at a time; tells when the loss diverged."""

    def __init__(self, beta: float):
        self.beta = beta
        self.avg = 0.0
        self.n = 0
        self.best = math.inf
        self.first: float | None = None

    def update(self, loss: float) -> tuple[float, bool]:
        """Add one raw loss; returns (smoothed loss, diverged). A non-finite loss is divergence itself and
        leaves the average as it was (the curve stays drawable)."""
        if not math.isfinite(loss):
            return (self.avg / (1 - self.beta**self.n) if self.n else math.nan), True
        if self.first is None:
            self.first = loss
        self.n += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        smoothed = self.avg / (1 - self.beta**self.n)
        self.best = min(self.best, smoothed)
        return smoothed, smoothed > divergence_threshold(self.first, self.best)


def divergence_threshold(initial: float, best: float) -> float:
    """Smoothed loss above which the sweep counts as diverged, given the first loss and the best smoothed
    loss so far: ``best + max(RISE_FLOOR, RISE_FRACTION × (initial − best))``."""
    return best + max(RISE_FLOOR, RISE_FRACTION * (initial - best))


def smooth(losses: Iterable[float], beta: float) -> list[float]:
    """The smoothed curve of a list of raw losses (see :class:`Smoother`)."""
    sm = Smoother(beta)
    return [sm.update(x)[0] for x in losses]


def suggest_peak(steepest_lr: float | None, max_stable_lr: float | None) -> float | None:
    """The suggested peak LR: ``min(steepest, max_stable / 3)``.

    Why the steepest-descent LR first: it is where a fresh model learns fastest per step, which is what a
    peak reached after warmup should be, and it is the figure that matched a tuned run. On ARCHITECTURE.md's
    first measurement (4 × 128, BPE 8192, WikiText-2, 8,192 tokens/step, length 256; grid-tuned best LR
    4e-3, with 2e-3 and 8e-3 both worse) a 60-step sweep gives steepest 4.6e-3, min-loss 1.2e-2
    (fastai's min-loss / 10 would say 1.2e-3) and max-stable 7.6e-2 (/3 = 2.5e-2, far too high).
    Why the cap at max_stable / 3: a sweep holds each LR for one step on small fresh weights, while a run
    holds its peak for thousands of steps, so the LR a sweep survives is an upper bound that real runs
    near it spike at; a factor of 3 is Smith's margin for cyclical-LR bounds. It binds when a curve keeps
    falling until it breaks (the steepest point then sits at the edge), and it is the only figure when
    the curve never falls (steepest is None).
    """
    candidates = [x for x in (steepest_lr, None if max_stable_lr is None else max_stable_lr / STABILITY_MARGIN)
                  if x is not None]
    return min(candidates) if candidates else None


@dataclass
class CurveStats:
    """What one sweep says (see the module docstring for each definition)."""

    diverged: bool
    diverged_step: int | None
    """First divergent step (None when the loss never diverged)."""
    diverged_lr: float | None
    max_stable_lr: float | None
    """LR of the last step before divergence (the sweep's max_lr when it never diverged)."""
    steepest_lr: float | None
    steepest_slope: float | None
    """ds/dlnLR at the steepest point, nats per e-fold of LR (negative)."""
    min_loss_lr: float | None
    min_loss: float | None
    suggested_lr: float | None
    initial_loss: float | None
    """The first raw loss: the untrained model's (≈ ln V)."""


def analyse(lrs: list[float], losses: list[float], beta: float) -> CurveStats:
    """Divergence point, steepest-descent LR, min-loss LR and the suggestion, from a sweep's raw losses.

    ``losses`` may be shorter than ``lrs`` (a sweep stops at divergence); the definitions are those of
    the module docstring, applied to exactly the same smoothing the sweep stopped on."""
    sm = Smoother(beta)
    smoothed: list[float] = []
    diverged_step = None
    for i, loss in enumerate(losses):
        s, bad = sm.update(loss)
        smoothed.append(s)
        if bad:
            diverged_step = i
            break
    stable = len(smoothed) if diverged_step is None else diverged_step  # steps 0 … stable-1 are usable
    if stable == 0:
        return CurveStats(True, 0, lrs[0], None, None, None, None, None, None,
                          losses[0] if losses and math.isfinite(losses[0]) else None)
    max_stable = lrs[stable - 1]
    s_ok = smoothed[:stable]
    k_min = min(range(stable), key=lambda i: s_ok[i])
    steepest_lr = steepest_slope = None
    if stable >= 3:
        # Central differences on a uniform log-LR grid (one-sided at the ends), as numpy.gradient does.
        logs = [math.log(x) for x in lrs[:stable]]
        slopes = []
        for i in range(stable):
            a, b = max(0, i - 1), min(stable - 1, i + 1)
            slopes.append((s_ok[b] - s_ok[a]) / (logs[b] - logs[a]))
        k = min(range(stable), key=lambda i: slopes[i])
        if slopes[k] < 0:  # a curve that never falls has no steepest descent
            steepest_lr, steepest_slope = lrs[k], slopes[k]
    return CurveStats(
        diverged=diverged_step is not None,
        diverged_step=diverged_step,
        diverged_lr=lrs[diverged_step] if diverged_step is not None else None,
        max_stable_lr=max_stable,
        steepest_lr=steepest_lr,
        steepest_slope=steepest_slope,
        min_loss_lr=lrs[k_min],
        min_loss=s_ok[k_min],
        suggested_lr=suggest_peak(steepest_lr, max_stable),
        initial_loss=losses[0] if math.isfinite(losses[0]) else None,
    )


RULES = {
    "schedule": "lr_i = min_lr * (max_lr/min_lr)^(i/(K-1)), i = 0..K-1",
    "smoothing": "bias-corrected EMA, beta = 1 - 1/max(2, K/20)",
    "divergence": f"raw loss not finite, or smoothed > m + max({RISE_FLOOR:g}, (first loss - m) / "
                  f"{1 / RISE_FRACTION:g}) with m the min smoothed loss so far",
    "max_stable_lr": "LR of the last step before divergence (max_lr if none)",
    "steepest_lr": "most negative d(smoothed)/d(ln LR) before divergence",
    "min_loss_lr": "LR at the minimum smoothed loss before divergence",
    "suggested_lr": f"min(steepest_lr, max_stable_lr / {STABILITY_MARGIN:g})",
}
"""The rules above in words, as the report (``lr_find.json``) states them."""
