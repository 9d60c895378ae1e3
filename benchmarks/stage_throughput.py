#!/usr/bin/env python
"""Training throughput at every stage's shape, through gradus's own trainer and through a plain loop.

For a model and a curriculum (a preset or a config file, with ``--set`` overrides) this measures, at
each stage's shape (seq_len × batch): tokens/s, step time, peak memory, MFU against a peak FLOP/s of the
device, and the seconds lost at the stage's start (its first steps against its steady state, a
torch.compile recompile included; ``compile/unique_graphs`` says whether one happened).

Two arms in one process, paired step by step so that the machine's load weighs on both alike:

* **framework**: the real code path. :class:`gradus.train.trainer.Trainer` (``setup()`` then ``fit()``)
  runs the config with every stage cut to ``--steps-per-stage`` steps (shapes, LRs, clips and mixes as
  the config's curriculum resolves them), evaluation off (``eval_every`` past the run, none at stage
  changes) and ``log_every=1``. The trainer's public ``on_step`` hook reports every step
  (:class:`gradus.train.metrics.StepReport`) and each report is timestamped, so a step's *wall* time
  covers the whole loop (data, step, guard, schedule, metrics); its own clock (``StepReport.seconds``, the
  *trainer clock*: data wait + train step) and ``data/wait_seconds`` give the breakdown. The checkpoint
  the trainer always writes at a stage end and any evaluation (``StepReport.aside_seconds``), and the
  benchmark's own work, are subtracted: training time only.
* **plain**: a plain PyTorch loop: the same :class:`GPT` shape and seed and the same AdamW (both built by
  :func:`gradus.train.build.build_training_parts`, as the trainer builds them), the stage's clip, the same micro-batches, autocast and torch.compile, fed from
  random token batches built on the device before any clock starts. No tokenizer, no data thread, no
  logging, no ``.item()``: the ceiling the framework is measured against.

Pairing: inside the trainer's ``on_step`` hook, each trainer step is paired with one plain step of the
same stage, run just before it (even repeats) or just after it (odd repeats). ``ratio`` = the plain
arm's summed steady step time ÷ the framework's over the same pairs (= framework ÷ plain tokens/s), then
the median over repeats; target ≥ 0.95 (``ratio_pair_median``: the median of the per-pair ratios). The
trainer tokenises real text in a background thread and the plain loop does not: that difference *is*
framework overhead, and the ratio shows it (``data_thread_cpu_per_step_s`` says how much CPU that thread
used during the trainer's steps).

Steady state: the steps of a stage after its first ``transition_steps`` (``max(1, min(3, N // 4))``);
step time is their mean (a cost paid every k-th step is overhead too). ``transition_seconds`` = those
first steps' time minus as many steady steps (stage 0: the cold start, data pipeline start-up included).
Figures are medians over ``--repeats`` with the spread (min, max).

Peak FLOP/s: on CPU a measured matmul rate (:func:`gradus.train.runtime.measure_matmul_flops` in fp32,
the same measurement in bf16 for bf16) at the benchmark's thread count, before and after the arms, the
higher kept; on GPU the data-sheet table (:data:`gradus.plan.hardware.GPUS`) or ``--peak
measured``. The trainer is given the same figure (``logging.peak_flops``), so its logged ``mfu`` agrees.

Peak memory: on CUDA each arm's own allocator peak during the stage (the other arm's resident weights and
optimizer state subtracted); on CPU the process's resident memory sampled every 10 ms during the stage,
with both arms resident: one process-wide figure, an upper bound.

torch.compile: the trainer compiles its module (on CUDA every stage's graph at ``setup()``, by its
micro-batch probe; on CPU at each stage's first step); the plain arm compiles a function of its own, so
the two never share dynamo's cache. One tiny compile runs first, so once-per-process costs land on
neither arm; inductor's on-disk caches stay on unless ``--cold-compile``.

Examples::

    python benchmarks/stage_throughput.py --quick
    python benchmarks/stage_throughput.py --preset demo --model-preset small --steps-per-stage 12 --repeats 3 \
        --threads 1
    python benchmarks/stage_throughput.py --preset aggressive --model-preset 124M --data local --device cuda \
        --precision bf16 --compile on --steps-per-stage 20 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, git_revision, machine_info, write_result  # noqa: E402 (benchmarks is not a package)

from gradus.experiments.throughput import (  # noqa: E402
    benchmark_config,
    measure_peak,
    prepare_compile,
    resolve_peak,
    run_repeat,
)
from gradus.experiments.throughput_table import (  # noqa: E402
    RATIO_TARGET,
    combine,
    format_table,
    spread,
    summarize_repeat,
    transition_steps,
)

DEFAULT_OUT = RESULTS / "stage_throughput.json"
QUICK_OUT = RESULTS / "stage_throughput_quick.json"
SHARED_DATA = Path(os.environ.get("GRADUS_SHARED_DATA", REPO.parent / "shared" / "data"))
MODEL_PRESETS = ("tiny", "small", "124M", "270M", "1B")
SHAPE_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_hidden")


# ============================================================================================ arguments
def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="stage_throughput.py",
        description="Tokens/s, step time, memory, MFU and transition cost per curriculum stage: gradus's "
        "trainer against a plain PyTorch loop of the same model and shapes.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="a shipped curriculum preset (default: demo)")
    src.add_argument("--config", metavar="FILE", help="a YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (applied before the benchmark's own settings)")
    p.add_argument("--model-preset", choices=MODEL_PRESETS,
                   help="replace the config's model shape by a size preset (default: the config's)")
    p.add_argument("--data", choices=("config", "local"), default="config",
                   help="config: the config's sources and tokenizer; local: WikiText-2 and the GPT-2 tokenizer "
                   f"from {SHARED_DATA} (for presets that stream from the Hub, on an offline machine)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--compile", choices=("on", "off"), help="torch.compile (default: on for cuda, off for cpu)")
    p.add_argument("--steps-per-stage", type=int, metavar="N", help="steps run at each stage (default 20; --quick 4)")
    p.add_argument("--repeats", type=int, metavar="R", help="framework/plain pairs (default 3; --quick 1)")
    p.add_argument("--stages", metavar="LIST",
                   help="measure only these stages of the config's curriculum, e.g. 0,2,-1 (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="a few seconds: tiny model (unless --model-preset), first and last stage (unless --stages), "
                   "4 steps, 1 repeat")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch intra-op threads for both arms (default: torch's own, one per core); on a shared "
                   "CPU box 1 is far steadier: two OpenMP threads stall whenever another process holds a core")
    p.add_argument("--peak", default="auto", metavar="auto|measured|FLOPS",
                   help="peak FLOP/s for MFU: auto (CPU measured, GPU table), measured, or a number")
    p.add_argument("--cold-compile", action="store_true",
                   help="with --compile on: switch off inductor's on-disk FX-graph and AOTAutograd caches, so every "
                   "compile in either arm is a cold one (otherwise the arm compiling second may hit the cache the "
                   "first one filled, and repeats after the first hit it too)")
    p.add_argument("--tensorboard", action="store_true",
                   help="let the trainer also write TensorBoard events (off by default: at log_every=1 they "
                   "would cost 10× what the default cadence of 10 costs)")
    p.add_argument("--out", metavar="FILE.json",
                   help=f"JSON result (default {DEFAULT_OUT.relative_to(REPO)}; --quick: {QUICK_OUT.name})")
    args = p.parse_args(argv)
    if args.steps_per_stage is None:
        args.steps_per_stage = 4 if args.quick else 20
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.steps_per_stage < 2:
        p.error("--steps-per-stage must be at least 2 (one transition step and one steady step)")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.quick and args.model_preset is None:
        args.model_preset = "tiny"
    if args.stages is not None:
        try:
            args.stages = [int(x) for x in args.stages.split(",") if x.strip()]
        except ValueError:
            p.error(f"--stages {args.stages!r}: give stage indices separated by commas, e.g. 0,2,-1")
        if not args.stages:
            p.error("--stages: give at least one stage index")
    elif args.quick:
        args.stages = [0, -1]
    return args


# ============================================================================================ config
def load_raw_config(args: argparse.Namespace) -> tuple[dict, str]:
    """The user's config as plain data with ``--set`` applied, and where it came from."""
    from gradus.config import apply_overrides, read_yaml
    from gradus.presets import preset_path

    if args.config:
        data, origin = read_yaml(args.config), args.config
    else:
        name = args.preset or "demo"
        data, origin = read_yaml(preset_path(name)), f"preset {name}"
    return apply_overrides(data, args.overrides), origin


def apply_run_choices(data: dict, args: argparse.Namespace, device: str, precision: str, compile_on: bool) -> dict:
    """Model preset, data source, device, precision and compile: the choices that define what is measured."""
    data = copy.deepcopy(data)
    if args.model_preset:
        model = data.setdefault("model", {})
        for key in SHAPE_FIELDS:  # the preset must win over shape fields the config spells out
            model.pop(key, None)
        model["preset"] = args.model_preset
    if args.data == "local":
        data.setdefault("data", {})
        data["data"]["sources"] = [{"name": "wiki", "path": str(SHARED_DATA / "wikitext-2" / "train.jsonl")}]
        data["data"]["tokenizer"] = {"name_or_path": str(SHARED_DATA / "gpt2-tokenizer")}
        for st in data.get("curriculum", {}).get("stages", []):
            st.pop("mix", None)  # the config's source names are gone
    train = data.setdefault("train", {})
    train.update({"device": device, "precision": precision, "compile": "on" if compile_on else "off"})
    return data


# ============================================================================================ main
def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import torch

    from gradus.config import from_dict
    from gradus.data import load_tokenizer
    from gradus.errors import GradusError
    from gradus.sizes import resolve_shape
    from gradus.train.resident_memory import RssSampler

    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("stage_throughput.py: error: --device cuda but no CUDA device is visible")
    device = torch.device("cuda", 0) if device_name == "cuda" else torch.device("cpu")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    compile_on = (args.compile or ("on" if device.type == "cuda" else "off")) == "on"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)

    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    try:
        raw, origin = load_raw_config(args)
        raw = apply_run_choices(raw, args, device.type, precision, compile_on)
        peak, peak_source, peak_raw = resolve_peak(args.peak, device, precision)
        data, stages = benchmark_config(raw, origin, args.steps_per_stage, args.stages, peak, args.tensorboard)
        cfg = from_dict(data, origin)
    except GradusError as exc:
        print(f"stage_throughput.py: error: {exc}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="stage-throughput-") as tmp:
        # Load (and, for a trained BPE, train or fetch from cache) the tokenizer once, outside every clock.
        tok = load_tokenizer(cfg.data, run_dir=Path(tmp) / "tokenizer")
        shape = resolve_shape(cfg.model, tok.vocab_size)
        flops = {s.index: shape.flops_per_token(s.seq_len) for s in stages}
        print(f"stage throughput: {origin}, model {shape.describe()}; {len(stages)} stages × "
              f"{args.steps_per_stage} steps, {args.repeats} repeat(s); {device}, {precision}, "
              f"compile {'on' if compile_on else 'off'}", flush=True)

        warmup_compile_s = prepare_compile(device, args.cold_compile) if compile_on else None
        sampler = RssSampler(period=0.01, keep=True) if device.type == "cpu" else None
        per_repeat: list[dict[int, dict]] = []
        raw_runs = []
        setup: dict[str, list[float]] = {"framework": [], "plain": []}
        with sampler if sampler is not None else contextlib.nullcontext():
            for r in range(args.repeats):
                rep = run_repeat(r, cfg, shape, stages, args.steps_per_stage, Path(tmp) / f"run{r}", device,
                                 precision, compile_on)
                summary = summarize_repeat(rep, stages, args.steps_per_stage, flops, peak, sampler)
                per_repeat.append(summary)
                for arm in setup:
                    setup[arm].append(rep.setup_s[arm])
                raw_runs.append({
                    "order": rep.order,
                    "micro_batches": rep.micro,
                    "steps": {arm: {s.index: [{"wall_s": x.wall_s, "trainer_clock_s": x.inner_s,
                                               "data_wait_s": x.data_wait_s, "data_cpu_s": x.data_cpu_s,
                                               "new_graphs": x.new_graphs}
                                              for x in getattr(rep, arm)[s.index]] for s in stages}
                              for arm in ("framework", "plain")},
                })
                ratios = " ".join(f"{summary[s.index]['ratio']:.3f}" for s in stages)
                print(f"  repeat {r + 1}/{args.repeats} ({rep.order} in each pair of steps): ratio per stage "
                      f"{ratios}", flush=True)

    if (args.peak == "auto" and device.type == "cpu") or args.peak == "measured":
        # Measured again after the arms; the higher figure is the less flattering MFU denominator.
        after = measure_peak(device, precision)
        peak_raw["after"] = after
        if after > peak:
            scale = peak / after
            peak = after
            for summary in per_repeat:
                for entry in summary.values():
                    for arm in ("framework", "plain"):
                        if entry[arm].get("mfu") is not None:
                            entry[arm]["mfu"] *= scale
    table = combine(stages, per_repeat, flops)
    memory_scope = ("CUDA allocator peak of each arm's own tensors during the stage" if device.type == "cuda" else
                    "process resident memory during the stage, both arms resident (one figure, upper bound)")
    ratios = [e["ratio"] for e in table]
    result = {
        "benchmark": "stage_throughput",
        "date": date,
        "command": "python benchmarks/stage_throughput.py " + shlex.join(argv),
        "git": git_revision(),
        "machine": {**machine_info(device), "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "config": {
            "source": origin,
            "overrides": args.overrides,
            "data": args.data,
            "model_preset": args.model_preset,
            "shape": shape.to_dict(),
            "params_total": shape.params_total,
            "precision": precision,
            "compile": compile_on,
            "steps_per_stage": args.steps_per_stage,
            "transition_steps": transition_steps(args.steps_per_stage),
            "repeats": args.repeats,
            "tokenizer_vocab": tok.vocab_size,
            "tensorboard": args.tensorboard,
            "threads": torch.get_num_threads(),
            "cold_compile": args.cold_compile,
            "warmup_compile_seconds": warmup_compile_s,
        },
        "device": str(device),
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "peak_flops_measurements": peak_raw,
        "setup_seconds": {arm: spread(v) for arm, v in setup.items()},
        "stages": table,
        "summary": {
            "ratio_min": min(ratios),
            "ratio_median": statistics.median(ratios),
            "ratio_target": RATIO_TARGET,
            "meets_target": min(ratios) >= RATIO_TARGET,
        },
        "memory_scope": memory_scope,
        "notes": [
            "framework: gradus.train.trainer.Trainer (setup + fit) on the config, each stage cut to "
            "steps_per_stage steps, evaluation off, log_every=1; checkpoint (stage ends) and evaluation time "
            "subtracted; wall time per step covers the whole loop, trainer_clock what its tokens_per_sec uses",
            "plain: the same GPT shape, AdamW, clip, precision and compile over random token batches prebuilt on "
            "the device; no tokenizer, no data thread, no logging, no .item(): the framework's real-text "
            "tokenising data thread is part of the overhead the ratio shows",
            "pairing: each trainer step is paired with one plain step of the same stage, run just before it "
            "(even repeats) or just after it (odd repeats); ratio = plain ÷ framework summed steady step time "
            "(= framework ÷ plain tokens/s), then the median over repeats; ratio_pair_median = median of the "
            "per-pair ratios (ignores one-off stalls, and overhead paid every k-th step with them)",
            "steady state = steps after the first transition_steps of each stage; step time = their mean; "
            "transition_seconds = first transition_steps steps minus as many steady steps (stage 0: cold start)",
        ],
        "repeats_raw": raw_runs,
    }
    print(format_table(table, peak, peak_source, memory_scope))
    out = Path(args.out) if args.out else (QUICK_OUT if args.quick else DEFAULT_OUT)
    write_result(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
