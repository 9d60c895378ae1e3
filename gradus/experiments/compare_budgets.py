"""``gradus compare --budgets 250k,500k,1M [--forecast TOKENS]``: the comparison at several budgets, the trend of
the speedup with the budget, and a forecast for the user's own planned budget (issue 29).

Speedups measured on short runs shrink as runs grow (BENCHMARKS.md: 2.28× at 0.5M tokens, 1.73× at 1M on
WikiText-2), so one budget's figure says little about a real run. Each budget is a complete ``gradus compare``
(every arm annealed to that budget, tuned the same way) in its own folder, ``OUT/budget-<tokens>``, so a
larger budget never replaces a smaller one's runs and an interrupted series resumes where it stopped. The trend
is a weighted straight line of the calibrated speedup against log2(budget) (:mod:`gradus.experiments.trend`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from gradus.config import GradusConfig
from gradus.errors import ConfigError
from gradus.experiments.budget import EVAL_POINTS
from gradus.experiments.common import prepare, summaries_key, write_summary
from gradus.experiments.compare import compare_arms, run_compare
from gradus.experiments.trend import (
    Forecast,
    annealed_speedup,
    budgets_seed_note,
    fit_trend,
    forecast,
    one_seed_note,
    trend_points,
)
from gradus.units import CountTooLarge, format_count, parse_count


def parse_budgets(text: str) -> list[int]:
    """``--budgets 250k,500k,1M`` -> [250000, 500000, 1000000]; two or more, strictly increasing (ConfigError)."""
    budgets = []
    for item in text.split(","):
        try:
            value = parse_count(item.strip())
        except CountTooLarge as err:
            raise ConfigError(f"--budgets {text}: {err}") from None
        except (ValueError, TypeError):
            raise ConfigError(f"--budgets {text}: {item.strip()!r} is not a token count; write e.g. "
                              "--budgets 250k,500k,1M") from None
        if value <= 0:
            raise ConfigError(f"--budgets {text}: {item.strip()!r} is not a positive number of tokens")
        budgets.append(value)
    if len(budgets) < 2:
        raise ConfigError(f"--budgets {text}: give two or more budgets for a trend (e.g. 250k,500k,1M), or use "
                          "--budget for one")
    if any(b1 <= b0 for b0, b1 in zip(budgets, budgets[1:], strict=False)):
        raise ConfigError(f"--budgets {text}: give the budgets in strictly increasing order (e.g. 250k,500k,1M)")
    return budgets


def parse_forecast(text: str | None) -> int | None:
    """``--forecast 2B`` -> 2000000000 (a ConfigError naming the value when it is not a token count)."""
    if text is None:
        return None
    try:
        value = parse_count(text)
    except CountTooLarge as err:
        raise ConfigError(f"--forecast {text}: {err}") from None
    except (ValueError, TypeError):
        raise ConfigError(f"--forecast {text}: not a token count; write the planned run's tokens, e.g. 2B or "
                          "5.4M") from None
    if value <= 0:
        raise ConfigError(f"--forecast {text}: give a positive number of tokens")
    return value


def check_budgets(cfg: GradusConfig, budgets: Sequence[int], *, baseline: str, half_batch_baseline: bool,
                  seeds: Sequence[int], origin: str, eval_points: int = EVAL_POINTS) -> None:
    """Every arm's config at every budget, validated before anything trains (a budget below one step of some
    stage is a ConfigError that names the budget)."""
    base, arms = compare_arms(cfg, baseline, half_batch_baseline, origin)
    for b in budgets:
        try:
            prepare(base, arms, b, seeds, origin, eval_points)
        except ConfigError as err:
            raise ConfigError(*[f"--budgets: at {format_count(b)} tokens: {p}" for p in err.problems]) from None


def budget_point(report: dict, requested: int) -> dict:
    """One budget's figures from its compare report: the curriculum's speedups and bands, target, LRs.
    ``budget_tokens`` is what the runs trained (the stages keep their shares in whole steps, so it can be a
    little under the ``requested`` budget)."""
    cur = report["curriculum"]
    return {
        "budget_requested": requested,
        "budget_tokens": report["budget"],
        "speedup_wallclock": cur.get("speedup_wallclock_calibrated"),
        "band": cur.get("speedup_wallclock_calibrated_band"),
        "speedup_tokens": cur.get("speedup_tokens"),
        "band_tokens": cur.get("speedup_tokens_band"),
        "reached": bool(cur.get("tokens_to_target")),
        "target": report["target"],
        "final_val_loss": {"curriculum": cur["final_val_loss"], "baseline": report["baseline"]["final_val_loss"]},
        "lr": {"curriculum": cur["lr"], "baseline": report["baseline"]["lr"]},
        "seeds": report["seeds"],
        "verdict": report["verdict"],
        # For the annealed reading (add_annealed): the whole runs' calibrated seconds and the band's target shift.
        "train_seconds_calibrated": {"curriculum": cur.get("train_seconds_calibrated"),
                                     "baseline": report["baseline"].get("train_seconds_calibrated")},
        "target_shift": cur.get("target_shift"),
    }


def trend_of(points: Sequence[dict], key: str, band_key: str, forecast_tokens: int | None):
    """The weighted trend of the points' ``key`` speedups (bands from ``band_key``) and its forecast at
    ``forecast_tokens``: (Trend or None with fewer than two budgets, Forecast or None)."""
    usable = trend_points(points, key, band_key)
    trend = fit_trend(usable) if len({p.budget_tokens for p in usable}) >= 2 else None
    return trend, (forecast(trend, forecast_tokens) if trend is not None and forecast_tokens else None)


def add_annealed(points: Sequence[dict]) -> None:
    """Give every budget point its annealed reading (:func:`~gradus.experiments.trend.annealed_speedup`): the
    budget at which the curriculum's complete run ends at this budget's target, from its final losses at the
    budgets below. ``speedup_tokens_annealed`` is this budget over that one; ``speedup_wallclock_annealed``
    prices both whole runs by the calibration (the baseline's calibrated seconds per token over the
    curriculum's); the bands read the same with the target half the baseline's seed spread higher / lower."""
    finals = [(p["budget_tokens"], p["final_val_loss"]["curriculum"]) for p in points]
    for p in points:
        secs = p.get("train_seconds_calibrated") or {}
        ratio = (secs["baseline"] / secs["curriculum"] if secs.get("baseline") and secs.get("curriculum")
                 else None)
        tokens, how = annealed_speedup(p["budget_tokens"], p["target"], finals)
        shift = p.get("target_shift") or 0.0
        ends = [annealed_speedup(p["budget_tokens"], p["target"] + d, finals)[0] for d in (-shift, shift)]
        p["speedup_tokens_annealed"] = tokens
        p["annealed_kind"] = how
        p["speedup_wallclock_annealed"] = tokens * ratio if tokens and ratio else None
        p["band_annealed"] = ([e * ratio if e else None for e in ends] if tokens and ratio and shift else None)


def budgets_table(points: Sequence[dict], trend: dict | None, fc: Forecast | None,
                  trend_annealed: dict | None = None, fc_annealed: Forecast | None = None) -> str:
    """The lines printed after the last budget: the first-crossing speedups and, where a smaller budget gives
    it, the annealed reading, each with its trend and forecast, and what one seed leaves out."""
    lines = ["speedup of the curriculum by budget (calibrated wall-clock, its band; tokens):"]
    for p in points:
        band = p["band"]
        band_s = (" (one seed: no band)" if len(p.get("seeds") or ()) < 2 else
                  f" (band {band[0]:.2f}–{band[1]:.2f})" if band and None not in band else
                  f" (band never–{band[1]:.2f})" if band and band[1] else "")
        cal = f"×{p['speedup_wallclock']:.2f}" if p["speedup_wallclock"] else "—"
        tok = f"×{p['speedup_tokens']:.2f}" if p["speedup_tokens"] else "—"
        lines.append(f"  {format_count(p['budget_tokens']):>8} tokens: {cal}{band_s}, {tok} tokens"
                     + ("" if p["reached"] else " (target not reached: below 1 is a slowdown)"))
    annealed = [p for p in points if p.get("speedup_tokens_annealed")]
    if annealed:
        lines.append("annealed reading (the budget at which the curriculum's complete run ends at the target; "
                     "calibrated, tokens):")
        for p in annealed:
            cal = f"×{p['speedup_wallclock_annealed']:.2f}" if p.get("speedup_wallclock_annealed") else "—"
            least = " at least" if p["annealed_kind"] == "at most" else ""
            lines.append(f"  {format_count(p['budget_tokens']):>8} tokens:{least} {cal}, "
                         f"×{p['speedup_tokens_annealed']:.2f} tokens")
    elif len(points) >= 2:
        lines.append("annealed reading: none (no complete curriculum run ended at a larger budget's target, so "
                     "no budget's target is reached with fewer tokens)")
    if trend is None and len(points) >= 2:
        lines.append("trend: none (fewer than two budgets gave a speedup: the curriculum reached the target at one "
                     "budget or none), so no forecast")
    for name, tr, f in (("trend", trend, fc), ("trend, annealed", trend_annealed, fc_annealed)):
        if tr is not None:
            lines.append(f"{name}: {tr['slope']:+.2f}× per doubling of the budget (95%: "
                         f"{tr['slope_per_doubling_95'][0]:+.2f} to {tr['slope_per_doubling_95'][1]:+.2f})")
        if f is not None:
            lines.append(f"forecast{name[len('trend'):]}: {f.sentence}")
    note = budgets_seed_note(points)
    if note and (trend is not None or trend_annealed is not None):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def plot_budgets(points: Sequence[dict], trend: dict | None, fc: Forecast | None, path: Path, title: str,
                 fc_annealed: Forecast | None = None, trend_annealed: dict | None = None) -> None:
    """Speedup against budget (log x) with bands, the fitted lines and the forecasts. The y axis stops a little
    above the highest point measured or forecast, so a forecast's wide interval (three budgets read two
    doublings on) does not flatten the measured points; its whisker then runs off the top."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    highest = 1.0
    for key, band_key, label, color in (("speedup_wallclock", "band", "calibrated wall-clock (first crossing)", "C0"),
                                        ("speedup_tokens", "band_tokens", "tokens (first crossing)", "C1"),
                                        ("speedup_wallclock_annealed", "band_annealed",
                                         "calibrated, annealed runs", "C2")):
        pts = [p for p in points if p.get(key)]
        xs, ys = [p["budget_tokens"] for p in pts], [p[key] for p in pts]
        # Error bars from the band's ends (an end the curve never reaches, or one on the wrong side, draws none).
        lo = [max(0.0, y - (p[band_key][0] if p.get(band_key) and p[band_key][0] else y))
              for p, y in zip(pts, ys, strict=True)]
        hi = [max(0.0, (p[band_key][1] if p.get(band_key) and p[band_key][1] else y) - y)
              for p, y in zip(pts, ys, strict=True)]
        if pts:
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", color=color, capsize=4, label=label)
            highest = max(highest, *(y + h for y, h in zip(ys, hi, strict=True)))
    for tr, f, color, what in ((trend, fc, "C0", "trend"), (trend_annealed, fc_annealed, "C2", "annealed trend")):
        if tr is not None:
            # Over the budgets measured and out to the forecast, on whichever side of them it lies.
            start = min(tr["budget_min"], f.budget_tokens) if f is not None else tr["budget_min"]
            end = max(tr["budget_max"], f.budget_tokens) if f is not None else tr["budget_max"]
            xs = [start * (end / start) ** (i / 40) for i in range(41)]
            ax.plot(xs, [tr["intercept"] + tr["slope"] * math.log2(x) for x in xs], "--", color=color, alpha=0.6,
                    label=f"{what}: {tr['slope']:+.2f}× per doubling")
    for f, color, what in ((fc, "C3", "first crossing"), (fc_annealed, "C2", "annealed")):
        if f is not None:
            highest = max(highest, f.speedup)
            ax.errorbar([f.budget_tokens], [f.speedup], yerr=[[max(0.0, f.speedup - f.low)],
                                                              [max(0.0, f.high - f.speedup)]],
                        fmt="s", color=color, capsize=5,
                        label=f"forecast at {format_count(f.budget_tokens)}, {what}: {f.speedup:.2f}× "
                              f"(95%: {f.low:.2f}–{f.high:.2f}×)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_ylim(0.0, 1.3 * highest)
    ax.set_xscale("log")
    ax.set_xlabel("tokens per run")
    ax.set_ylabel("speedup to the baseline's final loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_compare_budgets(cfg: GradusConfig, *, budgets: Sequence[int], forecast_tokens: int | None, out: Path,
                        baseline: str = "auto", seeds: Sequence[int], tune_lr: bool = False, finalists: int = 1,
                        half_batch_baseline: bool = False, jobs: int | None = None, threads: int = 1,
                        plot: bool = True, origin: str = "config", eval_points: int = EVAL_POINTS,
                        calibration: str = "measured", log: Callable[[str], None] = print) -> dict:
    """``run_compare`` at each budget (in ``out/budget-<tokens>``), then the trend and the forecast; writes
    ``out/compare.json`` (with ``budgets``, ``trend`` and ``forecast``) and ``out/compare.png``. Every budget is
    checked before anything trains. A measured calibration is kept in ``out`` and shared by every budget (their
    shapes are the same), so the trend compares speedups priced alike."""
    check_budgets(cfg, budgets, baseline=baseline, half_batch_baseline=half_batch_baseline, seeds=seeds,
                  origin=origin, eval_points=eval_points)
    seeds_note = one_seed_note(seeds)
    if seeds_note:  # said before the runs, while a second seed is still cheap to add
        log(f"compare --budgets: {seeds_note}")
    points, reports = [], []
    for b in budgets:
        log(f"compare --budgets: {format_count(b)} tokens")
        report = run_compare(cfg, baseline=baseline, budget=b, seeds=seeds, out=out / f"budget-{b}", tune_lr=tune_lr,
                             finalists=finalists, half_batch_baseline=half_batch_baseline, jobs=jobs,
                             threads=threads, plot=plot, origin=origin, eval_points=eval_points,
                             calibration=calibration, calibration_dir=out, log=log)
        points.append(budget_point(report, b))
        reports.append(report)
    trend, fc = trend_of(points, "speedup_wallclock", "band", forecast_tokens)
    add_annealed(points)
    # A lower bound ("at least") is not a value to fit a line through.
    trend_annealed, fc_annealed = trend_of([p for p in points if p["annealed_kind"] == "interpolated"],
                                           "speedup_wallclock_annealed", "band_annealed", forecast_tokens)
    summary = {
        "command": "compare --budgets",
        "out": str(out),
        "budgets": points,
        "trend": trend.to_json() if trend is not None else None,
        "forecast": fc.to_json() if fc is not None else None,
        "trend_annealed": trend_annealed.to_json() if trend_annealed is not None else None,
        "forecast_annealed": fc_annealed.to_json() if fc_annealed is not None else None,
        "method": "each budget a complete gradus compare in budget-<tokens>/ (every arm annealed to that budget"
                  + (", LRs tuned there" if tune_lr else "") + "); the trend is a weighted straight line of the "
                  "calibrated speedup against log2(budget), weights from the bands, its uncertainty scaled by "
                  "the scatter; the forecast's 95% interval is for a measurement at that budget (the line's uncertainty and a "
                  "budget's own scatter about it), not for a bend in the line beyond the budgets measured. The annealed "
                  "reading (speedup_*_annealed, trend_annealed, forecast_annealed) is each budget over the budget "
                  "at which the curriculum's complete run ends at that budget's target, interpolated in "
                  "log(budget) between the budgets below it: the first crossing compares the curriculum "
                  "mid-schedule with the baseline's annealed end, and understates more as runs grow",
    }
    notes = [] if trend is not None else ["fewer than two budgets gave a speedup (the curriculum reached no target): "
                                          "no trend"]
    notes += [seeds_note] if seeds_note else []
    if notes:
        summary["note"] = "; ".join(notes)
    # The budgets' own summaries name their runs: the same budgets over the same runs give the same key.
    write_summary(out, "compare", summary, summaries_key([r["runs_key"] for r in reports]), log)
    log("")
    log(budgets_table(points, summary["trend"], fc, summary["trend_annealed"], fc_annealed))
    log(f"wrote {out / 'compare.json'}")
    if plot:
        try:
            plot_budgets(points, summary["trend"], fc, out / "compare.png",
                         f"gradus compare — the curriculum's speedup by budget ({origin})", fc_annealed,
                         summary["trend_annealed"])
            log(f"wrote {out / 'compare.png'}")
        except ImportError:
            log("matplotlib is not installed: no PNG (pip install matplotlib)")
    return summary
