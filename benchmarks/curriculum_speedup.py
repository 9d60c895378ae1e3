#!/usr/bin/env python
"""How much faster does a sequence-length curriculum reach a tuned baseline's loss? (issue 6)

Every arm trains the same tiny GPT on one corpus (WikiText-2 by default; ``--data`` takes another folder with
train.jsonl and valid.jsonl, or one JSONL file whose documents are held out by hash) through the real trainer
(:func:`gradus.train.trainer.train`, the code path of ``gradus train``), with the same token budget, the same
tokens per step within a regime, and the same evaluation: validation loss at the reference length (the
baseline's, ``--final-len``, 256 by default) on the same held-out documents every ``budget / eval_points``
tokens. The tokenizer is a byte-level BPE trained on the train split with ``gradus tokenizer train``. The
target is the best of the baselines run (cosine, WSD and linear decay to zero: :data:`TARGET_BASELINES`), so a curriculum's gain is
not its schedule's.

Method (ARCHITECTURE.md, "Benchmarks that can be trusted"):

* every arm's learning rate is tuned the same way: a grid of at least three values at seed 0, extended by ×2
  at an edge until the best value lies strictly inside (up to ``--max-extensions`` times); the best LR is then
  run at the other seeds (with ``--finalists N``, the best N LRs, and the lowest median final loss wins; if it
  sits at an edge, the grid extends there at every seed, within the same ``--max-extensions``);
* the target is the final validation loss of the tuned baseline (the median over seeds, i.e. the last point
  of its median curve);
* per arm, on its median curve over seeds: tokens and training seconds to the target, linearly interpolated
  between the two evaluations that bracket the first crossing (the first evaluation counts as is when it is
  already below the target); the same per seed gives the spread;
* seconds are ``time/train_seconds`` (training steps and data waits, evaluation and checkpoints excluded);
  they depend on the machine's load, which is recorded with every run; tokens do not. So the wall-clock is
  also given *calibrated*: each stage's tokens × that stage shape's seconds per token, by default
  (``--calibration windows``, the method of the series recorded so far) read as the 90th-percentile
  throughput of the shape's logging windows over all runs of the benchmark (load only ever slows a window
  down, and every shape's windows are spread over the whole benchmark); ``--calibration measured`` times each
  shape's optimizer step after the runs instead, the shapes interleaved (``gradus compare``'s default,
  :mod:`gradus.experiments.calibration`, cached in ``--work``), which does not depend on the runs' history.
  The best arm is chosen by calibrated wall-clock;
* an arm that never reaches the target gets the slowdown the other way round: the baseline's tokens
  (seconds) to reach *that arm's* final loss / the arm's whole run (below 1).

Two regimes (ARCHITECTURE.md: the literature's gains come from stability at large tokens-per-step and high LR):
``A`` at the baseline's own tokens per step, and ``B`` at ``--big-factor`` times as many, where the curricula
face a baseline tuned at the same large batch. Every speedup is against the regime-A baseline (the target);
regime-B arms also report their speedup against the regime-B baseline (to its own final loss).

The machinery is gradus's own (:mod:`gradus.experiments`, the code of ``gradus sweep`` and ``gradus compare``):
its settings and arm catalogue are :mod:`gradus.experiments.speedup_arms`, the arms' configs, lr-find and the
per-arm summary :mod:`gradus.experiments.speedup`; this script keeps the flags, the calls and the report. Runs execute ``--jobs`` at a time (default 2: one
per core), each a ``gradus train`` process with ``--threads`` torch threads (default 1: on a shared 2-core box
two OpenMP threads per process collapse whenever another process holds a core). Runs on CPU repeat bit for
bit, so ``--work DIR --reuse`` reads back finished runs with an identical config (their ``result.json``)
instead of training them again (attempts that add arms reuse the baseline's runs; their
measured seconds are then from the earlier invocation, and the JSON says which runs were reused).

Usage::

    python benchmarks/curriculum_speedup.py             # the default arms, 2 seeds (~22 minutes, 2 idle cores)
    python benchmarks/curriculum_speedup.py --quick     # a few minutes: half the budget, baseline and textbook
    python benchmarks/curriculum_speedup.py --arms baseline,seqwarm-textbook --tag attempt2
    python benchmarks/curriculum_speedup.py --final-len 1024 --seeds 0,1,2 --max-extensions 1 --tag 1024 \
        --arms baseline,baseline-wsd,seqwarm-textbook-wsd,seqwarm-long-wsd   # BENCHMARKS.md, final length 1024

Outputs: a table on stdout, ``benchmarks/results/curriculum_speedup[_TAG].json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

# The benchmark never needs the network; make Hugging Face libraries fail fast if something asks.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402 (benchmarks is not a package)
    REPO,
    RESULTS,
    calibration_cost,
    is_baseline,
    machine,
    run_resumable,
    save_plot,
    write_result,
)

from gradus.config import to_dict  # noqa: E402
from gradus.experiments.analysis import (  # noqa: E402,F401 (to_target, calibrated_seconds ... re-exported)
    CALIBRATION_PERCENTILE,
    RunRecord,
    add_speedups,
    band_text,
    calibrate,
    calibrated_seconds,
    median_curve,
    seconds_at,
    seed_shift,
    shifted_speedups,
    stage_windows,
    summarise_runs,
    to_target,
)
from gradus.experiments.calibration import ArmShapes, calibrate_arms  # noqa: E402
from gradus.experiments.speedup import (  # noqa: E402
    check_data,
    data_section,
    execute,
    find_lrs,
    make_config,
    stage_plan,
    stage_plan_of_run,
    summarise,
)
from gradus.experiments.speedup_arms import (  # noqa: E402
    ARMS,
    DEFAULT_ARMS,
    LR_FIND_ARMS,
    QUICK_ARMS,
    TARGET_BASELINES,
    Settings,
)
from gradus.experiments.tuning import finalists_text  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "wikitext-2"


# ================================================================================== tokenizer
def train_tokenizer(s: Settings, data: Path, work: Path) -> Path:
    """``gradus tokenizer train`` on the train split (a few seconds); returns the tokenizer.json path."""
    from gradus.cli import main as gradus_main

    out = work / f"bpe-{s.vocab_size}"
    if (out / "tokenizer.json").is_file():
        return out / "tokenizer.json"
    cfg = work / "tokenizer-config.json"  # JSON is YAML: the CLI reads it as a config file
    cfg.write_text(json.dumps({
        "model": {"preset": s.model, "max_seq_len": s.final_len},
        "data": data_section(s, data),
        "curriculum": {"target_tokens": s.budget, "stages": [{"seq_len": s.final_len, "tokens_per_batch": 4096}]},
    }))
    with contextlib.redirect_stdout(sys.stderr):
        code = gradus_main(["tokenizer", "train", str(cfg), "--vocab-size", str(s.vocab_size), "--out", str(out),
                            "--max-documents", str(s.tokenizer_documents)])
    if code != 0:
        raise SystemExit(f"curriculum_speedup: gradus tokenizer train failed (exit {code})")
    return out / "tokenizer.json"


# ====================================================================================== output
def table(report: dict) -> str:
    """The stdout table."""
    n_seeds = len(report["settings"]["seeds"])
    lines = [
        f"target: val loss {report['target']:.4f} at length {report['settings']['final_len']} "
        f"(final loss of the tuned baseline, median of {n_seeds} seed(s))",
        f"{'arm':<22} {'reg':<3} {'LR':>7} {'grid':>4} {'final loss (seeds)':>26} {'tokens→tgt':>11} "
        f"{'s→tgt':>6} {'cal s':>6} {'×tok':>5} {'×wall':>5} {'×cal':>5} {'tok/s':>6}",
    ]

    def num(x: float | None, fmt: str) -> str:
        return format(x, fmt) if x else "—"

    for rec in [report["baseline"], *report["arms"]]:
        seeds = "/".join(f"{x:.3f}" if x is not None else "div" for x in rec["final_val_loss_seeds"])
        fl = rec["final_val_loss"]
        final = f"{fl:.4f} ({seeds})" if fl is not None else f"diverged ({seeds})"
        tok = f"{rec['tokens_to_target'] / 1e6:.3f}M" if rec["tokens_to_target"] else "not reached*"
        inside = "in" if rec["lr_inside_grid"] else "EDGE"
        lines.append(
            f"{rec['name']:<22} {rec['regime']:<3} {rec['lr']:>7.2g} {inside:>4} {final:>26} {tok:>11} "
            f"{num(rec['seconds_to_target'], '.0f'):>6} {num(rec['seconds_to_target_calibrated'], '.0f'):>6} "
            f"{num(rec['speedup_tokens'], '.2f'):>5} {num(rec['speedup_wallclock'], '.2f'):>5} "
            f"{num(rec['speedup_wallclock_calibrated'], '.2f'):>5} {rec['tokens_per_sec_median']:>6,.0f}")
    lines.append("×tok, ×wall, ×cal: speedups to the target against the regime-A baseline in tokens, measured "
                 "training seconds, and calibrated seconds (per-shape cost × tokens: the ratios hold under load)")
    lines.append("* target not reached: the speedups are then the baseline's cost to reach this arm's final loss "
                 "divided by this arm's whole run (below 1: a slowdown)")
    for rec in [report["baseline"], *report["arms"]]:
        if finalists := finalists_text(rec.get("lr_finalists", {})):
            lines.append(f"  {rec['name']} {finalists}")
    for rec in report["arms"]:
        if (band := band_text(rec)) and not is_baseline(rec["name"]):
            lines.append(f"  {rec['name']} band: {band} (half the baseline's seed spread of final loss)")
    for rec in report["arms"]:
        if rec.get("speedup_tokens_vs_regime_baseline") and rec["name"] != "baseline-big":
            cal = rec.get("speedup_wallclock_calibrated_vs_regime_baseline")
            lines.append(f"  {rec['name']} against baseline-big (regime B's own tuned baseline): "
                         f"×{rec['speedup_tokens_vs_regime_baseline']:.2f} tokens"
                         + (f", ×{cal:.2f} calibrated wall-clock" if cal else ""))
    cm = report.get("cost_model")
    if cm:
        lines.append(f"cost model (gradus.plan.cost, FLOPs per token incl. attention; one MFU for every length): "
                     f"projected speedup to the target from each arm's measured tokens, on this model's shape and "
                     f"on {cm['large_shape']}'s; H100 seconds at MFU {cm['mfu']:g}:")
        for name, p in cm["arms"].items():
            lines.append(f"  {name:<22} ×{p['projected_speedup']:.2f} (this model)  ×{p['projected_speedup_large']:.2f} "
                         f"({cm['large_shape']})  {p['h100_seconds_large']:.1f}s on H100 at {cm['large_shape']}"
                         if p["projected_speedup"] else f"  {name:<22} target not reached")
    lines.append(f"best arm: {report['best_arm']}: ×{report['best_speedup_wallclock']} calibrated wall-clock, "
                 f"×{report['best_speedup_wallclock_measured']} measured, ×{report['best_speedup_tokens']} tokens")
    return "\n".join(lines)



def project(s: Settings, tokenizer: Path, records: list[dict], base: dict, mfu: float = 0.4,
            large: str = "124M") -> dict:
    """The cost model next to the measured figures (issue 14): each arm's measured tokens to the target,
    spread over its stages and priced in FLOPs per token at each length (gradus.plan.cost, attention
    included), on this benchmark's model shape and on a larger preset's; and the H100 seconds of that at ``mfu``."""
    from gradus.config import ModelConfig
    from gradus.plan.cost import first_tokens, projected_flops, projected_speedup, seconds_for
    from gradus.plan.hardware import gpu_spec
    from gradus.sizes import resolve_shape

    vocab = s.vocab_size
    here = resolve_shape(ModelConfig(preset=s.model, max_seq_len=s.final_len,
                                     **({"d_model": s.d_model} if s.d_model else {})), vocab)
    big = resolve_shape(ModelConfig(preset=large, max_seq_len=s.final_len), vocab)
    h100 = gpu_spec("h100")

    def mix(rec: dict) -> list[tuple[int, int]]:
        return [(st["seq_len"], st["end_tokens"] - st["start_tokens"]) for st in rec["stages"]]

    arms = {}
    for rec in records:
        tok = rec.get("tokens_to_target")
        if not tok:
            arms[rec["name"]] = {"projected_speedup": None}
            continue
        base_tok = base["tokens_to_target"]
        arms[rec["name"]] = {
            "tokens_to_target": tok,
            "projected_speedup": projected_speedup(here, mix(rec), tok, mix(base), base_tok),
            "projected_speedup_large": projected_speedup(big, mix(rec), tok, mix(base), base_tok),
            "h100_seconds_large": seconds_for(projected_flops(first_tokens(mix(rec), tok), big), h100, mfu),
        }
    return {"tokens_per_parameter": s.budget / here.params_total,
            "cost_model": {"mfu": mfu, "gpu": "h100", "large_shape": large, "params": here.params_total,
                           "params_large": big.params_total, "arms": arms,
                           "note": "speedup = the baseline's training FLOPs to the target / the arm's (6·N_mm + "
                                   "6·n_layers·seq_len·d_model per token); MFU cancels at one MFU for every length, "
                                   "so short stages' lower MFU on a real GPU makes these upper bounds"}}


def plot(report: dict, path: Path) -> None:
    """Validation loss against tokens, measured seconds and calibrated seconds; one row per regime; stage
    switches marked (each panel drawn by gradus.experiments.plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradus.experiments.plots import draw

    records = [report["baseline"], *report["arms"]]
    regimes = sorted({r["regime"] for r in records})
    fig, axes = plt.subplots(len(regimes), 3, figsize=(18, 4.8 * len(regimes)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {r["name"]: colors[i % len(colors)] for i, r in enumerate(records)}
    cost = calibration_cost(report)
    for row, regime in enumerate(regimes):
        shown = [r for r in records if r["regime"] == regime or r is report["baseline"]]
        for col, axis in enumerate(("tokens", "seconds", "calibrated")):
            ax = axes[row][col]
            draw(ax, shown, axis, color, target=report["target"], cost=cost,
                 ylabel=f"val loss at length {report['settings']['final_len']}",
                 label_of=lambda r: f"{r['name']} (lr {r['lr']:g})")
            ax.set_title(f"regime {regime} ({'baseline tokens/step' if regime == 'A' else 'large tokens/step'}); "
                         "dotted: stage switches", fontsize=9)
    fig.suptitle(f"gradus curriculum speedup — {report['machine']['summary']}, {report['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

# ========================================================================================= main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few minutes: half the budget, regime A's baseline and "
                   "textbook curriculum only")
    p.add_argument("--smoke", action="store_true", help="seconds: a toy model and budget (for the test suite)")
    p.add_argument("--arms", help=f"comma-separated arms (default: {','.join(DEFAULT_ARMS)}; known: "
                   f"{', '.join(ARMS)}); the baseline is always included")
    p.add_argument("--budget", type=int, help="training tokens per run")
    p.add_argument("--final-len", type=int, help="the baseline's sequence length and every evaluation's (default "
                   "256); the curricula's stages are fractions of it")
    p.add_argument("--tokens-per-step", type=int, help="regime A tokens per step")
    p.add_argument("--big-factor", type=int, help="regime B tokens per step = this × regime A's")
    p.add_argument("--model", help="model preset (default small = 4 layers × 128)")
    p.add_argument("--d-model", type=int, help="residual width instead of the model preset's (e.g. 256)")
    p.add_argument("--vocab-size", type=int, help="BPE vocabulary (default 8192)")
    p.add_argument("--eval-points", type=int, help="evaluations per run")
    p.add_argument("--eval-tokens", type=int, help="validation tokens per evaluation")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1)")
    p.add_argument("--lanes", type=int, help="data.packing.lanes of every run (default 256, gradus's default)")
    p.add_argument("--max-extensions", type=int, help="times an LR grid may grow at an edge")
    p.add_argument("--finalists", type=int, help="the best N LRs of the first seed's grid run at every seed; the "
                   "lowest median final loss wins (default 1: the first seed's best alone)")
    p.add_argument("--lr-grid", action="append", default=[], metavar="ARM=LR,LR,LR",
                   help="override an arm's starting grid, e.g. baseline=2e-3,4e-3,8e-3")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder with train.jsonl and valid.jsonl "
                   "(default WikiText-2), or one JSONL file whose documents are held out by hash for validation")
    p.add_argument("--holdout", type=float, help="with a JSONL file as --data: share of its documents held out "
                   "(default 0.05)")
    p.add_argument("--template", help="how a record's fields make its text, e.g. '{question}\\n{answer}' for "
                   "GSM8K (default: the record's text field)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and PNG")
    p.add_argument("--tag", help="suffix of the output names: curriculum_speedup_TAG.json")
    p.add_argument("--work", type=Path, help="folder for run directories (default: a temporary one, removed)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs at a time, each in its own process (default: 2 on a 2-core box)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--reuse", action="store_true", help="with --work: read back finished runs whose config is "
                   "identical instead of training them again (their seconds are from then)")
    p.add_argument("--archive", type=Path, help="with --reuse: keep every finished run's record (one small JSON per "
                   "run) in this folder as well, and read runs back from it when --work lost them (a new machine): "
                   "commit it (benchmarks/results/runs/TAG) and a point continues in a later session. The runs' "
                   "configs name --work and --data, so give the same paths there")
    p.add_argument("--anchor-budget", type=int, help="the -abs arms keep the short stages' tokens they have at this "
                   "budget (default: the run's budget)")
    p.add_argument("--checkpoint-every-tokens", type=int, help="tokens between each run's checkpoints, so a run "
                   "killed mid-way continues from there on the next --reuse (default: stage ends only)")
    p.add_argument("--calibration", choices=("windows", "measured"), default="windows",
                   help="how calibrated seconds price each shape: windows (default, as the series recorded so far: "
                        "the runs' logging windows, 90th-percentile throughput) or measured (each shape's optimizer "
                        "step timed after the runs, the shapes interleaved; cached in --work)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings()
    if args.quick:
        s = replace(s, budget=262_144, eval_points=8)
    if args.smoke:
        s = replace(s, model="tiny", vocab_size=512, final_len=64, budget=8 * 512, tokens_per_step=512, big_factor=2,
                    eval_points=4, eval_tokens=1024, max_extensions=0, tokenizer_documents=60)
    overrides = {"budget": args.budget, "final_len": args.final_len, "holdout": args.holdout,
                 "tokens_per_step": args.tokens_per_step, "big_factor": args.big_factor,
                 "model": args.model, "d_model": args.d_model, "vocab_size": args.vocab_size,
                 "eval_points": args.eval_points,
                 "eval_tokens": args.eval_tokens, "max_extensions": args.max_extensions, "lanes": args.lanes,
                 "finalists": args.finalists, "template": args.template,
                 "checkpoint_every_tokens": args.checkpoint_every_tokens, "anchor_budget": args.anchor_budget}
    s = replace(s, **{k: v for k, v in overrides.items() if v is not None})
    if args.seeds:
        s = replace(s, seeds=tuple(int(x) for x in args.seeds.split(",")))
    for regime in ("A", "B"):
        if s.budget % s.tps(regime):
            raise SystemExit(f"curriculum_speedup: --budget {s.budget} is not a whole number of steps of "
                             f"{s.tps(regime)} tokens (regime {regime})")
    return s


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    s = settings_from(args)
    names = args.arms.split(",") if args.arms else list(QUICK_ARMS if (args.quick or args.smoke) else DEFAULT_ARMS)
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise SystemExit(f"curriculum_speedup: unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    if "baseline" not in names:
        names.insert(0, "baseline")
    arms = [ARMS[n] for n in names]
    for item in args.lr_grid:
        name, _, values = item.partition("=")
        if name not in ARMS or not values:
            raise SystemExit(f"curriculum_speedup: --lr-grid {item!r}: expected ARM=LR,LR,LR with a known arm")
        grid = tuple(sorted(float(v) for v in values.split(",")))
        arms = [replace(a, lr_grid=grid) if a.name == name else a for a in arms]
    if any(len(a.lr_grid) < 3 for a in arms):
        raise SystemExit("curriculum_speedup: every LR grid needs at least three values")
    if args.finalists is not None and args.finalists < 1:
        raise SystemExit(f"curriculum_speedup: --finalists {args.finalists}: give 1 or more LRs to run at every seed")
    problem = check_data(args.data)
    if problem:
        raise SystemExit(f"curriculum_speedup: {problem}")

    started = time.perf_counter()
    date = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    command = "python benchmarks/curriculum_speedup.py" + ("" if argv is None and len(sys.argv) < 2
                                                           else " " + " ".join(argv if argv is not None else sys.argv[1:]))
    cleanup = args.work is None
    work = Path(tempfile.mkdtemp(prefix="curriculum_speedup-")) if args.work is None else args.work
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    log = print
    try:
        tokenizer = train_tokenizer(s, args.data, work)
        log(f"curriculum_speedup: {s.model} model{f' at width {s.d_model}' if s.d_model else ''}, BPE {s.vocab_size}, {s.budget:,} tokens per run, "
            f"{s.tokens_per_step:,} tokens/step (regime B ×{s.big_factor}), eval every "
            f"{s.budget // s.eval_points:,} tokens at length {s.final_len} on {s.eval_tokens:,} valid.jsonl tokens, "
            f"seeds {list(s.seeds)}; {args.jobs} run(s) at a time, {args.threads} torch thread(s) each; "
            f"load average {load_start[0]:.1f}")
        if any(a.name in LR_FIND_ARMS for a in arms):
            s = find_lrs(s, args.data, tokenizer, work, args.threads, log)
        for arm in arms:
            log(f"  arm {arm.name} (regime {arm.regime}, {s.tps(arm.regime):,} tokens/step, grid "
                f"{', '.join(f'{x:g}' for x in arm.lr_grid)}): {arm.description}")
        tuned = execute(s, arms, args.data, tokenizer, work, jobs=args.jobs, threads=args.threads,
                        reuse=args.reuse, log=log, archive=args.archive if args.reuse else None)
        all_runs = [r for t in tuned.values() for r in t.all_runs]
        # An adaptive arm's table is the one its chosen run followed (its decisions; other seeds may differ a little).
        stages = {name: stage_plan_of_run(t.runs[0].run_dir) if ARMS[name].adaptive and t.runs
                  else stage_plan(s, ARMS[name], args.data, tokenizer) for name, t in tuned.items()}
        cal = calibrate_arms(args.calibration, [
            ArmShapes(name, to_dict(make_config(s, ARMS[name], t.best_lr or ARMS[name].lr_grid[0], s.seeds[0],
                                                args.data, tokenizer)), stages[name], t.all_runs)
            for name, t in tuned.items()], out=work, threads=args.threads, log=log)
        cal.annotate(stages)
        cost = cal.cost

        # The target: the best of the baselines run (tuned over the same schedule choices as the curricula).
        finals = {n: median_curve(tuned[n].runs)[2][-1] for n in TARGET_BASELINES if n in tuned}
        finals = {n: v for n, v in finals.items() if math.isfinite(v)}
        if not finals:
            raise SystemExit("curriculum_speedup: the baseline diverged at every LR; nothing to compare against")
        base_name = min(finals, key=finals.get)
        target = finals[base_name]
        records = {name: summarise(t, ARMS[name], target, stages[name], cost) for name, t in tuned.items()}
        base = records[base_name]
        shift = seed_shift(base["final_val_loss_seeds"])
        for rec in records.values():
            add_speedups(rec, base, cost)
            rec.update(shifted_speedups(rec, base, cost, shift))
            if rec["regime"] == "B" and "baseline-big" in records:
                add_speedups(rec, records["baseline-big"], cost, "_vs_regime_baseline")
        arms_out = [r for n, r in records.items() if n != base_name]
        projections = project(s, tokenizer, [base, *arms_out], base)
        # The best arm by the load-independent measures (calibrated seconds, then tokens); measured seconds
        # ride on whatever else the machine was doing.
        contenders = [r for r in arms_out if not ARMS[r["name"]].baseline]
        best = max(contenders, key=lambda r: (r["speedup_wallclock_calibrated"] or 0, r["speedup_tokens"] or 0,
                                              -(r["final_val_loss"] or math.inf)), default=None)
        report = {
            "benchmark": "curriculum_speedup",
            "command": command,
            "date": date,
            "machine": machine(),
            "execution": {"jobs": args.jobs, "threads_per_run": args.threads,
                          "note": "each run is a `gradus train` process (gradus.experiments.runner), `jobs` at a "
                                  "time; seconds are per run"},
            "load_average": {"start": list(load_start), "end": list(os.getloadavg()),
                             "runs_min": min(min(r.load_before, r.load_after) for r in all_runs),
                             "runs_max": max(max(r.load_before, r.load_after) for r in all_runs),
                             "runs_reused": sum(r.reused for r in all_runs)},
            "calibration": {**cal.to_json(),
                            "tokens_per_sec": {f"{L}x{tps // L}": 1 / v for (L, tps), v in cost.items()}},
            "wall_seconds_total": time.perf_counter() - started,
            "settings": asdict(s),
            "method": {
                "target": "final val loss of the tuned baseline's median curve over seeds",
                "to_target": "first crossing of the arm's median curve, linearly interpolated between the two "
                             "evaluations that bracket it (the first evaluation as is if already below)",
                "seconds": "time/train_seconds from gradus's trainer: training steps incl. data waits; evaluation "
                           "and checkpoints excluded; depends on machine load (recorded), tokens do not",
                "seconds_calibrated": "the tokens of each stage up to the target × that stage shape's seconds per "
                                      + ("token, read as the 90th-percentile throughput of the shape's logging "
                                         "windows over all runs: the wall-clock at one steady load, independent of "
                                         "when each run happened to run" if args.calibration == "windows" else
                                         "token, measured after the runs: the lower decile of time-budgeted interleaved "
                                         "rounds of its optimizer step (gradus.experiments.calibration), independent of the "
                                         "runs' history and of when each run happened to run"),
                "band": "the best arm's speedups if its median curve sat target_shift higher / lower (its first "
                        "crossing of target ± target_shift against the baseline's own cost to target), target_shift "
                        "= half the range of the baseline's final losses over seeds: a wide band means the first "
                        "crossing lies where the curve runs flat at the target's level",
                "best_arm": "highest calibrated wall-clock speedup (then tokens) among the curricula",
                "baseline": f"the best of {', '.join(n for n in TARGET_BASELINES if n in tuned)} by median final "
                            f"loss ({base_name}); the others are reported as arms",
                "tuning": "LR grid at the first seed, ×2 extension at an edge, then "
                          + ("the best LR rerun at the other seeds" if s.finalists == 1 else
                             f"the best {s.finalists} LRs rerun at the other seeds, the lowest median final loss "
                             f"chosen, and the grid extended at every seed while that winner sits at an edge"),
                "validation": ("valid.jsonl via SourceConfig.validation_split" if args.data.is_dir() else
                               f"{s.holdout:.0%} of the file's documents held out by hash (data.validation.fraction)")
                              + ", the same windows each time",
            },
            "target": target,
            "final_len": s.final_len,
            "seeds": list(s.seeds),
            "data": str(args.data),
            "tokens_per_parameter": projections["tokens_per_parameter"],
            "cost_model": projections["cost_model"],
            "baseline": base,
            "arms": arms_out,
            "best_arm": best["name"] if best else None,
            # best_speedup_wallclock is the calibrated one (load-independent); the measured one has its own key.
            "best_speedup_wallclock": (round(best["speedup_wallclock_calibrated"], 3)
                                       if best and best["speedup_wallclock_calibrated"] else None),
            "best_speedup_wallclock_measured": (round(best["speedup_wallclock"], 3)
                                                if best and best["speedup_wallclock"] else None),
            "best_speedup_tokens": round(best["speedup_tokens"], 3) if best and best["speedup_tokens"] else None,
            "best_speedup_wallclock_calibrated": (round(best["speedup_wallclock_calibrated"], 3)
                                                  if best and best["speedup_wallclock_calibrated"] else None),
            "target_shift": shift,
            "best_speedup_wallclock_band": best["speedup_wallclock_calibrated_band"] if best else None,
            "best_speedup_tokens_band": best["speedup_tokens_band"] if best else None,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        stem = "curriculum_speedup" + (f"_{args.tag}" if args.tag else "")
        json_path = write_result(args.out / f"{stem}.json", report)
        print()
        print(table(report))
        print(f"wrote {json_path}")
        if not args.no_plot:
            save_plot(lambda path: plot(report, path), args.out / f"{stem}.png")
        print(f"total {report['wall_seconds_total']:.0f}s wall; load average {load_start[0]:.1f} at start, "
              f"{os.getloadavg()[0]:.1f} at end")
    finally:
        if cleanup:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    run_resumable(main, "curriculum_speedup")
