"""One optimizer step, shared by the trainer and the LR finder so both train exactly alike.

The parts it steps are built by :mod:`gradus.train.build`; the micro-batch it accumulates over is chosen
by :mod:`gradus.train.micro_batch`.
"""

from __future__ import annotations

import contextlib
import math

import torch

from gradus.errors import GradusError
from gradus.train.lag import DeviceValues, skip_on_device
from gradus.train.noise_scale import (
    MicroBatchNorms,
    NoiseSample,
    ShardedMicroBatchNorms,
    loss_scale,
    unmeasured_reason,
)
from gradus.train.parallel import deferred_grad_sync, is_sharded
from gradus.train.runtime import Runtime


def batch_tensors(batch, rows: int, seq_len: int, stage_index: int, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """A data pipeline batch as (inputs, labels) tensors, checked to be ``rows`` × ``seq_len`` (the stage's
    local batch) and pinned on CUDA so the copies to the device can overlap."""
    inputs = torch.from_numpy(batch.inputs)
    labels = torch.from_numpy(batch.labels)
    if inputs.shape != (rows, seq_len):
        raise GradusError(
            f"data pipeline returned a batch of shape {tuple(inputs.shape)} for stage {stage_index}, "
            f"expected {(rows, seq_len)}"
        )
    if rt.device.type == "cuda":
        inputs, labels = inputs.pin_memory(), labels.pin_memory()
    return inputs, labels


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
    loss_multiplier: float = 1.0,
    lagged: bool = False,
    noise_hooks: MicroBatchNorms | ShardedMicroBatchNorms | None = None,
    uneven_tokens: bool = False,
) -> tuple[float, float, bool] | DeviceValues | tuple[tuple[float, float, bool] | DeviceValues, NoiseSample | None]:
    """Forward/backward over micro-batches of ``micro`` rows, clip to ``clip``, and (unless the loss or
    gradient is not finite) an AdamW step at ``lr``. ``net`` is what runs (DDP and/or compiled),
    ``model`` the plain module whose parameters are clipped. Returns (loss, grad_norm, applied).

    Each micro-batch is weighted by its share of the label tokens, so accumulation gives the same
    gradient as one pass over the whole batch whatever the masking; under DDP only the last micro-batch
    synchronises gradients (under FSDP every one reduce-scatters its shard: :func:`deferred_grad_sync`). ``loss_multiplier`` (1 but under fault injection, :mod:`gradus.train.faults`)
    scales the loss and so its gradients: NaN/Inf/×k losses then take the real path.

    ``uneven_tokens``: the ranks' batches may hold different numbers of label tokens (document packing's
    padding, sft records). DDP and FSDP average the ranks' gradients, so each micro-batch is then weighted by
    its tokens over the step's total on every rank, times the world size (one scalar all-reduce read on the
    host: a sync, paid only there): the step's gradient is the mean over all its real tokens, not the mean of
    the ranks' means. Concat pretraining has the same count on every rank and pays nothing.

    ``lagged`` (:mod:`gradus.train.lag`): nothing waits for the device; a non-finite step is skipped by the
    fused AdamW on the device and the three figures come back as :class:`DeviceValues` to read later.

    ``noise_hooks`` (:mod:`gradus.train.noise_scale`): the run's :class:`MicroBatchNorms` on ``model``'s
    parameters (built once, registered at their first use; under FSDP2 a :class:`ShardedMicroBatchNorms`, which
    reads the sharded gradients instead), armed for this step to take every micro-batch's gradient squared
    norm (outside the compiled forward); the call then returns ``(figures, sample)``, where
    ``figures`` is what the call returns without them and ``sample`` a :class:`NoiseSample` left on the device
    (no host sync: read it when the figures are read), or None where a step cannot measure it (one micro-batch on
    one process, or one per rank under FSDP: :func:`~gradus.train.noise_scale.unmeasured_reason`; the hooks stay disarmed).
    Without them (the default) nothing differs; with them, the loss, norm and weights are still bit-identical
    (the hooks only read the gradients).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    local_total = int((labels != -100).sum())
    valid_total = max(1, local_total)
    # Under DDP/FSDP with uneven label counts: the step's real tokens over every rank, and × W (see the docstring).
    global_share = (rt.world_size / max(1.0, round(rt.mean(float(local_total)) * rt.world_size))
                    if uneven_tokens and rt.distributed else None)
    starts = list(range(0, inputs.shape[0], micro))
    loss_sum = torch.zeros((), device=rt.device)
    norms = None
    if noise_hooks is not None and unmeasured_reason(len(starts), rt.world_size, is_sharded(model)) is None:
        norms = noise_hooks
        norms.start()  # armed for this step: disarmed below whatever happens
    try:
        for j, s in enumerate(starts):
            # Contiguous: the packer's rows are views of (seq_len + 1)-wide windows, and a compiled graph is
            # specialised on strides, so the start-up warm-up (gradus.train.warmup) could not match them.
            x = inputs[s : s + micro].to(rt.device, non_blocking=True).contiguous()
            y = labels[s : s + micro].to(rt.device, non_blocking=True).contiguous()
            valid = int((labels[s : s + micro] != -100).sum())
            weight = valid / valid_total if global_share is None else valid * global_share
            last = j == len(starts) - 1
            sync = contextlib.nullcontext() if last else deferred_grad_sync(net, rt)
            with sync:
                with rt.autocast():
                    _, loss = net(x, y)
                if loss_multiplier != 1.0:
                    loss = loss * loss_multiplier
                scaled = loss * weight
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            loss_sum += loss.detach().float() * weight
            if norms is not None:
                norms.end_micro_batch(weight, valid, last)  # backward has returned: all its hooks have run
    finally:
        if norms is not None:
            norms.stop()
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if hasattr(norm, "full_tensor"):  # FSDP: the norm of sharded gradients is a DTensor; one collective, here
        norm = norm.full_tensor()
    # The sample is built from the norm before clipping and before the optimizer step (queued, not read).
    sample = (norms.sample(norm, loss_scale(scaler), loss_multiplier, rt, token_weighted=global_share is not None)
              if norms is not None else None)
    out = _finish(optimizer, scaler, loss_sum, norm, rt, lagged)
    return (out, sample) if noise_hooks is not None else out


def _finish(optimizer, scaler, loss_sum: torch.Tensor, norm: torch.Tensor, rt: Runtime,
            lagged: bool) -> tuple[float, float, bool] | DeviceValues:
    """The optimizer step after clipping, decided on the host (one sync) or, ``lagged``, on the device."""
    if lagged:
        return _step_on_device(optimizer, scaler, loss_sum, norm, rt)
    grad_norm = float(norm)
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


def _step_on_device(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, loss_sum: torch.Tensor,
                    norm: torch.Tensor, rt: Runtime) -> DeviceValues:
    """The end of a lagged step: the optimizer step decided on the device (the fp16 scaler's own found_inf,
    else :func:`skip_on_device`), the figures left there."""
    loss = rt.mean_tensor(loss_sum)
    if scaler is not None:
        scaler.step(optimizer)  # the fused AdamW takes the scaler's found_inf: no host sync either
        scaler.update()
        applied = torch.isfinite(norm)
        norm = torch.where(applied, norm, torch.zeros_like(norm))
    else:
        applied = skip_on_device(optimizer, loss, norm)
    optimizer.zero_grad(set_to_none=True)
    return DeviceValues(loss, norm, applied)
