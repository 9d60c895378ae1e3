"""One optimizer step, shared by the trainer and the LR finder so both train exactly alike."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch

from gradus.config import OptimConfig
from gradus.model.gpt import param_groups
from gradus.model.sizes import ModelShape
from gradus.plan.memory import largest_fitting_micro_batch
from gradus.train.runtime import Runtime


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matmul weights only (:func:`param_groups`), the config's betas, eps and
    weight decay, and the fused kernel where configured (default: on CUDA)."""
    fused = {"auto": device.type == "cuda", "on": True, "off": False}[optim.fused]
    return torch.optim.AdamW(
        param_groups(model, optim.weight_decay),
        lr=optim.base_lr,
        betas=(optim.beta1, optim.beta2),
        eps=optim.eps,
        fused=fused or None,
    )


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
            total += 2 * p.numel() * p.element_size()
    return total


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


def host_micro_batch(shape: ModelShape, seq_len: int, micro: int, precision: str, budget: int | None) -> int | None:
    """On CPU, where running out of memory kills the process instead of raising: the largest divisor of
    ``micro`` whose estimated training memory (:func:`gradus.plan.memory.estimate_memory`: weights,
    gradients, AdamW's moments, activations and the logits, with :data:`~gradus.plan.memory.HEADROOM`) fits
    in ``budget`` bytes; ``micro`` itself when the budget is unknown; None when not even 1 fits. A 50k
    vocabulary at 65k tokens per step needs ~40 GB for the logits alone as one micro-batch."""
    if budget is None:
        return micro
    return largest_fitting_micro_batch(shape, seq_len, micro, budget, precision)


def optimizer_step(
    net: torch.nn.Module,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    lr: float,
    clip: float,
    micro: int,
    rt: Runtime,
) -> tuple[float, float, bool]:
    """Forward/backward over micro-batches of ``micro`` rows, clip to ``clip``, and (unless the loss or
    gradient is not finite) an AdamW step at ``lr``. ``net`` is what runs (DDP and/or compiled),
    ``model`` the plain module whose parameters are clipped. Returns (loss, grad_norm, applied).

    Each micro-batch is weighted by its share of the label tokens, so accumulation gives the same
    gradient as one pass over the whole batch whatever the masking; under DDP only the last micro-batch
    synchronises gradients.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    valid_total = max(1, int((labels != -100).sum()))
    starts = list(range(0, inputs.shape[0], micro))
    loss_sum = torch.zeros((), device=rt.device)
    for j, s in enumerate(starts):
        x = inputs[s : s + micro].to(rt.device, non_blocking=True)
        y = labels[s : s + micro].to(rt.device, non_blocking=True)
        weight = int((labels[s : s + micro] != -100).sum()) / valid_total
        last = j == len(starts) - 1
        sync = contextlib.nullcontext() if (last or not rt.distributed) else net.no_sync()
        with sync:
            with rt.autocast():
                _, loss = net(x, y)
            scaled = loss * weight
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += loss.detach().float() * weight
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
    loss_value = rt.mean(float(loss_sum))
    if scaler is not None:
        # With fp16 an overflowing gradient is routine: the scaler skips that step and lowers its scale.
        scaler.step(optimizer)
        scaler.update()
        applied = math.isfinite(grad_norm)
        grad_norm = grad_norm if math.isfinite(grad_norm) else 0.0
    elif math.isfinite(loss_value) and math.isfinite(grad_norm):
        optimizer.step()
        applied = True
    else:
        applied = False  # the caller's guard counts it; the update is skipped
    optimizer.zero_grad(set_to_none=True)
    return loss_value, grad_norm, applied
