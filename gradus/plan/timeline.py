"""The per-stage timeline of a config: examples, tokens, dataset coverage, time, and memory per stage.

Pure Python: the stage table comes from :func:`gradus.curriculum.resolve_schedule`; throughput is given
(tokens/s), derived from hardware (peak × MFU / FLOPs per token at the stage's length), or measured by a
callback the command supplies (``gradus plan --measure`` times real steps with torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gradus.config import GradusConfig
from gradus.curriculum import StagePlan, resolve_schedule
from gradus.plan.hardware import format_bytes
from gradus.plan.inputs import Hardware
from gradus.plan.memory import (
    HEADROOM,
    MemoryEstimate,
    estimate_memory,
    fits,
    largest_fitting_micro_batch,
    memory_layout,
)
from gradus.sizes import ModelShape
from gradus.units import format_count, format_duration

Measure = Callable[[StagePlan, int], dict[str, Any]]
"""``measure(stage, micro_batch) -> {"tokens_per_sec", "step_time_s", "peak_memory_bytes"}``."""


@dataclass(frozen=True)
class StageTimeline:
    """One stage of the timeline."""

    index: int
    """Stage index (0-based)."""
    name: str
    """Stage name."""
    seq_len: int
    """Sequence length."""
    batch_size: int
    """Global sequences per step."""
    steps: int
    """Optimizer steps."""
    examples: int
    """Sequences trained on."""
    tokens: int
    """Tokens trained on."""
    end_tokens: int
    """Tokens seen by the end of the stage."""
    micro_batch: int
    """Sequences per forward pass (from the config, the memory estimate, or the whole batch)."""
    accumulation: int
    """Micro-batches per step."""
    flops_per_token: float
    """Training FLOPs per token at this length (``ModelShape.flops_per_token``)."""
    memory: MemoryEstimate
    """Estimated memory at ``micro_batch``."""
    fits: bool | None
    """Whether the estimate fits the device memory (None when no memory was given)."""
    tokens_per_sec: float | None = None
    """Throughput used for the time (None: unknown)."""
    seconds: float | None = None
    """Training time of the stage."""
    coverage: float | None = None
    """Stage tokens / dataset tokens (None without --dataset-tokens)."""
    epochs_end: float | None = None
    """Passes over the dataset by the end of the stage."""
    measured_peak_bytes: int | None = None
    """Peak memory measured by --measure."""
    measured_step_time_s: float | None = None
    """Seconds per measured micro-batch step."""


@dataclass
class Timeline:
    """The whole timeline (``gradus plan --config``)."""

    title: str
    """What was planned (the config's name or path)."""
    shape: ModelShape
    """The model."""
    precision: str
    """Precision the memory estimate assumes."""
    throughput_source: str
    """'given', 'measured on DEVICE', 'hardware: ...' or 'none'."""
    stages: list[StageTimeline]
    """Per stage."""
    device_memory: int | None = None
    """Device memory the stages were checked against."""
    dataset_tokens: int | None = None
    """Size of the dataset in tokens, for coverage."""
    warnings: list[str] = field(default_factory=list)
    """Stages that will not fit, schedule warnings."""
    world_size: int = 1
    """Processes the memory is planned for (``--gpus`` with ``--gpu``, else ``train.planned_world_size``)."""
    shards: int = 1
    """How many ways FSDP splits the weights, gradients and AdamW (1: whole copies, DDP)."""
    checkpointed: int = 0
    """Blocks whose activations are recomputed (``train.activation_checkpointing``)."""

    @property
    def total_tokens(self) -> int:
        """Tokens over all stages."""
        return sum(s.tokens for s in self.stages)

    @property
    def total_seconds(self) -> float | None:
        """Training time over all stages (None if any stage's throughput is unknown)."""
        times = [s.seconds for s in self.stages]
        return None if any(t is None for t in times) else float(sum(t for t in times if t is not None))

    def to_json(self) -> dict[str, Any]:
        """The timeline as data (``gradus plan --config ... --json``)."""
        return {
            "title": self.title,
            "shape": self.shape.to_dict(),
            "params_non_embedding": self.shape.params_non_embedding,
            "params_total": self.shape.params_total,
            "precision": self.precision,
            "throughput_source": self.throughput_source,
            "device_memory": self.device_memory,
            "dataset_tokens": self.dataset_tokens,
            "total_tokens": self.total_tokens,
            "total_seconds": self.total_seconds,
            "stages": [
                {
                    "index": s.index, "name": s.name, "seq_len": s.seq_len, "batch_size": s.batch_size,
                    "steps": s.steps, "examples": s.examples, "tokens": s.tokens, "end_tokens": s.end_tokens,
                    "micro_batch": s.micro_batch, "accumulation": s.accumulation,
                    "flops_per_token": s.flops_per_token, "tokens_per_sec": s.tokens_per_sec,
                    "seconds": s.seconds, "coverage": s.coverage, "epochs_end": s.epochs_end,
                    "memory": {"weights": s.memory.weights, "gradients": s.memory.gradients,
                               "optimizer": s.memory.optimizer, "activations": s.memory.activations,
                               "total": s.memory.total},
                    "fits": s.fits, "measured_peak_bytes": s.measured_peak_bytes,
                    "measured_step_time_s": s.measured_step_time_s,
                }
                for s in self.stages
            ],
            "warnings": list(self.warnings),
            "world_size": self.world_size, "shards": self.shards, "checkpointed_blocks": self.checkpointed,
        }


def choose_micro_batch(
    shape: ModelShape, stage: StagePlan, precision: str, device_memory: int | None, configured: int | None,
    world_size: int = 1, layout: dict[str, int] | None = None,
) -> tuple[int, str | None]:
    """(micro-batch, warning). The config's ``train.micro_batch_size`` wins; otherwise, given device
    memory, the largest divisor of the batch each of ``world_size`` devices runs that fits (what the
    trainer's halving probe looks for; ``layout``: FSDP sharding and activation checkpointing,
    :func:`gradus.plan.memory.memory_layout`); otherwise that whole local batch."""
    batch = max(1, stage.batch_size // world_size)
    layout = layout or {}
    if configured is not None:
        return min(configured, batch), None
    if device_memory is None:
        return batch, None
    m = largest_fitting_micro_batch(shape, stage.seq_len, batch, device_memory, precision, **layout)
    if m is None:
        need = estimate_memory(shape, stage.seq_len, 1, precision, **layout).total
        fix = ("more GPUs" if layout.get("shards", 1) > 1
               else "train.parallel: fsdp over several GPUs (planned_world_size)")
        if not layout.get("checkpointed"):
            fix += ", train.activation_checkpointing: full"
        return 1, (
            f"stage {stage.index} ({stage.name}) does not fit {format_bytes(device_memory)} even at micro-batch 1: "
            f"~{format_bytes(need)} needed at seq_len {stage.seq_len}; use a larger device, {fix}, a smaller "
            f"model, or shorter sequences"
        )
    return m, None


def build_timeline(
    cfg: GradusConfig,
    shape: ModelShape,
    *,
    title: str = "config",
    tokens_per_sec: float | None = None,
    hardware: Hardware | None = None,
    measure: Measure | None = None,
    measure_label: str = "measured",
    dataset_tokens: int | None = None,
    device_memory: int | None = None,
    precision: str = "bf16",
    micro_batch: int | None = None,
) -> Timeline:
    """Per-stage timeline of ``cfg`` for the model ``shape``. Throughput: ``measure`` (a callback timing
    real steps) over ``tokens_per_sec`` over ``hardware`` (gpus × peak × MFU / FLOPs per token)."""
    cur = resolve_schedule(cfg)
    warnings = list(cur.warnings)
    configured = micro_batch if micro_batch is not None else cfg.train.micro_batch_size
    if measure is not None:
        source = measure_label
    elif tokens_per_sec is not None:
        source = "given"
    elif hardware is not None:
        source = f"hardware: {hardware.describe()}"
    else:
        source = "none"
    rows: list[StageTimeline] = []
    world = hardware.gpus if hardware is not None else (cfg.train.planned_world_size or 1)
    layout = memory_layout(cfg.train, shape.n_layers, world)
    for st in cur.stages:
        if st.batch_size % world:  # gradus train stops at start-up on such a stage: say so before the launch
            warnings.append(f"stage {st.index} ({st.name}): batch {st.batch_size} does not divide by {world} "
                            "processes; gradus train refuses it: choose tokens_per_batch = a multiple of "
                            f"{world} × {st.seq_len}")
        m, warn = choose_micro_batch(shape, st, precision, device_memory, configured, world, layout)
        if warn:
            warnings.append(warn)
        est = estimate_memory(shape, st.seq_len, m, precision, **layout)
        ok = None if device_memory is None else fits(est, device_memory)
        if ok is False and warn is None:
            warnings.append(
                f"stage {st.index} ({st.name}): micro-batch {m} × {st.seq_len} needs ~{format_bytes(est.total)}, "
                f"more than {HEADROOM:.0%} of {format_bytes(device_memory or 0)}; lower train.micro_batch_size"
            )
        fpt = shape.flops_per_token(st.seq_len)
        tps: float | None = None
        peak_bytes = step_time = None
        if measure is not None and st.steps > 0:
            result = measure(st, m)
            tps = float(result["tokens_per_sec"])
            peak_bytes = result.get("peak_memory_bytes")
            step_time = result.get("step_time_s")
            if device_memory is not None and peak_bytes and peak_bytes > device_memory:
                warnings.append(f"stage {st.index} ({st.name}): measured peak {format_bytes(peak_bytes)} "
                                f"exceeds {format_bytes(device_memory)}")
        elif tokens_per_sec is not None:
            tps = tokens_per_sec
        elif hardware is not None:
            tps = hardware.flops_per_second / fpt
        rows.append(StageTimeline(
            index=st.index, name=st.name, seq_len=st.seq_len, batch_size=st.batch_size, steps=st.steps,
            examples=st.examples, tokens=st.tokens, end_tokens=st.end_tokens, micro_batch=m,
            accumulation=-(-max(1, st.batch_size // world) // m), flops_per_token=fpt, memory=est, fits=ok,
            tokens_per_sec=tps, seconds=None if tps is None else st.tokens / tps,
            coverage=None if not dataset_tokens else st.tokens / dataset_tokens,
            epochs_end=None if not dataset_tokens else st.end_tokens / dataset_tokens,
            measured_peak_bytes=peak_bytes, measured_step_time_s=step_time,
        ))
    if dataset_tokens and rows and rows[-1].epochs_end and rows[-1].epochs_end > 1:
        warnings.append(f"the run passes over the dataset {rows[-1].epochs_end:.2f} times "
                        f"(repeated data: up to ~4 epochs cost little, more starts to hurt)")
    return Timeline(title=title, shape=shape, precision=precision, throughput_source=source, stages=rows,
                    device_memory=device_memory, dataset_tokens=dataset_tokens, warnings=warnings,
                    world_size=world, shards=layout["shards"], checkpointed=layout["checkpointed"])


def render_timeline(tl: Timeline) -> str:
    """The timeline as the console prints it: a time table, then a memory table."""
    s = tl.shape
    out = [
        f"gradus plan: timeline of {tl.title}",
        f"  model: {s.describe()}",
        f"  throughput: {tl.throughput_source}"
        + ("  (give --tokens-per-sec N, --gpu NAME, or --measure for times)" if tl.throughput_source == "none" else ""),
    ]
    if tl.dataset_tokens:
        out.append(f"  dataset: {tl.dataset_tokens:,} tokens")
    out.append("")
    out.append("  #  stage                 seq_len  batch      steps     examples        tokens  "
               "coverage  epochs     tokens/s        time  cumulative")
    elapsed = 0.0
    for r in tl.stages:
        cov = f"{r.coverage:8.1%}" if r.coverage is not None else f"{'-':>8}"
        ep = f"{r.epochs_end:6.2f}" if r.epochs_end is not None else f"{'-':>6}"
        rate = f"{r.tokens_per_sec:12,.0f}" if r.tokens_per_sec is not None else f"{'-':>12}"
        if r.seconds is not None:
            elapsed += r.seconds
            time, cum = format_duration(r.seconds), format_duration(elapsed)
        else:
            time, cum = "-", "-"
        out.append(f"  {r.index:<2} {r.name[:20]:<20} {r.seq_len:>8}  {r.batch_size:>5}  {r.steps:>9,}  "
                   f"{r.examples:>11,}  {r.tokens:>12,}  {cov}  {ep} {rate}  {time:>10}  {cum:>10}")
    total = tl.total_seconds
    out.append(f"  total: {tl.total_tokens:,} tokens ({format_count(tl.total_tokens)})"
               + (f", {format_duration(total)}" if total is not None else ""))
    out.append("")
    mem = f" on {format_bytes(tl.device_memory)}" if tl.device_memory else ""
    out.append(f"  memory per device{mem} ({tl.precision}: fp32 weights, grads and AdamW; "
               f"{'16' if tl.precision != 'fp32' else '32'}-bit activations; estimate ±20%, CUDA context not included)")
    if tl.world_size > 1 or tl.checkpointed:
        how = [f"{tl.world_size} processes, local batch = batch / {tl.world_size}"]
        if tl.shards > 1:
            how.append(f"FSDP: weights, grads and AdamW sharded {tl.shards} ways")
        if tl.checkpointed:
            how.append(f"activation checkpointing: {tl.checkpointed} of {tl.shape.n_layers} blocks recomputed")
        out.append("  (" + "; ".join(how) + ")")
    out.append("  #  stage                 micro×accum    weights      grads      AdamW  activations"
               "       total  fits   measured")
    for r in tl.stages:
        e = r.memory
        fit = {None: "-", True: "yes", False: "NO"}[r.fits]
        measured = format_bytes(r.measured_peak_bytes) if r.measured_peak_bytes else "-"
        out.append(f"  {r.index:<2} {r.name[:20]:<20} {f'{r.micro_batch}×{r.accumulation}':>11}  "
                   f"{format_bytes(e.weights):>9}  {format_bytes(e.gradients):>9}  {format_bytes(e.optimizer):>9}  "
                   f"{format_bytes(e.activations):>11}  {format_bytes(e.total):>10}  {fit:>4}  {measured:>9}")
    for w in tl.warnings:
        out.append(f"  warning: {w}")
    return "\n".join(out)
