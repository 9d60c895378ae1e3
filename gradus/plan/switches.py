"""Which memory switches a planned run needs: FSDP sharding over the GPUs, then activation checkpointing.

The worksheet (:mod:`.worksheet`) sizes the model from a compute budget; on several GPUs that model often
does not fit one device with a whole copy of the weights and AdamW (a 5.7B model needs ~100 GiB at
micro-batch 1 before any activation). :func:`choose_switches` turns on, in this order and only while a
stage still does not fit at micro-batch 1 by :func:`gradus.plan.memory.estimate_memory`: ``train.parallel:
fsdp`` (weights, gradients and AdamW split over the GPUs), then ``train.activation_checkpointing: full``
(each block keeps one tensor per token). The written config carries them and ``train.planned_world_size``,
so ``gradus plan --config`` checks the same layout it was planned with.

Pure Python: no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gradus.plan.hardware import format_bytes
from gradus.plan.memory import HEADROOM, estimate_memory, largest_fitting_micro_batch
from gradus.sizes import ModelShape


def _worst(shape: ModelShape, stages: Sequence[tuple[int, int]], gpus: int, memory: int, precision: str,
           layout: dict[str, int]) -> tuple[int, int] | None:
    """The first (seq_len, bytes at micro-batch 1) of a stage that does not fit, or None when all fit."""
    for seq_len, batch in stages:
        local = max(1, batch // gpus)
        if largest_fitting_micro_batch(shape, seq_len, local, memory, precision, **layout) is None:
            return seq_len, estimate_memory(shape, seq_len, 1, precision, **layout).total
    return None


def choose_switches(shape: ModelShape, stages: Sequence[tuple[int, int]], gpus: int, device_memory: int,
                    precision: str = "bf16") -> tuple[dict[str, Any], list[str]]:
    """The ``train`` settings a run of ``shape`` over ``stages`` ((seq_len, global batch) pairs) needs on
    ``gpus`` devices of ``device_memory`` bytes, and one line per switch saying why it is on (and, when
    even both are not enough, a warning line). More than one GPU also sets ``planned_world_size``."""
    train: dict[str, Any] = {"planned_world_size": gpus} if gpus > 1 else {}
    notes: list[str] = []
    cap = f"{HEADROOM:.0%} of {format_bytes(device_memory)}"
    layout = {"shards": 1, "checkpointed": 0}
    worst = _worst(shape, stages, gpus, device_memory, precision, layout)
    if worst is not None and gpus > 1:
        layout["shards"] = gpus
        sharded = estimate_memory(shape, worst[0], 1, precision, **layout).total
        train["parallel"] = "fsdp"
        notes.append(f"parallel: fsdp — a whole copy of the weights, gradients and AdamW needs "
                     f"~{format_bytes(worst[1])} per device at seq_len {worst[0]}, micro-batch 1 (more than {cap}); "
                     f"sharded over {gpus} GPUs ~{format_bytes(sharded)}")
        worst = _worst(shape, stages, gpus, device_memory, precision, layout)
    if worst is not None:
        layout["checkpointed"] = shape.n_layers
        still = _worst(shape, stages, gpus, device_memory, precision, layout)
        recomputed = estimate_memory(shape, worst[0], 1, precision, **layout).total
        train["activation_checkpointing"] = "full"
        notes.append(f"activation_checkpointing: full — ~{format_bytes(worst[1])} per device at seq_len {worst[0]}, "
                     f"micro-batch 1 without it; ~{format_bytes(recomputed)} with every block recomputed (about a "
                     f"third more compute per token: κ ≈ 8)")
        if still is not None:
            notes.append(f"warning: even so, seq_len {still[0]} needs ~{format_bytes(still[1])} per device, more "
                         f"than {cap}: use more GPUs, a smaller model or shorter sequences")
    return train, notes
