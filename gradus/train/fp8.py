"""FP8 training (``train.precision: fp8``) through torchao's float8 linear layers.

Why here and not in the model: FP8 changes how a matmul is computed, not what the model is. The model stays the
one readable :class:`gradus.model.gpt.GPT`; before AdamW is built (and before FSDP2 shards it or torch.compile
wraps it), :func:`convert_model` swaps the chosen ``nn.Linear`` layers for torchao's ``Float8Linear``, which keeps
the same fp32 ``weight`` parameter (same name, same tensor) and casts its input, weight and output gradient to
float8 inside each matmul. So a checkpoint holds plain fp32 weights under the same names: a bf16 run resumes it,
``gradus export`` reads it, and an FP8 run resumes a bf16 checkpoint. Everything outside those matmuls (norms,
attention, the loss) runs under the bf16 autocast that ``precision: fp8`` also switches on.

Which layers (:func:`fp8_module_filter`): only ``nn.Linear`` layers inside the transformer blocks whose input
and output widths are both multiples of 16. Left in bf16, and why:

* the token embedding: a lookup, not a matmul (torchao converts ``nn.Linear`` only);
* the output head (``lm_head``, tied to the embedding by default): its logits feed the loss directly, the
  precision it is most sensitive to, and with tied weights it *is* the embedding table;
* any layer with a width that is not a multiple of 16: the FP8 GEMM (``torch._scaled_mm``) requires it.

Recipes (``train.fp8.recipe``): ``tensorwise`` (one scale per tensor, the fastest, and the one whose weights
FSDP2 can all-gather in float8) and ``rowwise`` (one scale per row: more robust to outliers, a little slower).

Where it runs: CUDA GPUs with FP8 tensor cores, compute capability 8.9 or higher (Ada: L4, L40S, RTX 4090;
Hopper: H100, H200; Blackwell). Elsewhere :func:`fp8_problem` says so in one line and names bf16, unless
``train.fp8.emulate`` asks for torchao's emulation (float8 rounding with high-precision matmuls): a code path for
tests and dry runs on a CPU, slower than bf16 and never a speed-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
from typing import Any

import torch
from torch import nn

FP8_MIN_CAPABILITY = (8, 9)
"""The lowest CUDA compute capability with FP8 tensor cores (Ada Lovelace)."""
ALIGNMENT = 16
"""Both widths of a converted layer must be multiples of this (the FP8 GEMM's requirement)."""
SKIPPED_NAMES = ("lm_head",)
"""Modules kept in bf16 by name: the output head (see the module docstring)."""
INSTALL_HINT = "pip install 'gradus-lm[fp8]' (or pip install torchao)"
"""How to get torchao, said by every refusal that needs it."""


def torchao_available() -> bool:
    """Whether torchao can be imported, without importing it (that is slow, and logs about its GPU kernels)."""
    return importlib.util.find_spec("torchao") is not None


def fp8_problem(device: torch.device, emulate: bool) -> str | None:
    """Why FP8 training cannot run on ``device`` (one line naming what to use instead), or None when it can:
    torchao is missing; a CPU without ``train.fp8.emulate``; a GPU below compute capability 8.9 without it."""
    if not torchao_available():
        return f"train.precision=fp8 needs torchao: {INSTALL_HINT}; or use train.precision=bf16"
    if emulate:
        return None
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < FP8_MIN_CAPABILITY:
            name = torch.cuda.get_device_name(device)
            return (f"train.precision=fp8 needs FP8 tensor cores (compute capability 8.9+: L4, L40S, RTX 4090, "
                    f"H100); {name} has {major}.{minor}; use train.precision=bf16")
        return None
    return (f"train.precision=fp8 needs a CUDA GPU with compute capability 8.9+ (this device is {device.type}); "
            f"use train.precision=bf16 or fp32 (train.fp8.emulate=true runs torchao's emulation: tests and dry "
            f"runs only, slower than bf16)")


def fp8_module_filter(module: nn.Module, fqn: str) -> bool:
    """True for a layer to convert to float8: an ``nn.Linear`` that is not the output head and whose input and
    output widths are multiples of :data:`ALIGNMENT`. ``fqn`` is the module's dotted name in the model.
    (torchao calls this for every module; the embedding is never a candidate, being no ``nn.Linear``.)"""
    if not isinstance(module, nn.Linear):
        return False
    if fqn.split(".")[-1] in SKIPPED_NAMES:
        return False
    return module.in_features % ALIGNMENT == 0 and module.out_features % ALIGNMENT == 0


@contextlib.contextmanager
def _quiet_torchao_import():
    """torchao logs a warning for each of its CUDA kernel libraries it cannot load (every CPU machine, every GPU
    of another architecture), and torch one about an enum torchao registers; the float8 training path uses
    neither. Both silenced while importing."""
    logs = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)


def float8_config(recipe: str, emulate: bool, all_gather: bool) -> Any:
    """torchao's ``Float8LinearConfig`` for a recipe (``tensorwise`` or ``rowwise``), with emulation on
    or off, and float8 all-gather under FSDP2 (tensorwise only: torchao offers it for no other recipe)."""
    with _quiet_torchao_import():
        from torchao.float8 import Float8LinearConfig
    base = Float8LinearConfig.from_recipe_name(recipe)
    # pad_inner_dim: the grad-weight matmul sums over a micro-batch's tokens (rows × length), which the FP8 GEMM
    # needs in multiples of 16 and nothing in a stage table guarantees (a 100-token stage at 2 rows is 200):
    # torchao pads it where needed rather than the backward stopping on the GPU. (Not yet run on a GPU here.)
    return dataclasses.replace(base, emulate=emulate, pad_inner_dim=True,
                               enable_fsdp_float8_all_gather=all_gather and recipe == "tensorwise")


def convert_model(model: nn.Module, recipe: str = "tensorwise", *, emulate: bool = False,
                  sharded: bool = False) -> list[str]:
    """Swap the layers :func:`fp8_module_filter` picks for torchao's ``Float8Linear``, in place; returns
    their names. Call it before AdamW is built, FSDP2 shards or torch.compile wraps the model. ``sharded``:
    FSDP2 will shard it, so the weights are all-gathered in float8 (tensorwise); otherwise the parameters
    stay plain fp32 tensors, which is what a checkpoint saves."""
    with _quiet_torchao_import():
        from torchao.float8 import convert_to_float8_training
    converted: list[str] = []

    def pick(module: nn.Module, fqn: str) -> bool:
        chosen = fp8_module_filter(module, fqn)
        if chosen:
            converted.append(fqn)
        return chosen

    convert_to_float8_training(model, module_filter_fn=pick, config=float8_config(recipe, emulate, sharded))
    return converted


def plain_tensors(tree: Any) -> Any:
    """``tree`` (a state dict, nested) with torchao's weight wrappers replaced by the plain tensors they wrap.

    Under FSDP2 with float8 all-gather, a float8 layer's weight (and AdamW's moments of it) is a tensor
    subclass (``WeightWithDynamicFloat8CastTensor``) inside the DTensor, so that FSDP gathers it in float8. A
    sharded checkpoint written from those would pickle torchao's class into every shard: unreadable without
    torchao and by ``torch.load(weights_only=True)``, so neither a bf16 run nor ``gradus export`` could read
    it. The wrapped tensor is the same storage, so saving it saves the same numbers, and loading into it (DCP
    loads in place) fills the weight the wrapper holds."""
    from torch.distributed.tensor import DTensor
    from torch.utils._pytree import tree_map_only

    def inner(t: torch.Tensor) -> torch.Tensor | None:
        wrapped = getattr(t, "_tensor", None)
        return wrapped if type(t) is not torch.Tensor and isinstance(wrapped, torch.Tensor) else None

    def plain(t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, DTensor):
            local = inner(t._local_tensor)
            if local is None:
                return t
            return DTensor.from_local(local, t.device_mesh, t.placements, run_check=False, shape=t.shape,
                                      stride=t.stride())
        local = inner(t)
        return t if local is None else local

    return tree_map_only(torch.Tensor, plain, tree)


def float8_layers(model: nn.Module) -> list[str]:
    """Names of the model's layers that compute in float8 (torchao's ``Float8Linear``)."""
    return [name for name, m in model.named_modules() if type(m).__name__ == "Float8Linear"]


def fp8_note(model: nn.Module, recipe: str, emulate: bool) -> str:
    """The run summary's line: how many linear layers compute in float8, the recipe, emulation, and how many
    stay in bf16 (the output head, widths not multiples of 16)."""
    total = sum(isinstance(m, nn.Linear) for m in model.modules())
    converted = len(float8_layers(model))
    return (f"fp8: {converted} of {total} linear layers in float8 ({recipe} scaling"
            f"{', emulated: a test path, slower than bf16' if emulate else ''}); {total - converted} kept in bf16 "
            f"(the output head, widths not multiples of 16)")
