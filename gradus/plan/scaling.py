"""The compute-optimal arithmetic of the scaling-law lesson: from a budget to N and D, the peak LR and the
tokens per step.

Why a module of its own: these few formulas are the lesson itself, and a reader checking the worksheet
against the papers should find them without the stage table or the printing around them. The arithmetic
(Kaplan et al. 2020; Hoffmann et al. 2022, "Chinchilla"):

* training compute C ≈ κ·N·D, with N the non-embedding parameters, D the training tokens and κ = 6
  (2 FLOPs per weight per token forward, 4 backward; up to 8 with activation recomputation);
* compute-optimal data D ≈ ratio·N with ratio ≈ 20, so N = sqrt(C / (κ·ratio)) and D = ratio·N.

Worked example (a test): with C = 2e22 FLOPs, N = 1B → D = 20B → 6·1e9·20e9 = 1.2e20 FLOPs, and N = 7B →
D = 140B → 5.9e21 FLOPs, both within budget; the budget's own optimum is N ≈ 12.9B, D ≈ 258B.
"""

from __future__ import annotations

import math

from gradus.errors import ConfigError
from gradus.plan.hardware import format_flops
from gradus.plan.inputs import RATIO_RANGE, PlanInputs
from gradus.units import format_count

TOKENS_PER_STEP_RANGE = (30_000, 200_000)
"""Global tokens per optimizer step the worksheet chooses from."""

LR_GRID: tuple[tuple[float, float], ...] = ((1e9, 3e-4), (3e9, 2e-4), (7e9, 1.5e-4), (13e9, 1e-4))
"""The lesson's peak learning rates by non-embedding parameter count."""
LR_CEILING = 3e-3
"""Highest peak LR suggested for the tiniest models (beyond it small models diverge easily)."""
LR_FLOOR = 2e-5
"""Lowest peak LR suggested for the largest models."""

LADDER = (1e9, 3e9, 7e9, 13e9, 30e9, 70e9)
"""Model sizes tabulated against a budget (the lesson's worked example uses 1B and 7B)."""


def peak_lr_for_params(n: float) -> float:
    """Peak LR for N non-embedding parameters from :data:`LR_GRID`, interpolated linearly in
    (log N, log LR).

    Below 1B the 1B→3B segment is extrapolated (LR ∝ N^-0.37): it gives 6.5e-4 at 124M, close to GPT-3's
    6e-4 for 125M and nanoGPT's 6e-4, and 1.1e-3 at 30M; it is capped at :data:`LR_CEILING` because the
    tiniest models gain nothing from larger rates and diverge. Above 13B the fit over the whole grid
    (1B→13B, LR ∝ N^-0.43) is extrapolated, gentler than the last segment, floored at :data:`LR_FLOOR`
    (4.9e-5 at 70B; GPT-3 175B used 6e-5).
    """
    if not n > 0:
        raise ConfigError(f"params={n}: must be positive")
    pts = [(math.log(x), math.log(y)) for x, y in LR_GRID]
    x = math.log(n)

    def line(a: tuple[float, float], b: tuple[float, float]) -> float:
        return a[1] + (b[1] - a[1]) * (x - a[0]) / (b[0] - a[0])

    if x <= pts[0][0]:
        return min(LR_CEILING, math.exp(line(pts[0], pts[1])))
    if x >= pts[-1][0]:
        slope = (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])  # the whole grid's fit
        return max(LR_FLOOR, math.exp(pts[-1][1] + slope * (x - pts[-1][0])))
    for a, b in zip(pts, pts[1:], strict=False):
        if a[0] <= x <= b[0]:
            return math.exp(line(a, b))
    raise AssertionError("unreachable")


def tokens_per_step_for(n: float, long_seq_len: int) -> int:
    """Global tokens per step: 128K (2¹⁷) at 1B, ∝ sqrt(N) (larger models tolerate larger batches: the
    critical batch grows as the loss falls), rounded to a multiple of 32,768 and kept in 30K–200K
    (32,768 … 196,608). Also a multiple of the longest stage's seq_len, so every stage's batch is whole."""
    raw = 131072 * math.sqrt(n / 1e9)
    tps = 32768 * min(6, max(1, round(raw / 32768)))
    if tps % long_seq_len:
        tps = long_seq_len * math.ceil(tps / long_seq_len)
    return tps


def step_flops(kappa: float, n: float, tps: int) -> float:
    """FLOPs of one optimizer step: κ·N·tokens_per_step."""
    return kappa * n * tps


def choose_n_and_d(inp: PlanInputs, budget: float | None) -> tuple[str, float, float, list[str], list[str]]:
    """(regime, N, D, explanation lines, warnings) as the lesson's worksheet decides them."""
    r, k = inp.ratio, inp.kappa
    notes: list[str] = []
    warnings: list[str] = []
    if inp.params is not None and inp.tokens is not None:
        n, d = inp.params, inp.tokens
        need = k * n * d
        if budget is not None and need > budget * (1 + 1e-9):
            raise ConfigError(
                f"--params {format_count(n)} and --tokens {format_count(d)} need κ·N·D = {format_flops(need)} FLOPs, "
                f"more than the budget {format_flops(budget)}; drop one of them or raise the budget"
            )
        notes.append(f"N and D given: {d / n:.1f} tokens per parameter (compute-optimal: {r:g})")
        if not RATIO_RANGE[0] <= d / n <= RATIO_RANGE[1]:
            warnings.append(f"D/N = {d / n:.1f} is outside {RATIO_RANGE[0]:g}–{RATIO_RANGE[1]:g}: "
                            f"{'undertrained' if d / n < RATIO_RANGE[0] else 'past the compute optimum'}")
        return "fixed-params-and-tokens", n, d, notes, warnings
    if inp.params is not None:
        n = inp.params
        d = r * n
        if budget is not None and k * n * d > budget * (1 + 1e-9):
            d = budget / (k * n)
            n_opt = math.sqrt(budget / (k * r))
            notes.append(f"compute-limited: N = {format_count(n)} at {r:g} tokens/parameter needs "
                         f"{format_flops(k * n * r * n)} FLOPs > C; D is capped at C/(κ·N) = {format_count(d)}")
            warnings.append(f"only {d / n:.1f} tokens per parameter (< {r:g}): the model is undertrained; "
                            f"the compute-optimal size for this budget is N ≈ {format_count(n_opt)}")
            return "compute-limited", n, d, notes, warnings
        notes.append(f"N fixed: D = {r:g}·N = {format_count(d)}")
        if budget is not None:
            notes.append(f"uses {k * n * d / budget:.1%} of C; C would train N up to "
                         f"{format_count(math.sqrt(budget / (k * r)))} compute-optimally")
        return "fixed-params", n, d, notes, warnings
    if inp.tokens is not None and budget is None:
        d = inp.tokens
        n = d / r
        notes.append(f"D fixed: N = D/{r:g} = {format_count(n)}")
        return "fixed-tokens", n, d, notes, warnings
    assert budget is not None
    n_opt = math.sqrt(budget / (k * r))
    d_opt = r * n_opt
    notes.append(f"compute-optimal: N = sqrt(C / (κ·{r:g})) = {format_count(n_opt)}, D = {r:g}·N = {format_count(d_opt)}")
    if inp.tokens is not None and inp.tokens < d_opt:
        unique = inp.tokens
        n = unique / r
        notes.append(
            f"data-limited: only {format_count(unique)} tokens available, the optimum needs {format_count(d_opt)}; "
            f"N shrinks to D/{r:g} = {format_count(n)} to keep D ≈ {r:g}·N ({k * n * unique / budget:.1%} of C used)"
        )
        notes.append(
            f"alternatives: keep N ≈ {format_count(n_opt)} and cap D at {format_count(unique)} "
            f"({unique / n_opt:.1f} tokens/parameter), or repeat the data (up to ~4 epochs cost little: "
            f"Muennighoff et al. 2023)"
        )
        return "data-limited", n, unique, notes, warnings
    if inp.tokens is not None:
        notes.append(f"compute-limited: {format_count(inp.tokens)} tokens available, {format_count(d_opt)} used")
    return "compute-optimal", n_opt, d_opt, notes, warnings
