"""Stage throughput, measured: a config's stages run through the real trainer against a plain PyTorch loop.

``benchmarks/stage_throughput.py`` is the command line; this module is the machinery it calls, so the
measurement can be read, tested and reused without the script: the config cut to a few steps per stage
(:func:`benchmark_config`), the peak FLOP/s (:func:`resolve_peak`), the plain loop (:class:`PlainLoop`) and one
repeat that pairs each trainer step, seen through the trainer's public ``on_step`` hook
(:class:`gradus.train.metrics.StepReport`), with one plain step of the same stage (:func:`run_repeat`). The
figures are summarised by :mod:`gradus.experiments.throughput_table`. The script's docstring says what
each figure means and how the pairing keeps the machine's load fair to both arms.
"""

from __future__ import annotations

import copy
import gc
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from gradus.errors import ConfigError


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
    """Best-of-8 square-matmul FLOP/s on ``device`` in the training precision (fp32, else bf16), through
    gradus's own :func:`~gradus.train.runtime.measure_matmul_flops` (n = 1024 on CPU, 8192 on a GPU)."""
    import torch

    from gradus.train.runtime import measure_matmul_flops

    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    return measure_matmul_flops(device, n=n, repeats=8, dtype=dtype)


def resolve_peak(spec: str, device, precision: str) -> tuple[float, str, dict]:
    """(peak FLOP/s, its source, raw measurements). ``spec``: auto | measured | a number."""
    from gradus.train.runtime import peak_flops

    if spec not in ("auto", "measured"):
        try:
            return float(spec), "--peak", {}
        except ValueError:
            raise ConfigError(f"--peak {spec!r}: give auto, measured or a number") from None
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
        assert trainer.parts.shape == shape, "the trainer built another model shape"
        out.micro = {s.index: trainer.parts.micro_batches[s.index] for s in stages}
        trainer.parts.data.settle()  # the data thread's cold start (begun in set-up) off the plain loop's clock
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
