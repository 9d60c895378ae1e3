#!/usr/bin/env python
"""How much a speedup figure can be trusted: the band around each curriculum arm's first crossing.

``curriculum_speedup.py`` scores an arm where its median validation curve *first* crosses the tuned
baseline's final loss. Where that curve runs flat at the target's level, a shift of a thousandth moves the
crossing by tens of thousands of tokens: two from-scratch runs of the WikiText-2 2048 benchmark gave 2.18x and
1.61x. This script reads finished result files (no training) and gives, for every curriculum arm, the
speedups if its curve sat ``target_shift`` higher or lower, where ``target_shift`` is half the range of the
baseline's final losses over seeds (seed noise alone moves the target that much). A narrow band: the figure
does not rest on noise. New result files carry the band themselves (``best_speedup_wallclock_band``); this
reads the older ones the same way (``gradus.experiments.analysis.shifted_speedups``).

Usage::

    python benchmarks/crossing_band.py benchmarks/results/curriculum_speedup_1024.json \\
        benchmarks/results/curriculum_speedup_2048-finalists2.json

Output: a table on stdout and ``benchmarks/results/crossing_band.json`` (``--out`` to put it elsewhere).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, calibration_cost, is_baseline, read_result, write_result  # noqa: E402 (the benchmarks folder is not a package)

from gradus.experiments.analysis import add_speedups, seed_shift, shifted_speedups  # noqa: E402


def bands(report: dict, source: str) -> list[dict]:
    """One row per curriculum arm of a ``curriculum_speedup.py`` report: its point speedups (recomputed the
    way the benchmark computes them) and their bands."""
    cost, base = calibration_cost(report), report["baseline"]
    shift = seed_shift(base["final_val_loss_seeds"])
    rows = []
    for arm in report["arms"]:
        if is_baseline(arm["name"]):
            continue
        rec = {k: arm[k] for k in ("curve", "stages", "train_seconds_calibrated")}
        add_speedups(rec, base, cost)
        rec.update(shifted_speedups(rec, base, cost, shift))
        rows.append({"file": source, "target": report["target"], "final_len": report["settings"]["final_len"],
                     "arm": arm["name"], "best": arm["name"] == report.get("best_arm"), "target_shift": shift,
                     "speedup_tokens": rec["speedup_tokens"],
                     "speedup_wallclock_calibrated": rec["speedup_wallclock_calibrated"],
                     "speedup_tokens_band": rec["speedup_tokens_band"],
                     "speedup_wallclock_calibrated_band": rec["speedup_wallclock_calibrated_band"],
                     "reached": arm["tokens_to_target"] is not None})
    return rows


def table(rows: Sequence[dict]) -> str:
    """The stdout table: point figure and band, calibrated and in tokens, per file and arm."""
    def num(x: float | None) -> str:
        return "—" if x is None else f"{x:.2f}"

    def band(b: list | None) -> str:
        return "—" if b is None else "–".join("never" if x is None else f"{x:.2f}" for x in b)

    w = max(4, *(len(Path(r["file"]).name) for r in rows))
    lines = [f"{'file':<{w}} {'arm':<27} {'shift':>6} {'×cal':>5} {'band':>12} {'×tok':>5} {'band':>12}"]
    for r in rows:
        name = r["arm"] + (" *" if r["best"] else "")
        lines.append(f"{Path(r['file']).name:<{w}} {name:<27} {r['target_shift']:>6.4f} "
                     f"{num(r['speedup_wallclock_calibrated']):>5} {band(r['speedup_wallclock_calibrated_band']):>12} "
                     f"{num(r['speedup_tokens']):>5} {band(r['speedup_tokens_band']):>12}")
    lines.append("band: the speedup if the arm's median curve sat `shift` higher / lower (shift = half the "
                 "baseline's seed spread of final loss); * = the file's best arm; never: the shifted target is never "
                 "reached; —: no band (the arm misses the target itself and is scored as a slowdown)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="curriculum_speedup.py result files")
    parser.add_argument("--out", type=Path, default=RESULTS / "crossing_band.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    rows = []
    for path in args.results:
        report = read_result(path, "crossing_band")
        if report.get("benchmark") != "curriculum_speedup":
            raise SystemExit(f"crossing_band: {path} is not a curriculum_speedup.py result (no "
                             "\"benchmark\": \"curriculum_speedup\"); give those files")
        rows.extend(bands(report, str(path)))
    print(table(rows))
    write_result(args.out, {"benchmark": "crossing_band", "command": "python benchmarks/crossing_band.py "
                            + " ".join(map(str, args.results)), "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
