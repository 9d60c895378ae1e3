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
higher kept; on GPU the data-sheet table (:data:`gradus.train.runtime.GPU_PEAK_BF16`) or ``--peak
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
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradus.train.measure import RssSampler

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_OUT = RESULTS / "stage_throughput.json"
QUICK_OUT = RESULTS / "stage_throughput_quick.json"
SHARED_DATA = Path(os.environ.get("GRADUS_SHARED_DATA", REPO.parent / "shared" / "data"))
MODEL_PRESETS = ("tiny", "small", "124M", "270M", "1B")
SHAPE_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_hidden")
RATIO_TARGET = 0.95


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


@dataclass(frozen=True)
class StageShape:
    """One measured stage, as resolved by the curriculum from the user's config."""

    index: int  # in the benchmark's curriculum
    source_index: int  # in the user's curriculum
    name: str
    seq_len: int
    batch: int
    tokens_per_step: int
    grad_clip: float
    peak_lr: float


def benchmark_config(data: dict, origin: str, steps: int, select: list[int] | None, peak: float | None,
                     tensorboard: bool) -> tuple[dict, list[StageShape]]:
    """The user's config with every stage cut to ``steps`` steps (stage shapes, LRs, clips and mixes kept
    as the user's curriculum resolves them), evaluation off, checkpoints only where the trainer always
    writes them (stage ends), and a metrics record every step."""
    from gradus.config import from_dict
    from gradus.curriculum import resolve_schedule
    from gradus.errors import ConfigError

    plan = resolve_schedule(from_dict(data, origin))  # the user's curriculum: errors name the user's fields
    n = len(plan.stages)
    keep = list(range(n))
    if select is not None:
        bad = [i for i in select if not -n <= i < n]
        if bad:
            raise ConfigError(f"--stages {bad[0]}: the curriculum has {n} stages (0 to {n - 1}, or -1 for the last)")
        keep = sorted({i % n for i in select})
    raw_stages = data["curriculum"]["stages"]
    stages, shapes = [], []
    for j, i in enumerate(keep):
        s = plan.stages[i]
        st = {k: v for k, v in raw_stages[i].items()
              if k not in ("step", "tokens", "tokens_per_batch", "batch_size", "batch_multiple", "mix")}
        # Resolved values, so dropping stages (--stages) or budgets changes no stage's shape or mix.
        st.update({"step": j * steps, "batch_size": s.batch_size, "mix": dict(s.mix), "name": s.name})
        stages.append(st)
        shapes.append(StageShape(j, i, s.name, s.seq_len, s.batch_size, s.tokens_per_step, s.grad_clip, s.peak_lr))
    out = copy.deepcopy(data)
    out["curriculum"]["stages"] = stages
    out["curriculum"]["target_tokens"] = None
    train = out.setdefault("train", {})
    train.update({
        "max_steps": steps * len(stages),
        "eval_every": 10**9,  # past the run: no evaluation (training time only)
        "eval_at_stage_change": False,
        "checkpoint_every": None,  # the trainer still saves at stage ends; that time is subtracted
        "checkpoint_every_tokens": None,
        "early_stopping_patience": None,
        "keep_last": 1,
    })
    out["logging"] = {**out.get("logging", {}), "log_every": 1, "tensorboard": tensorboard, "progress_bar": False,
                      "peak_flops": peak}
    return out, shapes


# ============================================================================================ peak FLOP/s
def measure_peak(device, precision: str) -> float:
    """Best-of-8 square-matmul FLOP/s on ``device`` in the training precision: fp32 through gradus's own
    :func:`measure_matmul_flops`, bf16 the same way in bf16 (n = 1024 on CPU, 8192 on a GPU)."""
    import torch

    from gradus.train.runtime import measure_matmul_flops

    n = 8192 if device.type == "cuda" else 1024
    if precision == "fp32":
        return measure_matmul_flops(device, n=n)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(8):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        (a @ b).float().sum().item()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def resolve_peak(spec: str, device, precision: str) -> tuple[float, str, dict]:
    """(peak FLOP/s, its source, raw measurements). ``spec``: auto | measured | a number."""
    from gradus.train.runtime import peak_flops

    if spec not in ("auto", "measured"):
        try:
            return float(spec), "--peak", {}
        except ValueError:
            raise SystemExit(f"stage_throughput.py: error: --peak {spec!r}: give auto, measured or a number") from None
    if spec == "auto" and device.type == "cuda":
        value, source = peak_flops(device, None, precision)
        if not source.startswith("measured"):
            return value, source, {}
    value = measure_peak(device, precision)
    return value, f"measured {precision} matmul (best of before/after the arms)", {"before": value}


@dataclass
class StepRecord:
    """One training step of either arm."""

    wall_s: float  # the step's time (framework: the whole loop iteration, other work subtracted)
    inner_s: float | None = None  # framework: the trainer's own clock (data wait + train step)
    data_wait_s: float | None = None  # framework: time blocked in DataPipeline.next_batch
    data_cpu_s: float | None = None  # CPU time the data thread used while this step ran
    new_graphs: int | None = None  # compile/unique_graphs added by this step
    start: float = 0.0  # perf_counter when the step began
    end: float = 0.0  # perf_counter when the step ended
    cuda_peak: int | None = None  # this arm's own peak allocated bytes during the step (CUDA)


def _cuda_sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compile_graphs() -> int:
    from gradus.train.metrics import compiled_graphs

    return compiled_graphs()


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def data_thread_cpu() -> float | None:
    """CPU seconds used so far by the data pipeline's producer thread ("gradus-data"; 10 ms resolution),
    None when there is none (not started yet, or tokenising in worker processes)."""
    for th in threading.enumerate():
        if th.name == "gradus-data" and th.native_id is not None:
            try:
                fields = Path(f"/proc/self/task/{th.native_id}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
            except (OSError, IndexError, ValueError):
                return None
    return None


def _cpu_delta(before: float | None, after: float | None) -> float | None:
    """CPU seconds between two :func:`data_thread_cpu` readings (a thread started in between: all of it)."""
    return None if after is None else after - (before or 0.0)


def prepare_compile(device, cold: bool) -> float:
    """Before any arm: optionally switch inductor's on-disk caches off (``--cold-compile``), then compile
    one tiny forward + backward, so the once-per-process costs of torch.compile (imports, compile workers)
    land on neither arm. Returns the seconds that took."""
    import torch
    import torch._dynamo

    if cold:
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = False
        functorch_config.enable_autograd_cache = False
    t0 = time.perf_counter()
    layer = torch.nn.Linear(16, 16).to(device)
    torch.compile(lambda x: layer(x).square().mean(), dynamic=False)(torch.randn(8, 16, device=device)).backward()
    _cuda_sync(device)
    torch._dynamo.reset()
    return time.perf_counter() - t0


def _fresh(device) -> None:
    """Free what the previous repeat left and forget its compiled graphs, so each repeat starts alike."""
    import torch
    import torch._dynamo

    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ============================================================================================ plain arm
class PlainLoop:
    """A plain PyTorch loop over the same stage shapes: the same GPT shape and initialisation seed, AdamW
    with the same parameter groups and settings, the stage's clip, autocast and torch.compile as the
    trainer uses them, and random token batches built on the device before any clock starts. One step at
    a time (:meth:`step`), so the benchmark can pair each of its steps with one of the trainer's."""

    def __init__(self, cfg, shape, stages: list[StageShape], micro: dict[int, int], steps: int, device,
                 precision: str, compile_on: bool):
        import torch

        from gradus.train.build import build_training_parts

        t0 = time.perf_counter()
        self.device, self.micro, self.stages = device, micro, stages
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        # The trainer's own builder: the same initial weights and the same AdamW (fp32/bf16: no scaler).
        parts = build_training_parts(shape, cfg.optim, device, precision, cfg.train.seed)
        self.model, self.optimizer = parts.model, parts.optimizer
        self.model.train()
        model = self.model
        self.forward = model
        if compile_on:
            from torch import _dynamo

            _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
            # Compiled through a function of its own, not the module: dynamo keys its cache by code object
            # and inlines nn.Modules, so compiling the module would share graphs with the trainer's model
            # (same class, same shapes) and the compile cost would land on whichever arm ran first.
            self.forward = torch.compile(lambda x, y: model(x, y), dynamic=False)
        gen = torch.Generator().manual_seed(cfg.train.seed)
        self.batches: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for s in stages:
            self.batches[s.index] = []
            for _ in range(min(steps, 4)):
                tokens = torch.randint(0, shape.vocab_size, (s.batch, s.seq_len + 1), generator=gen)
                # Contiguous inputs and labels (the shifted tokens), as the data pipeline's arrays are.
                self.batches[s.index].append((tokens[:, :-1].contiguous().to(device),
                                              tokens[:, 1:].contiguous().to(device)))
        self.records: dict[int, list[StepRecord]] = {s.index: [] for s in stages}
        _cuda_sync(device)
        self.setup_s = time.perf_counter() - t0

    def static_bytes(self) -> int:
        """Bytes the plain arm keeps between steps: weights, optimizer state and its prebuilt batches
        (gradients are freed after each step)."""
        tensors = list(self.model.parameters())
        tensors += [t for pairs in self.batches.values() for pair in pairs for t in pair]
        for state in self.optimizer.state.values():
            tensors += [v for v in state.values() if hasattr(v, "element_size")]
        return sum(t.numel() * t.element_size() for t in tensors)

    def done(self, index: int) -> int:
        """Steps taken at stage ``index``."""
        return len(self.records[index])

    def step(self, index: int) -> None:
        """One optimizer step at stage ``index``'s shape, timed to its end (synchronised on CUDA)."""
        import torch

        s, dev = self.stages[index], self.device
        recs = self.records[index]
        base = 0
        if dev.type == "cuda":
            _cuda_sync(dev)
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        graphs, cpu = _compile_graphs(), data_thread_cpu()
        inputs, labels = self.batches[index][len(recs) % len(self.batches[index])]
        m = self.micro[index]
        t0 = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = s.peak_lr
        for j in range(0, s.batch, m):
            with torch.autocast(dev.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                _, loss = self.forward(inputs[j : j + m], labels[j : j + m])
            (loss * (min(m, s.batch - j) / s.batch)).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _cuda_sync(dev)
        t1 = time.perf_counter()
        rec = StepRecord(wall_s=t1 - t0, start=t0, end=t1, new_graphs=_compile_graphs() - graphs,
                         data_cpu_s=_cpu_delta(cpu, data_thread_cpu()))
        if dev.type == "cuda":
            # Own peak = own resident state + what the step allocated on top of everything resident
            # (the paused trainer's weights and optimizer state are resident too, and not this arm's).
            rec.cuda_peak = self.static_bytes() + torch.cuda.max_memory_allocated(dev) - base
        recs.append(rec)


# ============================================================================================ one repeat
@dataclass
class RepeatRun:
    """Both arms of one repeat: per stage, each arm's steps."""

    order: str  # "plain first" or "framework first" within each pair of steps
    framework: dict[int, list[StepRecord]] = field(default_factory=dict)
    plain: dict[int, list[StepRecord]] = field(default_factory=dict)
    setup_s: dict[str, float] = field(default_factory=dict)
    micro: dict[int, int] = field(default_factory=dict)


def run_repeat(r: int, cfg, shape, stages: list[StageShape], steps: int, run_dir: Path, device, precision: str,
               compile_on: bool) -> RepeatRun:
    """One repeat: the real Trainer runs the whole curriculum and the plain loop runs alongside it, step
    for step: each trainer step is paired with one plain step of the same stage, run just before it (even
    repeats) or just after it (odd repeats), on a clock that is subtracted from the trainer's. So both
    steps of a pair run within a second of each other, under the same machine load, and both orders count.

    The pairing runs in the trainer's public ``on_step`` hook (:class:`gradus.train.metrics.StepReport`),
    called after every step once its evaluation and checkpoint are done: every report is timestamped; the
    hook's own time (the plain steps) and the evaluation and checkpoint time the report states
    (``aside_seconds``) are subtracted, so the trainer's step times are training time only."""
    import torch

    from gradus.train.trainer import Trainer

    _fresh(device)
    out = RepeatRun(order="plain first" if r % 2 == 0 else "framework first")
    excluded = [0.0]
    # (time, report, excluded so far, graphs and data-thread CPU before / after the hook, plain bytes)
    marks: list[tuple] = []
    plain: PlainLoop | None = None

    def observe(report) -> None:
        t_hook = time.perf_counter()  # from here on, everything is the benchmark's and is subtracted
        g1, c1 = _compile_graphs(), data_thread_cpu()
        if out.order == "framework first":
            plain.step(report.stage_index)  # the partner of the step just run
        elif report.next_stage_index is not None and plain.done(report.next_stage_index) < steps:
            plain.step(report.next_stage_index)  # the partner of the step about to run
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # memory/peak_bytes: the next trainer step's own
        g2, c2 = _compile_graphs(), data_thread_cpu()
        plain_bytes = plain.static_bytes() if device.type == "cuda" else 0
        now = time.perf_counter()
        excluded[0] += now - t_hook + report.aside_seconds
        marks.append((now, report, excluded[0], g1, g2, c1, c2, plain_bytes))

    trainer = Trainer(cfg, run_dir, resume=False, quiet=True, on_step=observe)
    t0 = time.perf_counter()
    try:
        trainer.setup()
        out.setup_s["framework"] = time.perf_counter() - t0
        assert trainer.shape == shape, "the trainer built another model shape"
        out.micro = {s.index: trainer.micro_batches[s.index] for s in stages}
        plain = PlainLoop(cfg, shape, stages, out.micro, steps, device, precision, compile_on)
        out.setup_s["plain"] = plain.setup_s
        if out.order == "plain first":
            plain.step(stages[0].index)  # the partner of the trainer's first step
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # memory/peak_bytes: the first trainer step's own
        before_fit = (_compile_graphs(), data_thread_cpu(), plain.static_bytes() if device.type == "cuda" else 0)
        trainer.fit()
        out.plain = plain.records
    finally:
        trainer.close()
    out.framework = framework_steps(marks, before_fit, stages, device)
    return out


def framework_steps(marks: list[tuple], before_fit: tuple, stages: list[StageShape],
                    device) -> dict[int, list[StepRecord]]:
    """The trainer's steps as StepRecords, from the timestamped reports of :func:`run_repeat`'s hook: a
    step's wall time runs from the end of the previous report (the first step: from its own start) to
    the end of its own, minus the time excluded in between. ``before_fit``: compiled graphs, data-thread
    CPU and the plain arm's bytes just before ``fit()``."""
    steps: dict[int, list[StepRecord]] = {s.index: [] for s in stages}
    start: tuple | None = None  # (time, excluded) at the end of the previous step's report
    wait_before = 0.0
    last_graphs, last_cpu, plain_bytes = before_fit  # plain_bytes: the plain arm's while the trainer's step ran
    for t, report, excl, g_before, g_after, c_before, c_after, p_bytes in marks:
        if start is None:
            start = (report.started, 0.0)
        # Compiled graphs and data-thread CPU counted between hooks only (the plain steps run inside them).
        graphs = g_before - last_graphs if last_graphs is not None and g_before >= 0 and last_graphs >= 0 else None
        cpu = c_before - (last_cpu or 0.0) if c_before is not None else None
        last_graphs, last_cpu = g_after, c_after
        rec = report.record or {}
        wait = rec.get("data/wait_seconds", 0.0)
        step = StepRecord(
            wall_s=t - start[0] - (excl - start[1]),
            inner_s=report.seconds if report.seconds > 0 else None,
            data_wait_s=wait - wait_before,
            new_graphs=int(graphs) if graphs is not None else None,
            data_cpu_s=cpu,
            start=start[0],
            end=t,
        )
        peak = rec.get("memory/peak_bytes")
        if device.type == "cuda" and peak is not None:
            step.cuda_peak = int(peak) - plain_bytes
        steps[report.stage_index].append(step)
        start, wait_before = (t, excl), wait
        plain_bytes = p_bytes
    return steps


# ============================================================================================ analysis
def transition_steps(steps: int) -> int:
    """Steps at the start of a stage counted as its transition: max(1, min(3, N // 4))."""
    return max(1, min(3, steps // 4))


def summarize_arm(recs: list[StepRecord], s: StageShape, steps: int, flops: float, peak: float,
                  arm: str) -> dict[str, Any]:
    """One arm at one stage of one repeat: steady step time and tokens/s, MFU, transition seconds, new
    compiled graphs, CUDA peak memory, data-thread CPU and (framework) the breakdown of a steady step."""
    w = transition_steps(steps)
    if len(recs) != steps:
        raise RuntimeError(f"{arm}: stage {s.index} ran {len(recs)} steps, expected {steps}")
    steady = recs[w:]
    # The mean, not the median: throughput is tokens over time, and a cost paid every k-th step (a chunk
    # of documents tokenised, a metrics flush) is overhead the median would hide.
    step_time = statistics.fmean(r.wall_s for r in steady)
    tps = s.tokens_per_step / step_time
    graphs = [r.new_graphs for r in recs if r.new_graphs is not None]
    cpu = [r.data_cpu_s for r in steady if r.data_cpu_s is not None]
    row: dict[str, Any] = {
        "step_time_s": step_time,
        "tokens_per_sec": tps,
        "mfu": flops * tps / peak if peak else None,
        "transition_seconds": sum(r.wall_s for r in recs[:w]) - w * step_time,
        "first_step_s": recs[0].wall_s,
        "new_compiled_graphs": sum(graphs) if graphs else None,
        # Mean over the steady steps (the counter ticks in 10 ms, too coarse for a median).
        "data_thread_cpu_per_step_s": sum(cpu) / len(cpu) if cpu else None,
    }
    if recs[0].cuda_peak is not None:
        row["peak_memory_bytes"] = max(r.cuda_peak or 0 for r in recs)
    if steady[0].inner_s is not None:
        inner = statistics.fmean(r.inner_s for r in steady if r.inner_s is not None)
        wait = statistics.fmean(r.data_wait_s for r in steady if r.data_wait_s is not None)
        row["breakdown_s"] = {
            "wall": step_time,
            "trainer_clock": inner,  # what the trainer's own tokens_per_sec divides by
            "data_wait": wait,
            "train_step": inner - wait,
            "outside_trainer_clock": step_time - inner,
        }
        row["tokens_per_sec_trainer_clock"] = s.tokens_per_step / inner
    return row


def summarize_repeat(rep: RepeatRun, stages: list[StageShape], steps: int, flops: dict[int, float], peak: float,
                     sampler: RssSampler | None) -> dict[int, dict]:
    """Per stage: both arms' rows, the paired ratio and (CPU) the process's peak memory."""
    w = transition_steps(steps)
    out = {}
    for s in stages:
        fw, pl = rep.framework[s.index], rep.plain[s.index]
        # Both arms' steady steps cover the same stretch of time, pair by pair, so load swings (another
        # process taking a core for a while) weigh on both sums alike. The median of the per-pair ratios
        # is kept too: it ignores one-off stalls, and with them any overhead paid only every k-th step.
        pairs = [p.wall_s / f.wall_s for f, p in zip(fw[w:], pl[w:], strict=True)]
        entry = {
            "framework": summarize_arm(fw, s, steps, flops[s.index], peak, "framework"),
            "plain": summarize_arm(pl, s, steps, flops[s.index], peak, "plain"),
            "ratio": sum(p.wall_s for p in pl[w:]) / sum(f.wall_s for f in fw[w:]),
            "ratio_pair_median": statistics.median(pairs),
        }
        if sampler is not None:
            rss = sampler.peak_between(min(fw[0].start, pl[0].start), max(fw[-1].end, pl[-1].end))
            entry["framework"]["peak_memory_bytes"] = entry["plain"]["peak_memory_bytes"] = rss
        out[s.index] = entry
    return out


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def combine(stages: list[StageShape], repeats: list[dict[int, dict]], flops: dict[int, float]) -> list[dict]:
    """Per stage and arm, the median over repeats with the spread (min, max)."""
    table = []
    for s in stages:
        fw = [r[s.index]["framework"] for r in repeats]
        pl = [r[s.index]["plain"] for r in repeats]
        ratios = [r[s.index]["ratio"] for r in repeats]
        pair_medians = [r[s.index]["ratio_pair_median"] for r in repeats]

        def med(rows: list[dict], key: str) -> float | None:
            vals = [r[key] for r in rows if r.get(key) is not None]
            return statistics.median(vals) if vals else None

        entry: dict[str, Any] = {
            "index": s.index,
            "config_stage": s.source_index,
            "name": s.name,
            "seq_len": s.seq_len,
            "batch": s.batch,
            "tokens_per_step": s.tokens_per_step,
            "flops_per_token": flops[s.index],
            "ratio": statistics.median(ratios),
            "ratio_spread": _spread(ratios),
            "ratio_pair_median": statistics.median(pair_medians),
        }
        for key in ("tokens_per_sec", "step_time_s", "peak_memory_bytes", "mfu", "transition_seconds",
                    "first_step_s", "new_compiled_graphs", "data_thread_cpu_per_step_s"):
            entry[key] = {"framework": med(fw, key), "plain": med(pl, key)}
        for key in ("tokens_per_sec", "transition_seconds"):
            entry[key + "_spread"] = {"framework": _spread([f[key] for f in fw]),
                                      "plain": _spread([p[key] for p in pl])}
        entry["tokens_per_sec_trainer_clock"] = med(fw, "tokens_per_sec_trainer_clock")
        entry["framework_breakdown_s"] = {
            k: statistics.median(f["breakdown_s"][k] for f in fw) for k in fw[0]["breakdown_s"]
        }
        entry["framework_breakdown_s"]["plain_step"] = entry["step_time_s"]["plain"]
        table.append(entry)
    return table


# ============================================================================================ output
def _num(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, fmt)


def format_table(stages: list[dict], peak: float, peak_source: str, memory_scope: str) -> str:
    """The per-stage table printed to stdout: medians over repeats, the ratio's spread in brackets."""
    head = (f"{'stage':<8} {'seq×batch':>9} {'tok/s fw':>9} {'tok/s pl':>9} {'ratio':>6} {'(min-max)':>11} {'pairs':>5} "
            f"{'step ms':>8} {'MFU% fw':>7} {'MFU% pl':>7} {'MiB fw':>7} {'MiB pl':>7} {'trans s fw':>10} "
            f"{'trans s pl':>10} {'graphs+':>7}")
    lines = [head, "-" * len(head)]
    for e in stages:
        sp = e["ratio_spread"]
        tps, mfu, mem, trans = e["tokens_per_sec"], e["mfu"], e["peak_memory_bytes"], e["transition_seconds"]
        g_f, g_p = e["new_compiled_graphs"]["framework"], e["new_compiled_graphs"]["plain"]
        lines.append(
            f"{e['name'][:8]:<8} {str(e['seq_len']) + '×' + str(e['batch']):>9} "
            f"{tps['framework']:>9,.0f} {tps['plain']:>9,.0f} {e['ratio']:>6.3f} "
            f"{'(' + format(sp['min'], '.2f') + '-' + format(sp['max'], '.2f') + ')':>11} "
            f"{e['ratio_pair_median']:>5.2f} "
            f"{_num(e['step_time_s']['framework'], '.1f', 1e3):>8} "
            f"{_num(mfu['framework'], '.1f', 100):>7} {_num(mfu['plain'], '.1f', 100):>7} "
            f"{_num(mem['framework'], ',.0f', 2**-20):>7} {_num(mem['plain'], ',.0f', 2**-20):>7} "
            f"{trans['framework']:>10.3f} {trans['plain']:>10.3f} "
            f"{'-' if g_f is None else f'{g_f:g}/{g_p:g}':>7}"
        )
    lines.append(f"ratio = framework ÷ plain tokens/s over the same paired steady steps (target ≥ {RATIO_TARGET}), "
                 f"median over repeats (min-max); pairs = median of per-pair ratios; step ms = framework, mean; "
                 f"peak FLOP/s {peak:.3g} ({peak_source})")
    lines.append(f"memory: {memory_scope}; trans s = first steps of the stage minus as many steady steps "
                 "(stage 0: cold start); graphs+ = compiled graphs added in the stage, framework/plain")
    lines.append("")
    lines.append("framework steady step, ms (means): wall = trainer clock [data wait + train step] + outside "
                 "the clock (metrics, guard, schedule); data-thread CPU per step; plain step")
    for e in stages:
        b = e["framework_breakdown_s"]
        cpu = e["data_thread_cpu_per_step_s"]["framework"]
        lines.append(
            f"  {e['name'][:8]:<8} wall {1e3 * b['wall']:8.2f} = clock {1e3 * b['trainer_clock']:8.2f} "
            f"[wait {1e3 * b['data_wait']:6.2f} + step {1e3 * b['train_step']:8.2f}] + outside "
            f"{1e3 * b['outside_trainer_clock']:6.2f};  data CPU {_num(cpu, '6.2f', 1e3)};  "
            f"plain {1e3 * b['plain_step']:8.2f}"
        )
    return "\n".join(lines)


def machine_info(device) -> dict:
    """What the figures were measured on."""
    import torch

    info: dict[str, Any] = {
        "device": str(device),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def git_revision() -> str | None:
    """Short commit of the checkout, with ``+dirty`` when the tree has changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


# ============================================================================================ main
def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import torch

    from gradus.config import from_dict
    from gradus.data import load_tokenizer
    from gradus.errors import GradusError
    from gradus.model import resolve_shape
    from gradus.train.measure import RssSampler

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
        "setup_seconds": {arm: _spread(v) for arm, v in setup.items()},
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
