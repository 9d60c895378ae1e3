"""How a speedup changes as a run grows: a weighted straight line of speedup against log2(budget), and an
honest forecast from it (issue 29).

A point is one budget's measured speedup with its band (the speedup if the curriculum's curve sat half the
baseline's seed spread higher / lower: :func:`gradus.experiments.analysis.shifted_speedups`). The fit weighs each
point by its band (a wide band says little), and its uncertainty is scaled up by the scatter about the line
when the points disagree more than their bands say (reduced chi-square above 1), so two lucky points cannot
make a confident trend. Pure Python: used by ``benchmarks/speedup_vs_budget.py`` and ``gradus compare
--budgets``, and by tests that check it against a known line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from gradus.units import format_count

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
"""Student's t, two-sided 95%, by degrees of freedom (a table: no scipy for one number)."""


def critical_value(dof: int | None) -> float:
    """The 95% multiplier of a standard error: Student's t at the fit's ``dof`` whenever it has one, else the
    normal 1.96 (two points: the bands alone). Always t, not only when the scatter scaled the errors: the bands
    come from two or three seeds, rough standard deviations themselves, and a multiplier that jumped from 1.96
    to t as the reduced chi-square crossed 1 made nearly equal data give intervals 6× apart."""
    if not dof:
        return 1.96
    return T975[max(k for k in T975 if k <= dof)] if dof < 60 else 1.96


MIN_SIGMA_RATIO = 0.02
"""A point's uncertainty is at least this share of its speedup: a zero-width band (two curves that fall steeply
through the target) is not infinitely precise."""


def one_seed_note(seeds: Sequence[int]) -> str | None:
    """What a single seed leaves out of the figures (None with two or more): the band is half the baseline's seed
    spread, so one seed gives none, and the trend then weighs each budget as exact to within its floor."""
    if len(seeds) >= 2:
        return None
    return (f"one seed per budget: no band, so the trend counts each speedup as exact to within "
            f"{MIN_SIGMA_RATIO:.0%} and its intervals leave out seed-to-seed noise (the same config's final loss "
            "can differ by 0.1–0.4 between seeds on small runs); give --seeds 0,1,2 for bands")


def budgets_seed_note(points: Sequence[dict]) -> str | None:
    """:func:`one_seed_note` for budget points (each with its ``seeds``): said when any budget has one seed."""
    return one_seed_note(min((p.get("seeds") or () for p in points), key=len)) if points else None


def trend_points(points: Sequence[dict], key: str, band_key: str | None) -> list[TrendPoint]:
    """The budget points (dicts with ``budget_tokens``, ``key``, ``band_key`` and ``seeds``) that have a ``key``
    speedup, as :class:`TrendPoint`: the one reading of a budget series for ``gradus compare --budgets`` and
    the benchmark alike. A point measured over two or more seeds whose column has bands but which has none (the
    curriculum never reached the target: a slowdown whose band cannot be read) is the least certain point, not
    the most: it counts as a band with both ends missing (half its value), never as the one-seed floor."""
    out = []
    for p in points:
        if not p.get(key):
            continue
        band = p.get(band_key) if band_key else None
        if band:
            band = tuple(band)
        elif band_key and len(p.get("seeds") or ()) >= 2:
            band = (None, None)
        out.append(TrendPoint(p["budget_tokens"], p[key], band or None))
    return out


@dataclass(frozen=True)
class TrendPoint:
    """One budget's speedup and its band."""

    budget_tokens: float
    speedup: float
    band: tuple[float | None, float | None] | None = None
    """(low, high); None or a missing end: the point's uncertainty is the floor (:data:`MIN_SIGMA_RATIO`)."""

    @property
    def sigma(self) -> float:
        """Half the band's width (an end that never reaches the target counts as the point itself), floored."""
        floor = MIN_SIGMA_RATIO * abs(self.speedup)
        if not self.band:
            return floor
        ends = [x for x in self.band if x is not None and math.isfinite(x)]
        if len(ends) < 2:
            # An end that never reaches the target is the most fragile case: mirror the known side (its whole
            # distance, not half a band), so such a point weighs less than one with both ends.
            return max(floor, *(abs(x - self.speedup) for x in ends)) if ends else max(floor, 0.5 * abs(self.speedup))
        return max(floor, abs(ends[1] - ends[0]) / 2)


@dataclass(frozen=True)
class Trend:
    """speedup ≈ intercept + slope · log2(budget): ``slope`` is the change per doubling of the budget."""

    slope: float
    slope_se: float
    intercept: float
    points: int
    chi2_reduced: float | None
    """Weighted scatter about the line per degree of freedom (None with two points: no degree left)."""
    budget_min: float
    budget_max: float
    cov: tuple[float, float, float]
    """Variance of the intercept, covariance, variance of the slope (x = log2 budget)."""
    crit: float = 1.96
    """The 95% multiplier: Student's t at the fit's degrees of freedom (1.96 with two points)."""
    point_var: float = 0.0
    """A budget's own variance about the line: the points' mean sigma², scaled like the covariance. What a
    forecast adds to the line's for one new budget's measurement (0 in files written before it)."""

    def at(self, budget: float) -> float:
        """The fitted speedup at ``budget`` tokens."""
        return self.intercept + self.slope * math.log2(budget)

    def se_at(self, budget: float) -> float:
        """Standard error of the fitted line at ``budget`` tokens."""
        x = math.log2(budget)
        var_a, cov_ab, var_b = self.cov
        return math.sqrt(max(0.0, var_a + 2 * x * cov_ab + x * x * var_b))

    def to_json(self) -> dict:
        """The fit as a JSON object (with its slope's 95% interval)."""
        out = asdict(self)
        out["cov"] = list(self.cov)
        out["slope_per_doubling_95"] = [self.slope - self.crit * self.slope_se, self.slope + self.crit * self.slope_se]
        out["x"] = "log2(budget_tokens)"
        return out


def trend_from_json(data: dict) -> Trend:
    """A :class:`Trend` back from :meth:`Trend.to_json` (KeyError/TypeError/ValueError on anything else)."""
    return Trend(slope=float(data["slope"]), slope_se=float(data["slope_se"]), intercept=float(data["intercept"]),
                 points=int(data["points"]), chi2_reduced=data["chi2_reduced"],
                 budget_min=float(data["budget_min"]), budget_max=float(data["budget_max"]),
                 cov=tuple(float(x) for x in data["cov"]), crit=float(data.get("crit", 1.96)),
                 point_var=float(data.get("point_var", 0.0)))


def forecasts_from_file(path: str | Path, budget: float) -> tuple[Forecast, Forecast | None]:
    """The forecasts at ``budget`` tokens from a ``gradus compare --budgets`` result (its ``compare.json``, read
    once): the first crossing's, and the annealed reading's (``trend_annealed``; None where the comparison has
    none: fewer than two budgets with a smaller budget below them, or a file written before it existed). A
    ConfigError naming the file and the fix when it is not such a result, or holds no trend."""
    from gradus.errors import ConfigError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--forecast-from {path}: cannot read it ({exc.strerror or exc}); give the compare.json "
                          "of a `gradus compare --budgets` run") from None
    except ValueError:
        raise ConfigError(f"--forecast-from {path}: not JSON; give the compare.json of a `gradus compare --budgets` "
                          "run") from None
    if not isinstance(data, dict) or "budgets" not in data:
        raise ConfigError(f"--forecast-from {path}: not the result of `gradus compare --budgets` (no budgets); run "
                          "that on your data first")
    if not data.get("trend"):
        raise ConfigError(f"--forecast-from {path}: that comparison has no trend (fewer than two budgets gave a "
                          "speedup); rerun it with budgets where the curriculum reaches the target")
    try:
        first = forecast(trend_from_json(data["trend"]), budget)
        annealed = forecast(trend_from_json(data["trend_annealed"]), budget) if data.get("trend_annealed") else None
        note = budgets_seed_note(data["budgets"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConfigError(f"--forecast-from {path}: its trend is incomplete; rerun `gradus compare --budgets`") from None
    if note:  # the caveat travels with each sentence, into the plan's lines and its JSON
        first, annealed = (replace(f, sentence=f"{f.sentence}; {note}") if f else None for f in (first, annealed))
    return first, annealed


def budget_to_target(points: Sequence[tuple[float, float | None]], target: float) -> tuple[float | None, str]:
    """The budget at which the final loss first reaches ``target`` on (budget, final loss) points, linearly
    interpolated in log(budget); with how it was found: ``interpolated``, ``at most`` (already reached at
    the smallest budget: that budget is an upper bound) or ``not reached`` (None)."""
    pts = sorted((b, loss) for b, loss in points if loss is not None and math.isfinite(loss))
    if not pts:
        return None, "not reached"
    if pts[0][1] <= target:
        return float(pts[0][0]), "at most"
    for (b0, l0), (b1, l1) in zip(pts, pts[1:], strict=False):
        if l1 <= target:
            frac = (l0 - target) / (l0 - l1)
            return math.exp(math.log(b0) + frac * (math.log(b1) - math.log(b0))), "interpolated"
    return None, "not reached"


def annealed_speedup(budget: float, target: float, finals: Sequence[tuple[float, float | None]]) -> tuple[float | None, str]:
    """The annealed reading at one budget: ``budget`` / the budget at which the curriculum's *final* loss (its
    complete, annealed runs: ``finals`` = (budget, final loss) at every budget run) reaches this budget's
    ``target``, interpolated in log(budget) between the budgets run below it.

    Why: the first-crossing speedup compares the curriculum's curve mid-schedule, its LR not yet decayed, with
    the baseline's annealed end, and that handicap grows with the run (BENCHMARKS.md, the tiny series: the
    first crossing fell from 1.50× to 1.33× in tokens between 4.9 and 20.6 tokens per parameter while this
    reading held at 1.76–1.78×). Returns (speedup, how): ``interpolated``; ``at most`` (the smallest budget
    already reaches the target: the speedup is at least what is returned); None with ``only at this budget``
    or ``no smaller budget run`` (nothing below it to read from) or ``not reached``."""
    at, how = budget_to_target([(b, loss) for b, loss in finals if b <= budget], target)
    if at is None:
        return None, how
    if at >= budget * (1 - 1e-9):  # (the log interpolation lands a hair under the budget itself)
        return None, "only at this budget" if how == "interpolated" else "no smaller budget run"
    return budget / at, how


def fit_trend(points: Sequence[TrendPoint]) -> Trend:
    """Weighted least squares of speedup on log2(budget), weights 1/sigma²; the covariance is scaled by the
    reduced chi-square when that is above 1. Needs two points at two different budgets (ValueError)."""
    pts = [p for p in points if p.speedup is not None and math.isfinite(p.speedup)]
    if len({p.budget_tokens for p in pts}) < 2:
        raise ValueError("a trend needs speedups at two or more different budgets")
    w = [1 / p.sigma ** 2 for p in pts]
    x = [math.log2(p.budget_tokens) for p in pts]
    y = [p.speedup for p in pts]
    sw = sum(w)
    sx = sum(wi * xi for wi, xi in zip(w, x, strict=True))
    sy = sum(wi * yi for wi, yi in zip(w, y, strict=True))
    sxx = sum(wi * xi * xi for wi, xi in zip(w, x, strict=True))
    sxy = sum(wi * xi * yi for wi, xi, yi in zip(w, x, y, strict=True))
    det = sw * sxx - sx * sx
    slope = (sw * sxy - sx * sy) / det
    intercept = (sy - slope * sx) / sw
    dof = len(pts) - 2
    chi2 = sum(wi * (yi - intercept - slope * xi) ** 2 for wi, xi, yi in zip(w, x, y, strict=True))
    chi2_reduced = chi2 / dof if dof > 0 else None
    scale = max(1.0, chi2_reduced) if chi2_reduced is not None else 1.0
    var_a, cov_ab, var_b = sxx / det * scale, -sx / det * scale, sw / det * scale
    return Trend(slope=slope, slope_se=math.sqrt(var_b), intercept=intercept, points=len(pts),
                 chi2_reduced=chi2_reduced, budget_min=min(p.budget_tokens for p in pts),
                 budget_max=max(p.budget_tokens for p in pts), cov=(var_a, cov_ab, var_b),
                 crit=critical_value(dof), point_var=sum(p.sigma ** 2 for p in pts) / len(pts) * scale)


@dataclass(frozen=True)
class Forecast:
    """The trend read at a budget: the fitted speedup, a 95% interval, and how far that reaches past the data."""

    budget_tokens: float
    speedup: float
    low: float
    high: float
    doublings_beyond: float
    """log2(budget / the largest budget measured); negative or 0 inside the measured range."""
    sentence: str

    def to_json(self) -> dict:
        """The forecast as a JSON object."""
        return asdict(self)


def forecast(trend: Trend, budget: float) -> Forecast:
    """The speedup the trend gives at ``budget`` tokens with a 95% interval for a measurement there (the line's
    standard error and a budget's own scatter about it, :attr:`Trend.point_var`; clipped at 0), and a sentence
    saying how far the reading goes beyond the budgets measured and what the interval does not cover."""
    line = trend.at(budget)
    se = math.sqrt(trend.se_at(budget) ** 2 + trend.point_var)
    # A speedup is a ratio of costs: never below 0, however far the line is read.
    mid, low, high = max(0.0, line), max(0.0, line - trend.crit * se), max(0.0, line + trend.crit * se)
    beyond = math.log2(budget / trend.budget_max)
    if beyond <= 0 and budget >= trend.budget_min:
        reach = "inside the budgets measured"
    elif beyond > 0:
        reach = (f"{beyond:.1f} doublings beyond the largest budget measured ({format_count(trend.budget_max)}); a "
                 "straight line in log(budget) is an assumption there, and the interval does not cover a bend in it")
    else:
        reach = f"below the smallest budget measured ({format_count(trend.budget_min)})"
    interval = f"95% interval {low:.2f}–{high:.2f}×"
    if line <= 0:
        gain = f"no gain: the line falls below 0× here ({interval})"
        reach += "; the line does not hold this far (a speedup is never below 0): read the budgets measured instead"
    elif high < 1:
        gain = f"no gain expected ({mid:.2f}×, {interval})"
    elif mid < 1:
        gain = f"{mid:.2f}×, a slowdown or a gain ({interval})"
    elif low < 1:
        gain = f"{mid:.2f}×, a gain or a slowdown ({interval})"
    else:
        gain = f"{mid:.2f}× ({interval})"
    check = ("; with two budgets the interval rests on their bands alone (no check of the scatter: measure a "
             "third)" if trend.points == 2 else "")
    sentence = (f"at {format_count(budget)} tokens the trend of {trend.points} budgets gives {gain}, "
                f"{trend.slope:+.2f}× per doubling of the budget; {reach}{check}")
    return Forecast(budget_tokens=budget, speedup=mid, low=low, high=high, doublings_beyond=beyond, sentence=sentence)
