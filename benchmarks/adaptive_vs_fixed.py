#!/usr/bin/env python
"""Do stages that adapt to the run beat the best fixed table? (issue 30 §3)

The measurement is ``curriculum_speedup.py`` (or ``speedup_vs_budget.py`` for a budget series) with the adaptive
arm ``seqwarm-long-ramp-adaptive-wsd`` beside the fixed tables and the tuned baselines: every arm's LR tuned the
same way, speedups against the best tuned baseline, the adaptive run's branch tokens counted in its cost. This
script reads those result files and writes ``benchmarks/results/adaptive_vs_fixed.json``: per (corpus, budget)
the adaptive arm's speedups and band, the best fixed table's, and the decisions each of the adaptive arm's
chosen runs made (from their ``decisions.jsonl``).

Usage::

    # one budget point: run the comparison with the adaptive arm, then summarise it
    python benchmarks/curriculum_speedup.py --budget 1048576 --final-len 1024 --tokens-per-step 2048 \\
        --seeds 0,1,2 --finalists 2 --arms baseline,baseline-wsd,baseline-wsd-half-batch,baseline-linear,\\
    seqwarm-long-wsd,seqwarm-long-ramp-wsd,seqwarm-long-ramp-adaptive-wsd --reuse --tag b1048576 --out OUT
    python benchmarks/adaptive_vs_fixed.py OUT/curriculum_speedup_b1048576.json [more result files ...]

A point whose adaptive arm did not run is left out with a note; the goal (the adaptive arm at least the best
fixed table within the band at every point, and at least 2x calibrated at 1M and 2M tokens on WikiText-2) is
checked and said, met or not.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_result  # noqa: E402

from gradus.config import load_config  # noqa: E402
from gradus.curriculum.adaptive import batch_rule_on  # noqa: E402
from gradus.experiments.speedup_arms import ARMS, TARGET_BASELINES  # noqa: E402
from gradus.train.storage.run_dir import RunDir  # noqa: E402

ADAPTIVE_ARM = "seqwarm-long-ramp-adaptive-wsd"


def corpus_name(data: str) -> str:
    """The corpus of a result file, from its data path (wikitext-2, code, ...)."""
    path = Path(data)
    return path.name if path.is_dir() or not path.suffix else path.stem


def arm_figures(arm: dict) -> dict:
    """The speedups of one arm's record (calibrated wall-clock, tokens, measured) with the calibrated band."""
    return {"speedup_wallclock": arm.get("speedup_wallclock_calibrated"),
            "speedup_tokens": arm.get("speedup_tokens"),
            "speedup_steps": arm.get("speedup_steps"),
            "speedup_wallclock_measured": arm.get("speedup_wallclock"),
            "band": arm.get("speedup_wallclock_calibrated_band"),
            "speedup_tokens_band": arm.get("speedup_tokens_band"),
            "final_val_loss": arm.get("final_val_loss"),
            "lr": arm.get("lr")}


def decisions_of(arm: dict, earlier: dict[str, list[dict]] | None = None) -> list[dict]:
    """What each of the arm's chosen runs decided: per seed, its decision records in short form. A run whose
    directory is gone (a work folder lives as long as its machine) keeps the decisions an earlier summary
    recorded for it (``earlier``: run directory -> decisions), rather than reading as a run that decided
    nothing."""
    out = []
    for seed in arm.get("per_seed", []):
        run = seed.get("run_dir")
        if run and not Path(run).is_dir() and earlier and run in earlier:
            out.append({"seed": seed.get("seed"), "run_dir": run, "decisions": earlier[run]})
            continue
        records = RunDir(Path(run)).read_decisions() if run else []
        out.append({"seed": seed.get("seed"), "run_dir": run, "decisions": [
            {k: r.get(k) for k in ("step", "tokens", "kind", "verdict", "proposal", "reason", "comparison")
             if r.get(k) is not None} for r in records]})
    return out


def earlier_decisions(path: Path) -> dict[str, list[dict]]:
    """Run directory -> decisions, from a summary this script wrote before (empty when there is none)."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {s["run_dir"]: s["decisions"] for q in summary.get("points", []) for s in q.get("decisions", [])
            if s.get("run_dir")}


def point(result: dict, earlier: dict[str, list[dict]] | None = None) -> dict | None:
    """One (corpus, budget) point of the summary, or None when the adaptive arm is not in the result
    (``earlier``: as :func:`decisions_of`'s)."""
    arms = {a["name"]: a for a in result["arms"]}
    adaptive = arms.get(ADAPTIVE_ARM)
    if adaptive is None:
        return None
    fixed = [a for name, a in arms.items()
             if name != ADAPTIVE_ARM and name not in TARGET_BASELINES and not (name in ARMS and ARMS[name].baseline)
             and a.get("speedup_wallclock_calibrated") is not None]
    best = max(fixed, key=lambda a: a["speedup_wallclock_calibrated"], default=None)
    out = {"corpus": corpus_name(result["data"]), "budget_tokens": result["settings"]["budget"],
           "tokens_per_parameter": result.get("tokens_per_parameter"),
           "model": result["settings"]["model"], "baseline": result.get("baseline"),
           "adaptive": {"arm": ADAPTIVE_ARM, **arm_figures(adaptive)},
           "best_fixed": {"arm": best["name"], **arm_figures(best)} if best else None,
           "decisions": decisions_of(adaptive, earlier)}
    out["adaptive_at_least_best_fixed"] = _at_least(out["adaptive"], out["best_fixed"])
    out["verdict"] = verdict_of(out["decisions"])
    out["batch_rule"] = batch_rule_of(adaptive, out["decisions"])
    return out


def batch_rule_of(arm: dict, decisions: list[dict]) -> str | None:
    """Whether the arm's runs had the batch rule: ``on`` or ``off`` as gradus settles it for the run's config on
    one process, as every benchmark run is (``enabled: auto``, the arm's config since 2026-12-07, is off there),
    else ``on`` where the record holds batch decisions (the arm before), or None where neither the run's config
    nor its decisions say. Points of both configs stay in one summary, so each says which it ran."""
    for seed in arm.get("per_seed", []):
        path = RunDir(Path(seed["run_dir"])).config if seed.get("run_dir") else None
        if path is not None and path.is_file():
            return "on" if batch_rule_on(load_config(path), world_size=1) else "off"
    if any(d.get("kind") == "batch" for s in decisions for d in s["decisions"]):
        return "on"
    return None


def verdict_of(decisions: list[dict]) -> str | None:
    """How the point's verification branches were judged, from their comparisons: ``held-out`` (the branch's and
    the main run's models on the same held-out rows, since 2026-12-07), ``training loss`` (their training losses
    over the window, before), or None where no branch was judged. Points measured before and after the change
    stay in one summary, so each says which rule made its decisions."""
    kinds = {"held-out" if "held_out_rows" in d["comparison"] else "training loss"
             for s in decisions for d in s["decisions"]
             if d.get("kind") == "batch" and "branch_loss" in (d.get("comparison") or {})}
    return " and ".join(sorted(kinds)) or None


def _at_least(adaptive: dict, fixed: dict | None) -> bool | None:
    """Whether the adaptive arm is at least the best fixed table within the band: its band's top reaches the
    fixed arm's figure (None when a figure is missing)."""
    if fixed is None or adaptive["speedup_wallclock"] is None or fixed["speedup_wallclock"] is None:
        return None
    top = (adaptive.get("band") or [None, adaptive["speedup_wallclock"]])[1] or adaptive["speedup_wallclock"]
    return top >= fixed["speedup_wallclock"]


GOAL_BUDGETS = {524_288: (400_000, 800_000), 1_048_576: (800_000, 1_600_000), 2_097_152: (1_600_000, 3_200_000)}
"""The issue's budgets (0.5M, 1M, 2M tokens) and the range of measured budgets that stands for each: the trend
series' own points (327,680 / 1,310,720 / 5,505,024 tokens for the tiny model) are not powers of two."""


def goal(points: list[dict]) -> dict:
    """The issue's goal, checked on the points measured: the adaptive arm at least the best fixed table (within
    the band) everywhere, and at least 2x calibrated on WikiText-2 at every point standing for 1M or 2M."""
    wiki = {p["budget_tokens"]: p for p in points if p["corpus"] == "wikitext-2"}

    def near(goal_budget: int) -> list[int]:
        low, high = GOAL_BUDGETS[goal_budget]
        return [b for b in wiki if low <= b < high]

    twofold = {b: (wiki[b]["adaptive"]["speedup_wallclock"] or 0) >= 2.0
               for g in (1_048_576, 2_097_152) for b in near(g)}
    beats = [p["adaptive_at_least_best_fixed"] for p in points]
    return {"adaptive_at_least_best_fixed_everywhere": all(b is True for b in beats) if beats else None,
            "two_fold_on_wikitext_at_1M_2M": twofold,
            "budgets_missing": [g for g in GOAL_BUDGETS if not near(g)]}


def band_text(band: list[float] | None) -> str:
    """A band as the console shows it: "1.71–1.79" (or "none")."""
    return f"{band[0]:.2f}–{band[1]:.2f}" if band else "none"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="curriculum_speedup result JSON files with the adaptive arm")
    p.add_argument("--out", type=Path, default=RESULTS, help="where adaptive_vs_fixed.json goes")
    args = p.parse_args(argv)
    points, notes = [], []
    earlier = earlier_decisions(args.out / "adaptive_vs_fixed.json")
    for path in args.results:
        result = json.loads(path.read_text(encoding="utf-8"))
        got = point(result, earlier)
        if got is None:
            notes.append(f"{path}: no {ADAPTIVE_ARM} arm; left out")
            continue
        got["source"] = str(path)
        points.append(got)
    points.sort(key=lambda q: (q["corpus"], q["budget_tokens"]))
    for q in points:
        a, f = q["adaptive"], q["best_fixed"] or {}
        made = sum(1 for s in q["decisions"] for d in s["decisions"] if d.get("verdict") == "accepted")
        print(f"{q['corpus']} {q['budget_tokens']:,} tokens ({q['model']}): adaptive x{a['speedup_wallclock'] or 0:.2f} "
              f"calibrated (band {band_text(a['band'])}), x{a['speedup_tokens'] or 0:.2f} tokens, "
              f"x{a['speedup_steps'] or 0:.2f} steps, {made} accepted decisions "
              f"over {len(q['decisions'])} runs; best fixed {f.get('arm')} x{f.get('speedup_wallclock') or 0:.2f} "
              f"calibrated (band {band_text(f.get('band'))}), x{f.get('speedup_tokens') or 0:.2f} tokens, "
              f"x{f.get('speedup_steps') or 0:.2f} steps; at least the best "
              f"fixed within the band: {q['adaptive_at_least_best_fixed']}; batch rule {q['batch_rule']}, "
              f"branches judged on: {q['verdict']}")
    for note in notes:
        print(f"note: {note}")
    # The goal for each config the points ran (the batch rule on, before 2026-12-07; off on one process, since).
    by_rule = {rule: goal([q for q in points if str(q["batch_rule"]) == rule])
               for rule in dict.fromkeys(str(q["batch_rule"]) for q in points)}
    summary = {"benchmark": "adaptive_vs_fixed", "machine": machine(), "points": points, "goal": goal(points),
               "goal_by_batch_rule": by_rule, "notes": notes}
    path = write_result(args.out / "adaptive_vs_fixed.json", summary)
    print(f"goal: {summary['goal']}")
    for rule, figures in by_rule.items():
        print(f"goal, points with the batch rule {rule}: {figures}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
