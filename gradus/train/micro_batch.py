"""Micro-batch fitting: how many rows of a stage's batch one forward + backward runs at.

A stage's local batch (its batch over the ranks) is split into micro-batches whose gradients are
accumulated. The micro-batch starts at the local batch (or ``train.micro_batch_size``); then on CUDA each
stage's shape is run once, halving on out-of-memory (:func:`probe_micro_batch`), and on CPU, where
running out of memory kills the process without a word, the estimate of
:func:`gradus.plan.memory.estimate_memory` is held against the host's free memory
(:func:`host_micro_batch`). :func:`plan_micro_batches` does this for every stage of a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from gradus.config import TrainConfig
from gradus.errors import GradusError
from gradus.plan.memory import estimate_memory, largest_fitting_micro_batch
from gradus.sizes import ModelShape
from gradus.train.parallel import deferred_grad_sync
from gradus.train.runtime import Runtime, host_memory_budget, rng_state, set_rng_state


def check_batches_divide(stages: Iterable, rt: Runtime) -> None:
    """Every stage's batch must split evenly over the ranks: a one-line ConfigError naming the stage, raised
    on every rank and said once (:meth:`Runtime.raise_together`)."""
    bad = next((s for s in stages if s.batch_size % rt.world_size), None)
    rt.raise_together(None if bad is None else (
        f"curriculum.stages[{bad.index}] batch {bad.batch_size} does not divide by world size {rt.world_size}; "
        "choose a batch (or tokens_per_batch) divisible by the number of processes"))


def configured_micro_batch(local: int, configured: int | None, splits: int = 1) -> int:
    """The micro-batch to start from: the local batch, or ``train.micro_batch_size`` when that is smaller, and
    at most the largest divisor of ``local`` that gives ``splits`` micro-batches (:func:`noise_splits`) where
    ``local`` has that many rows. A divisor, so that accumulation needs no ragged last micro-batch."""
    micro = min(local, configured) if configured else local
    if splits > 1 and local >= splits:
        micro = min(micro, max(d for d in range(1, local // splits + 1) if local % d == 0))
    return micro


def noise_splits(train: TrainConfig, world_size: int, sharded: bool = False) -> int:
    """The micro-batches per step the noise scale asks for (``train.noise_scale.micro_batches``): on one process
    or under FSDP (``sharded``), where the micro-batches are its two batch sizes; 1 (no request) under DDP,
    where the ranks are."""
    ns = train.noise_scale
    return int(ns.micro_batches) if ns.enabled and ns.micro_batches and (world_size == 1 or sharded) else 1


def adamw_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes AdamW will allocate for its two moments (``exp_avg``, ``exp_avg_sq``: one tensor of each
    parameter's size and dtype) at its first step. The micro-batch probe runs before that step, so it must
    hold this much aside or it picks a micro-batch that fits only until the moments exist."""
    seen: set[int] = set()
    total = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            local = p.to_local() if hasattr(p, "to_local") else p  # FSDP: this rank's shard (a DTensor's)
            total += 2 * local.numel() * local.element_size()
    return total


def noise_copy_bytes(hooks: object, optimizer: torch.optim.Optimizer) -> int:
    """Bytes the noise scale's measurement holds during a step beyond what the probe's forward + backward
    shows: under FSDP2 (:class:`~gradus.train.noise_scale.ShardedMicroBatchNorms`) a copy of this rank's
    gradient shards between micro-batches, as large as the shards of the parameters; 0 for the hooks, which
    keep one number per parameter."""
    from gradus.train.noise_scale import ShardedMicroBatchNorms

    return adamw_state_bytes(optimizer) // 2 if isinstance(hooks, ShardedMicroBatchNorms) else 0


def halve_until_fits(micro: int, fits: Callable[[int], bool]) -> int | None:
    """Halve ``micro`` until ``fits(micro)`` (one forward + backward at that micro-batch did not run out of
    memory); the micro-batch found, or None when not even 1 fits. Halving keeps the micro-batch a divisor
    of a power-of-two batch, so accumulation needs no ragged last micro-batch."""
    while True:
        if fits(micro):
            return micro
        if micro == 1:
            return None
        micro = max(1, micro // 2)


def host_micro_batch(shape: ModelShape, seq_len: int, micro: int, precision: str, budget: int | None,
                     layout: Mapping[str, int] | None = None) -> int | None:
    """On CPU, where running out of memory kills the process instead of raising: the largest divisor of
    ``micro`` whose estimated training memory (:func:`gradus.plan.memory.estimate_memory`: weights,
    gradients, AdamW's moments, activations and the logits, with :data:`~gradus.plan.memory.HEADROOM`) fits
    in ``budget`` bytes; ``micro`` itself when the budget is unknown; None when not even 1 fits. A 50k
    vocabulary at 65k tokens per step needs ~40 GB for the logits alone as one micro-batch. ``layout``: FSDP
    sharding and activation checkpointing (:func:`gradus.plan.memory.memory_layout`)."""
    if budget is None:
        return micro
    return largest_fitting_micro_batch(shape, seq_len, micro, budget, precision, **(layout or {}))


def probe_micro_batch(net: Callable, optimizer: torch.optim.Optimizer, rt: Runtime, vocab_size: int, seq_len: int,
                      micro: int, extra_reserve_bytes: int = 0) -> int | None:
    """The largest micro-batch ≤ ``micro`` (halving) whose forward + backward of ``net`` fits on this GPU,
    with AdamW's moments held aside when they do not exist yet (a fresh run: they appear at the first
    step; under FSDP only this rank's shard of them); None when not even 1 fits. Under DDP it runs under
    ``no_sync``: a rank that runs out of memory must not leave the others waiting in a gradient all-reduce.
    Under FSDP the forward itself gathers weights from every rank, so the ranks (same GPUs, same shapes)
    run out of memory together or not at all. ``extra_reserve_bytes`` are held aside too (the noise scale's
    copy of the gradient shards under FSDP: :func:`noise_copy_bytes`). The RNG states are left as they were."""
    saved_rng = rng_state()
    reserve_bytes = (0 if optimizer.state else adamw_state_bytes(optimizer)) + extra_reserve_bytes

    def fits(m: int) -> bool:
        reserve = x = y = loss = None
        try:
            if reserve_bytes:
                reserve = torch.empty(reserve_bytes, dtype=torch.uint8, device=rt.device)
            x = torch.randint(0, vocab_size, (m, seq_len), device=rt.device)
            # Separate label tensor: compiled with (x, x), the graph would assume aliased inputs and
            # the first real step (two tensors) would recompile after the clock has started.
            y = torch.randint(0, vocab_size, (m, seq_len), device=rt.device)
            with deferred_grad_sync(net, rt):
                with rt.autocast():
                    _, loss = net(x, y)
                loss.backward()
            torch.cuda.synchronize(rt.device)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            # Drop every reference first (a failed backward's graph holds its activations), so that
            # empty_cache can give the memory back before the next, smaller try.
            reserve = x = y = loss = None  # noqa: F841
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    micro_found = halve_until_fits(micro, fits)
    set_rng_state(saved_rng)
    torch.cuda.reset_peak_memory_stats(rt.device)
    return micro_found


def plan_micro_batches(stages: Iterable, shape: ModelShape, rt: Runtime, configured: int | None,
                       probe: Callable[[int, int], int | None],
                       layout: Mapping[str, int] | None = None, splits: int = 1) -> dict[int, int]:
    """Micro-batch per stage index. On CUDA each stage's shape is run once by ``probe(seq_len, micro)``
    (:func:`probe_micro_batch` on the run's module), so no stage change can run out of memory later; this
    also compiles every stage's graph before the clock starts. Under DDP every rank takes the smallest
    micro-batch any rank found (different accumulation counts would hang the gradient all-reduce). ``splits``:
    the micro-batches per step the noise scale asks for (:func:`noise_splits`). On CPU
    the largest divisor of the local batch whose estimated memory fits in the host's
    (:func:`host_micro_batch`, with FSDP sharding and activation checkpointing as ``layout`` says): the whole batch for any model and shape a CPU trains at a useful speed.
    A stage that does not fit even at micro-batch 1 is a one-line GradusError."""
    chosen: dict[int, int] = {}
    budget = host_memory_budget() if rt.device.type == "cpu" else None
    for s in stages:
        micro = configured_micro_batch(s.batch_size // rt.world_size, configured, splits)
        if rt.device.type == "cpu" and s.steps > 0:
            micro = rt.min_over_ranks(host_micro_batch(shape, s.seq_len, micro, rt.precision, budget, layout) or 0)
            if micro == 0:
                need = estimate_memory(shape, s.seq_len, 1, rt.precision, **(layout or {})).total
                raise GradusError(
                    f"curriculum.stages[{s.index}] (seq_len {s.seq_len}) needs about {need / 2**30:.1f} GiB "
                    f"even at micro-batch 1, more than the {(budget or 0) / 2**30:.1f} GiB this machine has "
                    f"free; use a smaller model or a shorter seq_len, or train on a GPU"
                )
        elif rt.device.type == "cuda" and s.steps > 0:
            # 0 = "not even 1 fits" on some rank: every rank learns it from the same all-reduce, so
            # all of them stop with the error instead of some waiting for the others forever.
            found = probe(s.seq_len, micro) or 0
            micro = rt.min_over_ranks(found)
            if 0 < micro < found:
                # Run the agreed shape once too: the graph is specialised on it (dynamic=False), and
                # compiling it here keeps the compile out of the first timed step.
                probe(s.seq_len, micro)
            if micro == 0:
                raise GradusError(
                    f"curriculum.stages[{s.index}] (seq_len {s.seq_len}) does not fit in memory even at "
                    f"micro-batch 1 on {torch.cuda.get_device_name(rt.device)}; use a smaller model, "
                    f"a shorter seq_len, or more GPUs"
                )
        chosen[s.index] = micro
    return chosen
