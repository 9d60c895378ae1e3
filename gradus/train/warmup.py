"""Compile warm-up: every stage's training shape compiled before the clock starts.

With ``train.compile`` on, torch.compile builds one graph per input shape (``dynamic=False``). Left to
itself it compiles a stage's graph at that stage's first step, so every shape change stalls the run for
seconds (minutes for a large model) and that stall lands in the stage's timing. :func:`compile_warmup`
runs one forward + backward of each shape a run will train at, at start-up, and leaves the weights, the
gradients, the optimizer and the RNG states as they were, so a run's numbers are those of a run without
the warm-up. Afterwards :func:`compiled_graph_count` minus :attr:`CompileWarmup.graphs_after` is the
number of graphs built during training: the recompiles, which should stay 0.

Evaluation runs the plain module (:class:`~gradus.train.evaluate.Validation`), so it has no graph to
compile and cannot recompile.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from gradus.train.runtime import Runtime, rng_state, set_rng_state


def compiled_graph_count() -> int:
    """Graphs torch.compile has built in this process so far (dynamo's ``unique_graphs`` counter); -1
    when the counter cannot be read."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # a counter, not worth failing a run over
        return -1


@dataclass(frozen=True)
class ShapeCompile:
    """How long the warm-up of one training shape took (compile plus one forward + backward)."""

    stage: int
    """Index of the first stage that trains at this shape."""
    rows: int
    """Rows of the micro-batch."""
    seq_len: int
    """Sequence length."""
    rope_scaling: float
    """The RoPE scaling the shape ran under (part of what the graph is specialised on)."""
    seconds: float
    """Wall-clock seconds of the warm-up forward + backward."""


@dataclass
class CompileWarmup:
    """The outcome of :func:`compile_warmup`: per-shape times and the graph count it left."""

    shapes: list[ShapeCompile] = field(default_factory=list)
    """One entry per distinct (rows, seq_len, rope_scaling) trained at, in stage order."""
    graphs_after: int = 0
    """:func:`compiled_graph_count` when the warm-up ended."""

    def recompiles(self) -> int:
        """Graphs built since the warm-up ended: shapes (or guards) the warm-up missed."""
        now = compiled_graph_count()
        return now - self.graphs_after if now >= 0 and self.graphs_after >= 0 else -1


def training_shapes(stages, micro_batches: dict[int, int], world_size: int,
                    also: dict[int, int] | None = None) -> list[tuple[int, int, int, float]]:
    """(stage index, rows, seq_len, rope_scaling) of every distinct micro-batch shape the run trains at,
    in stage order: each stage's micro-batch (and its micro-batch in ``also``: the unsplit one of the steps
    that do not measure the noise scale) and, when a micro-batch does not divide the local batch, its ragged
    last micro-batch. Stages with no steps train at nothing."""
    seen: set[tuple[int, int, float]] = set()
    out = []
    for s in stages:
        if s.steps <= 0:
            continue
        local = s.batch_size // world_size
        micros = [micro_batches[s.index]] + ([also[s.index]] if also is not None else [])
        for rows in [r for m in micros for r in (m, local % m)]:
            key = (rows, s.seq_len, s.rope_scaling)
            if rows > 0 and key not in seen:
                seen.add(key)
                out.append((s.index, rows, s.seq_len, s.rope_scaling))
    return out


def compile_warmup(net, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rt: Runtime, stages,
                   micro_batches: dict[int, int], also: dict[int, int] | None = None) -> CompileWarmup:
    """Run one forward + backward of ``net`` at every training shape (:func:`training_shapes`, ``also``
    included), each under
    its stage's RoPE scaling, so torch.compile builds every graph now; then restore the gradients, the
    RoPE scaling and the RNG states. The optimizer never steps, so the weights and AdamW's moments are
    untouched. Under DDP the backward runs under ``no_sync``: no gradient all-reduce to pair up."""
    saved_rng = rng_state()
    saved_rope = model.shape.rope_scaling
    saved_grads = {p: p.grad for p in model.parameters()}  # None before the first step
    result = CompileWarmup()
    try:
        for stage, rows, seq_len, rope in training_shapes(stages, micro_batches, rt.world_size, also):
            if rope != model.shape.rope_scaling:
                model.set_rope_scaling(rope)
            t0 = time.perf_counter()
            # Two tensors, int64 like the pipeline's batches: the graph is specialised on dtypes and on
            # whether inputs alias, so (x, x) would compile a graph the real steps never use.
            x = torch.randint(0, model.shape.vocab_size, (rows, seq_len), device=rt.device)
            y = torch.randint(0, model.shape.vocab_size, (rows, seq_len), device=rt.device)
            with net.no_sync() if rt.distributed else contextlib.nullcontext():
                with rt.autocast():
                    _, loss = net(x, y)
                loss.backward()
            if rt.device.type == "cuda":
                torch.cuda.synchronize(rt.device)
            result.shapes.append(ShapeCompile(stage, rows, seq_len, rope, time.perf_counter() - t0))
            optimizer.zero_grad(set_to_none=True)
    finally:
        for p, g in saved_grads.items():
            p.grad = g
        if model.shape.rope_scaling != saved_rope:
            model.set_rope_scaling(saved_rope)
        set_rng_state(saved_rng)
    result.graphs_after = compiled_graph_count()
    return result


def report_warmup(warm: CompileWarmup, print_line, write_record) -> None:
    """Report the start-up compile time of each shape: one console line (``print_line``) and one
    ``event: compile/warmup`` metrics record per shape (``write_record``)."""
    total = sum(s.seconds for s in warm.shapes)
    parts = [f"{s.seq_len}×{s.rows} {s.seconds:.1f}s" for s in warm.shapes]
    print_line(f"compiled {len(warm.shapes)} training shapes in {total:.1f}s (seq_len×rows): " + ", ".join(parts))
    for s in warm.shapes:
        write_record({"event": "compile/warmup", "curriculum/stage": s.stage, "rows": s.rows, "seq_len": s.seq_len,
                      "rope_scaling": s.rope_scaling, "seconds": s.seconds})
