#!/usr/bin/env python
"""The ramp curriculum against tuned baselines at 124M, final length 1024, on one GPU (issue 32 §2).

Arms (built by ``gradus compare``'s own code, :func:`gradus.experiments.compare.compare_arms`):

* ``curriculum``: the ``ramp-1024`` preset's shape, 64 → 128 → 256 → 512 → 1024 over 10/10/15/20/45% of the
  tokens at T/4, T/4, T/2, T, T tokens per step, one WSD schedule (5% warmup, 1 − sqrt cooldown to zero over the
  last 20%), with T = ``--tokens-per-step`` (default 32,768 = 32 × 1024: the preset's 524,288 would leave a
  few dozen steps in the tokens a GPU minute holds);
* ``baseline``: WSD, one stage at 1024 and T tokens per step (the compare baseline: same schedule and data);
* ``baseline-half-batch``: the same at T/2 tokens per step. The target is the lower median final loss of the
  two baselines, as ``gradus compare --half-batch-baseline`` sets it.

**Two LRs per arm** (``--lrs``, default 6e-4 and 1.2e-3). Why these: the CPU tuning at 1.85M parameters
(BENCHMARKS.md, "Final length 1024") chose 2e-3 for the ramp and 2e-3 to 4e-3 for the WSD baselines; scaled to
124M by the planner's LR ∝ N^-0.37 (:func:`gradus.plan.scaling.peak_lr_for_params`, ~100× the non-embedding
parameters) that is about 4e-4 to 7e-4, around GPT-2 124M's usual 6e-4, which is the centre here. These runs
are a few hundred steps, and short runs favoured the larger of neighbouring LRs on CPU, so the second value is
above it (2×), not below. Two values cannot put the chosen LR strictly inside its grid: the JSON says which
arm chose an edge (``lr_at_edge``), and a third LR is one ``--lrs`` away.

Each run is ``gradus train`` in its own run directory through the experiments runner
(:class:`gradus.experiments.runner.Runner`: a finished run is read back from its folder, an interrupted one
resumes from its checkpoint). Data: WikiText-2 (its ``valid.jsonl`` held out) or the Python code corpus (2% of
its files held out by hash), GPT-2 tokenizer, from ``--data`` (``.gpu/data`` on the GPU: prepare.sh copies
both); the budget is capped at 4 epochs of the training corpus (counted with the tokenizer at start-up).

**Each invocation adds runs until the grid is complete** (arms × LRs × seeds; every seed-0 run first, then
seed 1): ``--max-minutes`` is this call's time budget; a run is not started when the longest run so far (or
``--first-run-minutes`` before any) would not finish inside it, and a run still going at the budget's end is
stopped (it checkpoints, and continues on the next call while the machine is warm). Finished runs are also
written into the JSON (their record and config), so a fresh GPU machine reads them back from the file in the
tree: bring ``$OUT/compare_124M_<corpus>.json`` back into ``benchmarks/results/gpu/`` between calls.

The JSON (``benchmarks/results/gpu/compare_124M_<corpus>.json``) has, per arm: ``lr_grid`` (final validation
loss per LR and seed), the chosen ``lr`` (lowest median final loss over the seeds every run of which is in),
``tokens_to_target``, ``seconds_to_target`` (measured training seconds, evaluation excluded),
``speedup_tokens``, ``speedup_wallclock`` (measured, on this machine) and the band (``speedup_tokens_band``,
``speedup_wallclock_band``: the speedup if the curve sat half the baseline's seed spread higher / lower; none
with one seed); plus ``complete`` and ``missing`` (the runs not yet in).

``--device cpu --smoke``: the tiny model, the same shape at final length 64 (4 → 64), a 6k-token budget, 8 evaluations: a dry
run of this script for the test suite (its figures are no GPU figures).

Examples::

    python benchmarks/gpu/compare_124M.py --max-minutes 8                  # on the GPU (run.sh 124M-compare)
    python benchmarks/gpu/compare_124M.py --corpus code --max-minutes 8    # run.sh 124M-compare code
    python benchmarks/gpu/compare_124M.py --device cpu --smoke --out /tmp/compare_tiny.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import REPO, RESULTS, cuda_missing, git_revision, machine_info, read_result, write_result  # noqa: E402

GPU_RESULTS = RESULTS / "gpu"
PRESET_T = 524_288
"""The ramp-1024 preset's T (tokens per step of its final stages)."""
MAX_EPOCHS = 4
CORPORA = ("wikitext", "code")
ARMS = ("baseline", "baseline-half-batch", "curriculum")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="compare_124M.py", description="the ramp curriculum against tuned WSD "
                                "baselines (full and half batch) at 124M, final length 1024, two LRs per arm")
    p.add_argument("--corpus", choices=CORPORA, default="wikitext")
    p.add_argument("--lrs", default=None, help="LRs every arm runs (default 6e-4,1.2e-3; --smoke 3e-3,6e-3)")
    p.add_argument("--seeds", default="0,1", help="seeds, run in this order (default 0,1)")
    p.add_argument("--budget", type=int, help="training tokens per run (default 8,388,608; --smoke 6,144); "
                   f"capped at {MAX_EPOCHS} epochs of the corpus")
    p.add_argument("--tokens-per-step", type=int, help="T: the final stages' tokens per step (default 32,768; "
                   "--smoke 512)")
    p.add_argument("--max-minutes", type=float, default=8.0, help="this call's time budget (default 8)")
    p.add_argument("--first-run-minutes", type=float, help="a run's expected minutes before any has finished "
                   "(default 2.5 on cuda, 1 on cpu)")
    p.add_argument("--max-runs", type=int, help="train at most this many runs in this call (tests)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--compile", choices=("on", "off"), help="torch.compile (default: on for cuda)")
    p.add_argument("--smoke", action="store_true", help="a dry run: tiny model, final length 64 (with --device cpu)")
    p.add_argument("--data", type=Path, help="folder with wikitext-2/, python-code-networkx/ and gpt2-tokenizer/ "
                   "(default: $GRADUS_SHARED_DATA, else ../shared/data)")
    p.add_argument("--work", type=Path, help="run directories (default .gpu-runs/compare_124M_<corpus>; git "
                   "ignores it, and a warm GPU machine keeps it between calls)")
    p.add_argument("--out", type=Path, help="result file (default benchmarks/results/gpu/compare_124M_<corpus>.json)")
    args = p.parse_args(argv)
    args.model = "tiny" if args.smoke else "124M"
    args.final_len = 64 if args.smoke else 1024
    args.lrs = [float(x) for x in (args.lrs or ("3e-3,6e-3" if args.smoke else "6e-4,1.2e-3")).split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    if len(set(args.lrs)) != len(args.lrs) or len(set(args.seeds)) != len(args.seeds):
        p.error("--lrs and --seeds take distinct values")
    args.budget = args.budget or (6_144 if args.smoke else 8_388_608)
    args.tokens_per_step = args.tokens_per_step or (512 if args.smoke else 32_768)
    args.compile = args.compile or ("on" if args.device == "cuda" else "off")
    args.first_run_minutes = args.first_run_minutes or (2.5 if args.device == "cuda" else 1.0)
    args.data = args.data or Path(os.environ.get("GRADUS_SHARED_DATA", REPO.parent / "shared" / "data"))
    args.work = args.work or REPO / ".gpu-runs" / f"compare_124M_{args.corpus}"
    args.out = args.out or GPU_RESULTS / f"compare_124M_{args.corpus}.json"
    return args


def _path(p: Path) -> str:
    """A data path as the configs hold it: relative to the working directory when inside it, so a run's config
    (what identifies a finished run) is the same on every machine the tree is copied to."""
    p = p.resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def data_config(args: argparse.Namespace) -> tuple[dict, Path]:
    """The ``data`` block and the training file for the corpus."""
    tok = {"name_or_path": _path(args.data / "gpt2-tokenizer")}
    if args.corpus == "wikitext":
        train = args.data / "wikitext-2" / "train.jsonl"
        source = {"name": "wiki", "path": _path(train), "validation_split": _path(args.data / "wikitext-2" /
                                                                                  "valid.jsonl")}
        validation = {"fraction": 0.0, "tokens": 65_536 if not args.smoke else 512, "max_documents": 1000}
    else:
        train = args.data / "python-code-networkx" / "networkx_py.jsonl"
        source = {"name": "code", "path": _path(train)}
        validation = {"fraction": 0.02, "tokens": 65_536 if not args.smoke else 512, "max_documents": 1000}
    return {"sources": [source], "tokenizer": tok, "validation": validation}, train


def base_config(args: argparse.Namespace) -> dict:
    """The curriculum: the ramp-1024 preset's stages (lengths ÷ 1024/final length, tokens per step × T/524,288),
    schedule and clip, on the local corpus and the GPT-2 tokenizer; evaluation at the final length."""
    import yaml

    from gradus.presets import preset_path

    preset = yaml.safe_load(preset_path("ramp-1024").read_text(encoding="utf-8"))
    div, scale = 1024 // args.final_len, args.tokens_per_step / PRESET_T
    stages = [{"name": f"s{st['seq_len'] // div}", "seq_len": st["seq_len"] // div,
               "tokens_per_batch": int(st["tokens_per_batch"] * scale), "tokens": st["tokens"]}
              for st in preset["curriculum"]["stages"]]
    cur = {k: preset["curriculum"][k] for k in ("schedule", "global_warmup_fraction", "cooldown_fraction",
                                                "cooldown_shape", "decay_to", "grad_clip", "batch_ramp")}
    data, _ = data_config(args)
    return {
        "name": f"gpu-compare-{args.model}-{args.final_len}-{args.corpus}",
        "model": {"preset": args.model, "max_seq_len": args.final_len},
        "data": data,
        "curriculum": {**cur, "target_tokens": sum(st["tokens"] for st in stages), "stages": stages},
        "optim": {"base_lr": args.lrs[0]},
        "train": {"device": args.device, "precision": "bf16" if args.device == "cuda" else "fp32",
                  "compile": args.compile, "checkpoint_every": None, "save_best": False,
                  "early_stopping_patience": None, "seed": args.seeds[0]},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def corpus_tokens(cfg, train: Path) -> int:
    """Tokens of the training file (every document + its end-of-text token), with the run's tokenizer."""
    from gradus.data import load_tokenizer

    tok = load_tokenizer(cfg.data)
    texts = [json.loads(line)["text"] for line in train.read_text(encoding="utf-8").splitlines() if line.strip()]
    total = 0
    for i in range(0, len(texts), 512):
        total += sum(len(ids) + 1 for ids in tok.encode_batch(texts[i:i + 512]))
    return total


class Deadline(BaseException):
    """This call's time budget ran out while a run was going (the runner stops it so that it checkpoints)."""


def restore_runs(report: dict, tasks: list) -> int:
    """Write the finished runs the result file carries into their run directories (``result.json`` and
    ``arm.yaml``) where the folder lacks them, so the runner reads them back as finished: a fresh machine, or
    a rerun here, continues from the file. Only a run of identical config text is restored."""
    from gradus.experiments.runner import RESULT

    saved = {(r["arm"], r["lr"], r["seed"]): r for r in report.get("runs", [])}
    n = 0
    for task in tasks:
        r = saved.get((task.arm, task.lr, task.seed))
        if r is None or r["config"] != task.config_text or (task.run_dir / RESULT).is_file():
            continue
        task.run_dir.mkdir(parents=True, exist_ok=True)
        (task.run_dir / "arm.yaml").write_text(task.config_text, encoding="utf-8")
        (task.run_dir / RESULT).write_text(json.dumps({"record": r["record"], "config": r["config"]}),
                                           encoding="utf-8")
        n += 1
    return n


def wallclock_band(rec: dict, ref: dict, shift: float) -> list[float | None] | None:
    """The measured wall-clock speedup if ``rec``'s curve sat ``shift`` higher / lower (as the tokens band of
    :func:`gradus.experiments.analysis.shifted_speedups`, on measured seconds)."""
    from gradus.experiments.analysis import clean, curve_to_target

    target = clean(ref["curve"]["val_loss"])[-1]
    if not shift or not math.isfinite(target):
        return None
    _, f_sec = curve_to_target(ref["curve"], target)
    if not f_sec:
        return None
    out = []
    for level in (target - shift, target + shift):
        _, sec = curve_to_target(rec["curve"], level)
        out.append(f_sec / sec if sec else None)
    return out


def summarise(args: argparse.Namespace, prepared, records: dict) -> dict:
    """Per arm the LR grid, the chosen LR and, over the seeds whose every run is in, tokens and measured seconds
    to the target, the speedups and their bands; the target and the verdict."""
    from gradus.experiments.analysis import (
        add_speedups,
        compare_seeds,
        finite,
        seed_shift,
        shifted_speedups,
        summarise_runs,
        verdict,
    )
    from gradus.experiments.common import stage_plan

    names = [a.name for a in prepared.arms]
    grid = {n: {f"{lr:g}": [finite(records[(n, lr, s)].final_val_loss) if (n, lr, s) in records else None
                            for s in args.seeds] for lr in args.lrs} for n in names}
    done_seeds = [s for s in args.seeds if all((n, lr, s) in records for n in names for lr in args.lrs)]
    out: dict = {"lr_grid_seeds": args.seeds, "seeds_complete": done_seeds,
                 "arms": {n: {"name": n, "lr_grid": grid[n]} for n in names}}
    if not done_seeds:
        out["note"] = "no seed has every run in yet: no LR chosen, no speedup"
        return out

    def median_final(n: str, lr: float) -> float:
        losses = [records[(n, lr, s)].final_val_loss for s in done_seeds]
        return statistics.median(losses) if all(math.isfinite(x) for x in losses) else math.inf

    chosen = {n: min(args.lrs, key=lambda lr, n=n: median_final(n, lr)) for n in names}
    runs = {n: [records[(n, chosen[n], s)] for s in done_seeds] for n in names}
    baselines = [n for n in names if n != "curriculum"]
    best = min(baselines, key=lambda n: median_final(n, chosen[n]))
    target = median_final(best, chosen[best])
    if not math.isfinite(target):
        out["note"] = "every baseline diverged at every LR: no target"
        return out
    stages = {n: stage_plan(prepared.configs[n]) for n in names}
    recs = {}
    for n in names:
        rec = summarise_runs(n, runs[n], target, stages[n], {})
        rec["description"] = next(a.description for a in prepared.arms if a.name == n)
        rec["lr"] = chosen[n]
        rec["lr_at_edge"] = chosen[n] in (min(args.lrs), max(args.lrs))
        rec["lr_grid"] = grid[n]
        recs[n] = rec
    shift = seed_shift(recs[best]["final_val_loss_seeds"])
    for rec in recs.values():
        add_speedups(rec, recs[best], {})
        rec.update(shifted_speedups(rec, recs[best], {}, shift))
        rec["speedup_wallclock_band"] = wallclock_band(rec, recs[best], shift)
        for key in ("speedup_wallclock_calibrated", "speedup_wallclock_calibrated_band",
                    "seconds_to_target_calibrated", "train_seconds_calibrated"):
            rec.pop(key, None)  # no calibration here: the wall-clock is measured on this machine
    per_seed = compare_seeds(runs[best], runs["curriculum"], stages[best], stages["curriculum"], {})
    out.update({"arms": recs, "target": target, "target_from": f"{best}'s final loss at its LR {chosen[best]:g}, "
                f"median of {len(done_seeds)} seed(s); the lower of the two baselines",
                "target_baseline": best, "verdict": verdict(per_seed),
                "band_method": "the speedup if the arm's curve sat half the target baseline's seed spread of final "
                               "loss higher / lower (none with one seed)"})
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the runs the grid lacks inside the time budget, then write the summary."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    import torch

    if cuda_missing("compare_124M.py", args.device):
        return 2
    from gradus.config import from_dict
    from gradus.errors import GradusError
    from gradus.experiments.common import describe_run, machine, prepare, prepare_tokenizers, tasks_for
    from gradus.experiments.compare import compare_arms
    from gradus.experiments.runner import RESULT, Runner, finished_record

    previous = read_result(args.out, "compare_124M.py") if args.out.is_file() else {}
    base = base_config(args)
    _, train_file = data_config(args)
    try:
        cfg = from_dict(base, "compare_124M")
        settings = {"model": args.model, "corpus": args.corpus, "final_len": args.final_len, "lrs": args.lrs,
                    "seeds": args.seeds, "tokens_per_step": args.tokens_per_step, "device": args.device,
                    "compile": args.compile, "budget_requested": args.budget}
        tokens = previous.get("corpus_tokens") if previous.get("settings", {}).get("corpus") == args.corpus \
            and previous.get("settings", {}).get("model") == args.model else None
        tokens = tokens or corpus_tokens(cfg, train_file)
        budget = min(args.budget, MAX_EPOCHS * tokens)
        _, arms = compare_arms(cfg, "auto", True, "compare_124M")
        prepared = prepare(base, arms, budget, args.seeds, "compare_124M", 8 if args.smoke else 16)
        prepare_tokenizers(prepared, print)
    except GradusError as exc:
        print(f"compare_124M.py: error: {exc}", file=sys.stderr)
        return 2
    tasks = [t for s in args.seeds for lr in args.lrs for a in ARMS
             for t in tasks_for(prepared, args.work, a, lr) if t.seed == s]
    restored = restore_runs(previous, tasks)
    if restored:
        print(f"{restored} finished run(s) restored from {args.out}", flush=True)
    report = {"benchmark": "compare_124M", "command": "python benchmarks/gpu/compare_124M.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "git": git_revision(),
        "machine": {**machine_info(torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")),
                    "summary": machine()["summary"]},
        "settings": settings, "corpus_tokens": tokens, "budget": prepared.budget,
        "epochs": prepared.budget / tokens, "smoke": args.smoke,
        "arms_config": {a.name: a.description for a in prepared.arms}}
    records: dict = {}
    saved_runs: dict = {(r["arm"], r["lr"], r["seed"]): r for r in previous.get("runs", [])}
    runner = Runner(jobs=1, threads=1, log=print, folder=args.work)
    trained, stopped, failed = 0, None, []
    budget_s = args.max_minutes * 60

    def on_alarm(signum, frame):
        raise Deadline

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    try:
        for task in tasks:
            if finished_record(task) is None:
                need = max((r.wall_seconds for r in records.values()), default=0.0) or args.first_run_minutes * 60
                left = budget_s - (time.monotonic() - started)
                if args.max_runs is not None and trained >= args.max_runs:
                    stopped = f"--max-runs {args.max_runs} reached"
                    break
                if need > left:
                    stopped = (f"time budget: {left / 60:.1f} of {args.max_minutes:g} minutes left, a run takes "
                               f"about {need / 60:.1f}")
                    break
                signal.alarm(max(1, int(left)))
                trained += 1
            try:
                (record,) = runner.run([task], on_done=lambda r: (print(describe_run(r), flush=True), [])[1])
            finally:
                signal.alarm(0)
            key = (task.arm, task.lr, task.seed)
            saved = task.run_dir / RESULT
            if not saved.is_file() and str(record.diverged).startswith("gradus train exited 3"):
                # Diverged (the guard gave up): a result of this LR, kept like a finished run, not retried.
                saved.write_text(json.dumps({"record": record.to_json(), "config": task.config_text}),
                                 encoding="utf-8")
            if not saved.is_file():
                failed.append(f"{task.arm} lr {task.lr:g} seed {task.seed}: {record.diverged}")
                print(f"  failed: {failed[-1]}", flush=True)
                continue
            records[key] = record
            saved_runs[key] = {"arm": task.arm, "lr": task.lr, "seed": task.seed,
                               **json.loads(saved.read_text(encoding="utf-8"))}
            report["runs"] = list(saved_runs.values())
            write_result(args.out, report)  # after each run: a killed call keeps what it finished
    except Deadline:
        stopped = f"time budget: {args.max_minutes:g} minutes ran out during a run (stopped with a checkpoint; it " \
                  "continues on the next call while this machine's run directories are kept)"
    except GradusError as exc:
        print(f"compare_124M.py: error: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGALRM, old_handler)
    missing = [f"{t.arm} lr {t.lr:g} seed {t.seed}" for t in tasks if (t.arm, t.lr, t.seed) not in records]
    report.update({"runs": list(saved_runs.values()), "complete": not missing, "missing": missing,
                   "stopped": stopped, "failed": failed, "trained_this_call": trained})
    report.update(summarise(args, prepared, records))
    write_result(args.out, report)
    if stopped:
        print(f"stopped: {stopped}")
    print(f"{len(records)} of {len(tasks)} runs in" + ("" if missing else " (complete)"))
    for n, rec in report["arms"].items():
        if "speedup_tokens" in rec:
            sp = rec["speedup_tokens"], rec["speedup_wallclock"]
            print(f"  {n:<20} lr {rec['lr']:g}: final {rec['final_val_loss']}, ×{sp[0] or 0:.2f} tokens, "
                  f"×{sp[1] or 0:.2f} wall-clock")
    if "verdict" in report:
        print(f"verdict: {report['verdict']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
