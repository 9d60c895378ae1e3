#!/usr/bin/env python
"""Budget to target: how many tokens does each arm need when every run is a complete, annealed run?

``curriculum_speedup.py`` measures an arm's tokens to the target where its loss curve first crosses it, in
the middle of its own schedule (its learning rate not yet decayed), while the target is the baseline's
loss at the *end* of its schedule. This script gives the other standard reading: run every arm to
completion at several budgets (``curriculum_speedup.py --budget B``, each with its own LR tuning), and find
the budget at which an arm's final loss reaches the target (the baseline's final loss at the largest budget),
interpolated linearly in log(budget) between the two budgets that bracket it. Speedup = the largest budget /
that budget. A budget below the smallest one run is not extrapolated: the speedup is then reported as at
least largest / smallest.

Usage::

    python benchmarks/budget_to_target.py benchmarks/results/curriculum_speedup.json \\
        benchmarks/results/curriculum_speedup_b262144.json benchmarks/results/curriculum_speedup_b393216.json

Inputs are ``curriculum_speedup.py`` JSONs that differ only in the budget (and so in the evaluation cadence)
and ran the same seeds. Output: a table on stdout and ``benchmarks/results/budget_to_target.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, is_baseline, read_result, write_result  # noqa: E402 (the benchmarks folder is not a package)

from gradus.experiments.trend import budget_to_target  # noqa: E402  (shared with gradus compare --budgets)

# Settings that may differ between the inputs: the budget, and the lr-find sweep (only its own arm uses it).
VARYING = {"budget", "lr_find", "lr_find_steps"}


def load(paths: Sequence[Path]) -> list[dict]:
    """The reports, smallest budget first; exits with a one-line message when they do not belong together."""
    pairs = [(p, read_result(p, "budget_to_target")) for p in paths]
    pairs.sort(key=lambda pr: pr[1]["settings"]["budget"])
    reports = [r for _, r in pairs]
    budgets = [r["settings"]["budget"] for r in reports]
    if len(set(budgets)) != len(budgets) or len(budgets) < 2:
        raise SystemExit(f"budget_to_target: need reports at two or more different budgets, got {budgets}")
    first = {k: v for k, v in reports[0]["settings"].items() if k not in VARYING}
    for p, r in pairs:
        other = {k: v for k, v in r["settings"].items() if k not in VARYING}
        # Keys only one report has are settings added to the benchmark later, at their defaults.
        diff = sorted(k for k in first.keys() & other.keys() if first[k] != other[k])
        if diff:
            raise SystemExit(f"budget_to_target: {p} differs from {pairs[0][0]} in {', '.join(diff)}; only the "
                             "budget may differ")
    return reports


def _at(values: Sequence[float | None] | None, i: int) -> float | None:
    """The ``i``-th seed's value, None when that seed has none (diverged, or not run)."""
    return values[i] if values is not None and i < len(values) else None


def arms_by_name(report: dict) -> dict[str, dict]:
    """Baseline and arms of one report by name."""
    return {a["name"]: a for a in [report["baseline"], *report["arms"]]}


def analyse(reports: list[dict]) -> dict:
    """Per arm: final loss at each budget (median and per seed), budget to the target and the speedup."""
    largest = reports[-1]
    target = largest["target"]
    top = largest["settings"]["budget"]
    smallest = reports[0]["settings"]["budget"]
    seeds = list(largest["settings"]["seeds"])
    names = [n for n in arms_by_name(largest) if all(n in arms_by_name(r) for r in reports)]
    # Calibrated seconds per token of each arm's whole run at the largest budget: an arm's stages are fixed
    # fractions of its budget, so its cost is that rate × the budget it needs (one file's calibration for all).
    rate = {n: a["train_seconds_calibrated"] / top for n, a in arms_by_name(largest).items()
            if a.get("train_seconds_calibrated")}
    reference = rate.get(largest["baseline"]["name"])
    rows = []
    for name in names:
        per = [arms_by_name(r)[name] for r in reports]
        points = [(r["settings"]["budget"], a["final_val_loss"]) for r, a in zip(reports, per, strict=True)]
        b, how = budget_to_target(points, target)
        seed_b = []
        for i in range(len(seeds)):
            pts = [(r["settings"]["budget"], _at(a.get("final_val_loss_seeds"), i))
                   for r, a in zip(reports, per, strict=True)]
            seed_b.append(budget_to_target(pts, target))
        seed_speedups = [top / sb for sb, _ in seed_b if sb]
        rows.append({
            "name": name,
            "lr_by_budget": {str(r["settings"]["budget"]): a["lr"] for r, a in zip(reports, per, strict=True)},
            "final_val_loss_by_budget": {str(bud): loss for bud, loss in points},
            "budget_to_target": b,
            "budget_to_target_kind": how,
            "speedup_budget": top / b if b else None,
            "speedup_budget_calibrated": (top * reference / (b * rate[name])
                                          if b and reference and rate.get(name) else None),
            "speedup_budget_is_lower_bound": how == "at most",
            "speedup_budget_seeds": [top / sb if sb else None for sb, _ in seed_b],
            "speedup_budget_seeds_reaching": f"{len(seed_speedups)}/{len(seeds)}",
            "speedup_tokens_crossing": arms_by_name(largest)[name].get("speedup_tokens"),
        })
    return {
        "benchmark": "budget_to_target",
        "inputs": [{"budget": r["settings"]["budget"], "command": r.get("command"), "date": r.get("date")}
                   for r in reports],
        "target": target,
        "target_from": f"the baseline's final val loss at the largest budget ({top:,} tokens), median over seeds",
        "seeds": seeds,
        "method": "every run complete (its own schedule, cosine or WSD, run to its own budget) with its LR tuned "
                  "at that budget; the budget where an arm's median final loss reaches the target, linear in "
                  "log(budget) between the bracketing budgets; speedup = largest budget / that budget (a lower "
                  f"bound when the smallest budget, {smallest:,}, already reaches it); calibrated = the same in "
                  "calibrated seconds (each arm's whole-run seconds per token at the largest budget × the budget)",
        "arms": rows,
    }


def table(report: dict) -> str:
    """The rows as text."""
    budgets = [i["budget"] for i in report["inputs"]]
    head = f"{'arm':<20}" + "".join(f"{f'final@{b // 1000}k':>12}" for b in budgets)
    head += f"{'to target':>12}{'speedup':>10}{'×cal':>7}{'seeds':>22}{'crossing':>10}"
    lines = [f"target {report['target']:.4f} ({report['target_from']})", head]
    for a in report["arms"]:
        finals = "".join(f"{v:>12.4f}" if (v := a["final_val_loss_by_budget"][str(b)]) is not None else f"{'—':>12}"
                         for b in budgets)
        to = (f"{'≤' if a['speedup_budget_is_lower_bound'] else ''}{a['budget_to_target'] / 1000:.0f}k"
              if a["budget_to_target"] else "—")
        sp = (f"{'≥' if a['speedup_budget_is_lower_bound'] else ''}{a['speedup_budget']:.2f}×"
              if a["speedup_budget"] else "<1")
        cal = a.get("speedup_budget_calibrated")
        cal = f"{'≥' if a['speedup_budget_is_lower_bound'] else ''}{cal:.2f}×" if cal else "—"
        seeds = ", ".join(f"{s:.2f}" if s else "—" for s in a["speedup_budget_seeds"])
        cross = f"{a['speedup_tokens_crossing']:.2f}×" if a["speedup_tokens_crossing"] else "—"
        lines.append(f"{a['name']:<20}{finals}{to:>12}{sp:>10}{cal:>7}{seeds:>22}{cross:>10}")
    ok = [a["speedup_budget"] for a in report["arms"] if a["speedup_budget"] and not is_baseline(a["name"])]
    if ok:
        lines.append(f"median speedup over the curricula that reach the target: {statistics.median(ok):.2f}×")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", type=Path, help="curriculum_speedup.py JSONs at different budgets")
    p.add_argument("--out", type=Path, default=RESULTS / "budget_to_target.json", help="the JSON written")
    args = p.parse_args(argv)
    report = analyse(load(args.reports))
    report["command"] = "python benchmarks/budget_to_target.py " + " ".join(str(r) for r in args.reports)
    print(table(report))
    write_result(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
