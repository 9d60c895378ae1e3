#!/usr/bin/env python
"""No stall at a shape change: each stage's first step against its median step, with torch.compile.

Runs :class:`gradus.train.trainer.Trainer` on a curriculum (a preset, default ``demo``) cut to
``--steps-per-stage`` steps per stage (:func:`stage_throughput.benchmark_config`: shapes, LRs and mixes
as the curriculum resolves them, evaluation off), with ``train.compile`` on (default) or off. The
trainer compiles every training shape at start-up (:mod:`gradus.train.warmup`); this script reports
that start-up compile time per shape, ``compile/recompiles`` at the end of the run (0: no graph was
built after the warm-up), and per stage the first step's time on the trainer's clock
(``StepReport.seconds``: data wait + train step) against the stage's median step. Stage 0's first step
also carries the run's cold start (the data thread's first batch, AdamW's moments allocated).

Example::

    python benchmarks/compile_transition.py --model-preset small --steps-per-stage 15 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stage_throughput import MODEL_PRESETS, RESULTS, apply_run_choices, benchmark_config  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="demo", help="a shipped curriculum preset (default: demo)")
    p.add_argument("--model-preset", choices=MODEL_PRESETS, default="small", help="model size (default: small)")
    p.add_argument("--steps-per-stage", type=int, default=15, help="steps of each stage (default: 15)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--compile", choices=("on", "off"), default="on", help="torch.compile (default: on)")
    p.add_argument("--out", type=Path, default=RESULTS / "compile_transition.json", help="result JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the cut curriculum once, print the per-stage table, and write the result JSON."""
    from gradus.config import from_dict, read_yaml
    from gradus.presets import preset_path
    from gradus.train.metrics import read_metrics
    from gradus.train.trainer import Trainer

    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.data = "preset"  # apply_run_choices: keep the preset's own sources
    raw = apply_run_choices(read_yaml(preset_path(args.preset)), args, "cpu", "fp32", args.compile == "on")
    raw, shapes = benchmark_config(raw, f"preset {args.preset}", args.steps_per_stage, None, None, False)
    raw["train"]["threads"] = args.threads
    times: dict[int, list[float]] = {s.index: [] for s in shapes}
    waits: dict[int, list[float]] = {s.index: [] for s in shapes}  # data/wait_seconds (cumulative) after each step

    def observe(report) -> None:
        times[report.stage_index].append(report.seconds)
        waits[report.stage_index].append((report.record or {}).get("data/wait_seconds", float("nan")))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(from_dict(raw), Path(tmp) / "run", quiet=True,
                          on_step=observe)
        t0 = time.perf_counter()
        try:
            trainer.setup()
            setup_seconds = time.perf_counter() - t0
            trainer.fit()
        finally:
            trainer.close()
        records = list(read_metrics(Path(tmp) / "run" / "metrics.jsonl"))
    warm = [{"seq_len": r["seq_len"], "rows": r["rows"], "seconds": round(r["seconds"], 2)}
            for r in records if r.get("event") == "compile/warmup"]
    steps = [r for r in records if "event" not in r and "loss" in r]
    rows, waited = [], 0.0
    for s in shapes:
        first, median = times[s.index][0], statistics.median(times[s.index])
        rows.append({"stage": s.index, "seq_len": s.seq_len, "batch": s.batch, "first_step_s": first,
                     "first_step_data_wait_s": waits[s.index][0] - waited, "median_step_s": median,
                     "first_over_median": first / median})
        waited = waits[s.index][-1]
    report = {"preset": args.preset, "model_preset": args.model_preset, "steps_per_stage": args.steps_per_stage,
              "threads": args.threads, "compile": args.compile, "setup_seconds": setup_seconds,
              "warmup_compile": warm, "recompiles_after_warmup": steps[-1].get("compile/recompiles"),
              "stages": rows, "command": "python benchmarks/compile_transition.py " + " ".join(sys.argv[1:])}
    print(f"setup {setup_seconds:.1f}s; start-up compile per shape (seq_len×rows): "
          + ", ".join(f"{w['seq_len']}×{w['rows']} {w['seconds']:.1f}s" for w in warm))
    print(f"compile/recompiles after the warm-up: {report['recompiles_after_warmup']}")
    print(f"{'stage':>5} {'seq_len':>7} {'batch':>5} {'first ms':>9} {'median ms':>9} {'first/median':>12} {'1st data wait ms':>16}")
    for r in rows:
        print(f"{r['stage']:>5} {r['seq_len']:>7} {r['batch']:>5} {r['first_step_s'] * 1e3:>9.1f} "
              f"{r['median_step_s'] * 1e3:>9.1f} {r['first_over_median']:>12.2f} {r['first_step_data_wait_s'] * 1e3:>16.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
