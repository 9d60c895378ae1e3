"""Beyond one GPU: FSDP2 sharding and activation checkpointing, applied to the plain model.

``train.parallel: fsdp`` shards each transformer block and the root with FSDP2 (``fully_shard``): every rank
keeps 1/world of the weights, gradients and AdamW's moments, gathers a block's weights just before it runs
and reduce-scatters its gradients right after. It must be applied *before* the optimizer is built (it
replaces the parameters by sharded DTensors), so :func:`prepare_model` is the ``prepare`` hook of
:func:`gradus.train.build.build_training_parts`. ``train.activation_checkpointing`` recomputes a block's
activations in the backward pass (:func:`apply_activation_checkpointing`); it works with DDP and FSDP alike.

DDP stays in :func:`gradus.train.build.wrap_for_training`; the one place the loop must know which one runs
is gradient accumulation (:func:`deferred_grad_sync`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

from gradus.plan.memory import checkpointed_blocks, memory_layout  # noqa: F401 - memory_layout: for the trainer
from gradus.train.runtime import Runtime


def fsdp_api():
    """``(fully_shard, MixedPrecisionPolicy, FSDPModule)`` from where this torch keeps them: the public
    ``torch.distributed.fsdp`` since torch 2.6, ``torch.distributed._composable.fsdp`` before."""
    try:
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    return fully_shard, MixedPrecisionPolicy, FSDPModule


def apply_activation_checkpointing(model: torch.nn.Module, mode: str, every_k: int) -> list[int]:
    """Recompute the chosen blocks' activations in the backward pass (``torch.utils.checkpoint``,
    non-reentrant). The block's ``forward`` is replaced on the instance rather than the block wrapped, so
    parameter names (and so checkpoints, exports and the optimizer's groups) do not change; FSDP's hooks,
    added afterwards around the block's call, still gather the weights before the recomputation. Returns
    the indices checkpointed."""
    from torch.utils.checkpoint import checkpoint

    chosen = checkpointed_blocks(len(model.blocks), mode, every_k)
    for i in chosen:
        block = model.blocks[i]
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return chosen


def shards(rt: Runtime, parallel: str) -> bool:
    """Whether this run shards with FSDP: ``parallel: fsdp`` with more than one process (alone there is
    nothing to shard across; the run trains unsharded with a note, :func:`parallel_notes`)."""
    return parallel == "fsdp" and rt.distributed


def shard_model(model: torch.nn.Module, rt: Runtime) -> None:
    """FSDP2 in place: ``fully_shard`` on every transformer block, then the root (embedding, final norm,
    tied head). On CUDA with bf16 (and fp8, whose other layers compute in bf16), a mixed-precision policy
    (weights gathered in bf16, gradients reduced in fp32); the fp32 master weights and AdamW's moments stay
    sharded. Under fp8 with the tensorwise recipe the float8 layers' weights are gathered in float8 instead
    (:func:`gradus.train.fp8.convert_model` with ``sharded``, which must run before this)."""
    fully_shard, MixedPrecisionPolicy, _ = fsdp_api()
    kwargs = {}
    if rt.device.type == "cuda" and rt.precision in ("bf16", "fp8"):
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    last = len(model.blocks) - 1
    for i, block in enumerate(model.blocks):
        # The last block's weights would be gathered again at once by the root's backward: keep them.
        fully_shard(block, reshard_after_forward=i < last, **kwargs)
    fully_shard(model, **kwargs)


def prepare_model(model: torch.nn.Module, train, rt: Runtime) -> None:
    """Activation checkpointing, then (``parallel: fsdp`` under torchrun) FSDP2 sharding, as ``train`` (a
    :class:`~gradus.config.TrainConfig`) says: the ``prepare`` hook that runs before the optimizer is built."""
    apply_activation_checkpointing(model, train.activation_checkpointing, train.activation_checkpointing_every_k)
    if shards(rt, train.parallel):
        shard_model(model, rt)


def is_sharded(model: torch.nn.Module) -> bool:
    """True for a module FSDP2 sharded (its parameters are DTensors holding this rank's shard)."""
    return isinstance(model, fsdp_api()[2])


@contextlib.contextmanager
def deferred_grad_sync(net: torch.nn.Module, rt: Runtime) -> Iterator[None]:
    """Around a micro-batch whose gradients need not be averaged yet. DDP: ``no_sync`` (the all-reduce
    waits for the last micro-batch). FSDP: nothing, gradients are reduce-scattered after every micro-batch,
    so each rank only ever holds its shard of them (what the memory estimate counts). Alone: nothing."""
    if rt.distributed and hasattr(net, "no_sync") and not is_sharded(_unwrapped(net)):
        with net.no_sync():
            yield
    else:
        yield


def _unwrapped(net: torch.nn.Module) -> torch.nn.Module:
    """The module inside torch.compile's wrapper (``_orig_mod``), or ``net`` itself."""
    return getattr(net, "_orig_mod", net)


def parallel_notes(train, rt: Runtime, n_layers: int) -> list[str]:
    """Console lines for the run summary: how the ranks share the work and which blocks are recomputed."""
    notes = []
    checkpointed = len(checkpointed_blocks(n_layers, train.activation_checkpointing,
                                           train.activation_checkpointing_every_k))
    if train.parallel == "fsdp" and not rt.distributed:
        notes.append("parallel: fsdp on one process: nothing to shard across, training unsharded "
                     "(start with torchrun --nproc_per_node N to shard over N processes)")
    elif shards(rt, train.parallel):
        notes.append(f"parallel: FSDP2 over {rt.world_size} processes (weights, gradients and AdamW sharded)")
    planned = train.planned_world_size
    if planned is not None and planned != rt.world_size:
        notes.append(f"train.planned_world_size is {planned} but this run has {rt.world_size} processes: gradus plan's "
                     f"memory figures do not describe it")
    if checkpointed:
        notes.append(f"activation checkpointing: {checkpointed} of {n_layers} blocks recomputed in backward")
    return notes
