"""One optimizer step, shared by the trainer and the LR finder so both train exactly alike."""

from __future__ import annotations

import contextlib
import math

import torch

from gradus.config import OptimConfig
from gradus.model.gpt import param_groups
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
