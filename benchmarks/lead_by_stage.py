#!/usr/bin/env python
"""Where does the curriculum build its lead, and where does the baseline win it back? (issue 29 §2)

Reads the point files of a budget series (``curriculum_speedup.py`` results, e.g. ``benchmarks/results/trend/
curriculum_speedup_tiny-b*.json``) and, at every evaluation of the best curriculum's median curve, the *token
lead*: the tokens the target baseline's median curve needed to reach the same validation loss, over the
curriculum's own tokens (:func:`gradus.experiments.analysis.token_lead`). Read at each of the curriculum's stage
ends, it says which stage pays and how the lead moves as the budget grows: if the lead at the end of the short
stages holds with the budget but the final lead shrinks, the baseline wins it back in the long stage.

Both curves are WSD runs with the same warmup and cooldown fractions, so before the cooldown both are in their
stable phase; after it the baseline's points are annealed and the comparison mixes phases (the last
evaluations' lead is the first-crossing speedup's own reading).

Usage::

    python benchmarks/lead_by_stage.py benchmarks/results/trend/curriculum_speedup_tiny-b327680.json \\
        benchmarks/results/trend/curriculum_speedup_tiny-b1310720.json --out benchmarks/results/lead_by_stage_tiny.json

Writes the JSON (per budget: the arm, the target baseline, the lead at each evaluation and at each stage's last
evaluation) and a PNG of the lead against the fraction of the run, one line per budget.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, save_plot, write_result  # noqa: E402

from gradus.experiments.analysis import token_lead  # noqa: E402


def _arm(report: dict, name: str) -> dict:
    """The record of arm ``name`` in a point's report (the target baseline included)."""
    arms = [report["baseline"], *report["arms"]]
    arm = next((a for a in arms if a["name"] == name), None)
    if arm is None:
        raise SystemExit(f"lead_by_stage: no arm {name!r} in the point at {report['settings']['budget']:,} tokens; "
                         f"arms: {', '.join(a['name'] for a in arms)}")
    return arm


def lead_of(report: dict, arm_name: str | None = None, baseline: str | None = None) -> dict:
    """The token lead of one point: the report's best arm (or ``arm_name``) against its target baseline (or the
    arm ``baseline``, e.g. the full-batch WSD one, to set the batch's share apart)."""
    name = arm_name or report["best_arm"]
    arm = _arm(report, name)
    base = _arm(report, baseline or report["baseline"]["name"])
    budget = int(report["settings"]["budget"])
    lead = token_lead(arm["curve"], base["curve"])
    stages = []
    for st in arm["stages"]:
        inside = [(t, x) for t, x in lead if st["start_tokens"] < t <= st["end_tokens"]]
        if inside:
            t, x = inside[-1]
            stages.append({"stage": st["stage"], "seq_len": st["seq_len"], "end_tokens": st["end_tokens"],
                           "evaluated_at": t, "lead": x})
    return {"budget_tokens": budget, "tokens_per_param": report.get("tokens_per_parameter"), "arm": name,
            "baseline": base["name"], "final_val_loss": arm.get("final_val_loss"),
            "baseline_final_val_loss": base.get("final_val_loss"),
            "speedup_tokens": arm.get("speedup_tokens"),
            "lead": [{"tokens": t, "fraction": t / budget, "lead": x} for t, x in lead], "stages": stages}


def table(points: Sequence[dict]) -> str:
    """Markdown: the lead at each stage's last evaluation, one row per budget."""
    names = [s["stage"] for s in points[0]["stages"]]
    lines = ["| budget | arm / baseline | " + " | ".join(f"end of {n}" for n in names) + " | ×tokens to the target (first crossing) |",
             "|---|---|" + "---:|" * (len(names) + 1)]
    for p in points:
        by = {s["stage"]: s["lead"] for s in p["stages"]}
        cells = [("–" if by.get(n) is None else f"{by[n]:.2f}") for n in names]
        lines.append(f"| {p['budget_tokens']:,} | {p['arm']} / {p['baseline']} | " + " | ".join(cells)
                     + f" | {p['speedup_tokens'] or float('nan'):.2f} |")
    return "\n".join(lines)


def plot(points: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baselines = {p["baseline"] for p in points}
    fig, ax = plt.subplots(figsize=(8, 5))
    for p in points:
        xs = [q["fraction"] for q in p["lead"] if q["lead"] is not None]
        ys = [q["lead"] for q in p["lead"] if q["lead"] is not None]
        label = f"{p['budget_tokens']:,} tokens"
        if p.get("tokens_per_param"):
            label += f" ({p['tokens_per_param']:.1f} tokens/param)"
        if len(baselines) > 1:  # each budget's own tuned baseline: name it on its line
            label += f" vs {p['baseline']}"
        line, = ax.plot(xs, ys, marker="o", label=label)
        for st in p["stages"][:-1]:
            ax.axvline(st["end_tokens"] / p["budget_tokens"], color=line.get_color(), lw=0.6, ls=":")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axvline(0.8, color="black", lw=0.6, ls="--", label="cooldown begins (both runs)")
    ax.set_xlabel("fraction of the run's tokens (dotted: the curriculum's stage switches)")
    ax.set_ylabel("token lead: baseline tokens to the same loss / curriculum tokens")
    first = points[0]
    against = first["baseline"] if len(baselines) == 1 else "each budget's tuned baseline"
    ax.set_title(f"gradus: where the lead is built — {first['arm']} against {against}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("points", nargs="+", type=Path, help="curriculum_speedup result files, one per budget")
    p.add_argument("--arm", help="the curriculum arm to read (default: each point's best arm)")
    p.add_argument("--baseline", help="the arm to measure the lead against (default: each point's target baseline)")
    p.add_argument("--out", type=Path, default=RESULTS / "lead_by_stage.json", help="the JSON (the PNG beside it)")
    args = p.parse_args(argv)
    reports = []
    for path in args.points:
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"lead_by_stage: {path}: {e}") from None
    points = sorted((lead_of(r, args.arm, args.baseline) for r in reports), key=lambda q: q["budget_tokens"])
    print(table(points))
    write_result(args.out, {"benchmark": "lead_by_stage", "command": "python benchmarks/lead_by_stage.py "
                            + " ".join(argv if argv is not None else sys.argv[1:]), "points": points})
    save_plot(lambda path: plot(points, path), args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
