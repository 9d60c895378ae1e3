"""Reading a step's loss and gradient norm without stalling the GPU: one step late between sync points.

On CUDA, turning the loss or the gradient norm into a Python number waits until the device has finished
the step (a host sync), so the GPU then sits idle while Python fetches and launches the next step. With
``train.host_sync: lagged`` (what ``auto`` picks on CUDA with the fused AdamW) nothing in a step waits for
the device:

* a non-finite loss or gradient norm skips the update *on the device*: the fused AdamW takes a
  ``found_inf`` flag and then leaves the weights, the moments and the step count as they were (the
  same mechanism the fp16 gradient scaler uses);
* the trainer reads step N's loss, norm and "applied" after it has queued step N+1 (one transfer), and
  the guard, the throughput window and ``on_step`` observers see step N then;
* at every **sync point** (a logging step, an evaluation, a checkpoint, a stage end, the end of the run,
  ``--stop-at-step``, and a signal on a single process: :meth:`gradus.train.cadence.Due.read_now`) the
  step's own values are read at once, so every record, evaluation and checkpoint holds exactly what an
  every-step run would (the guard's state in a checkpoint included: a resumed run continues exactly).

What is one step late: a loss spike's LR back-off starts one step later than with ``every_step``, a run of
non-finite steps is counted (and rolled back) one step later, and under DDP a signal is agreed on at the
next sync point rather than the next step. With ``every_step`` every step is a sync point and the trainer
behaves as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from gradus.curriculum import StageState
from gradus.errors import ConfigError


def lagged_mode(host_sync: str, device: torch.device, optimizer: torch.optim.Optimizer) -> bool:
    """Whether to read step values one step late: ``lagged``, or ``auto`` on CUDA, where the optimizer is the
    fused AdamW (which can skip a bad step on the device). ``lagged`` without it is refused in one line."""
    fused = bool(optimizer.defaults.get("fused"))
    if host_sync == "lagged" and not fused:
        raise ConfigError("train.host_sync=lagged: a non-finite step is skipped on the device by the fused AdamW, "
                          "which this run does not use; set optim.fused: on or host_sync: every_step")
    return host_sync == "lagged" or (host_sync == "auto" and device.type == "cuda" and fused)


def skip_on_device(optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """Step the fused AdamW unless the loss or the gradient norm is not finite, deciding on the device (no
    host sync). Returns the "applied" flag as a device tensor."""
    ok = torch.isfinite(loss) & torch.isfinite(grad_norm)
    optimizer.found_inf = (~ok).float()  # read by the fused kernel: 1 = leave everything as it was
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf  # never left behind for a step that decides on the host
    return ok


@dataclass
class DeviceValues:
    """A step's loss (mean over ranks), gradient norm before clipping and "applied" flag, still on the device."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    applied: torch.Tensor

    def read(self) -> tuple[float, float, bool]:
        """The three as Python values, in one device-to-host transfer (this is the host sync)."""
        loss, norm, applied = torch.stack([self.loss.float(), self.grad_norm.float(), self.applied.float()]).tolist()
        return loss, norm, bool(applied)


@dataclass
class StepDone:
    """A step the trainer has run and counted, whose values may still be on the device."""

    state: StageState
    """The stage state it ran in."""
    step: int
    """Steps done, this one included."""
    tokens: int
    """Tokens trained on, this step's included."""
    started: float
    """``time.perf_counter()`` at its start."""
    values: DeviceValues | tuple[float, float, bool]
    noise: Any = None
    """The step's gradient noise-scale sample (:class:`gradus.train.noise_scale.NoiseSample`, still on the
    device), or None where it is not measured; read when the step's figures are."""
    seconds: float = 0.0
    """Its share of the trainer's clock (set when the loop moves on from it)."""
    _figures: tuple[float, float, bool] | None = field(default=None, init=False, repr=False)

    def resolve(self) -> tuple[float, float, bool]:
        """(loss, grad_norm, applied) as Python values; reads the device the first time only."""
        if self._figures is None:
            self._figures = self.values.read() if isinstance(self.values, DeviceValues) else self.values
        return self._figures


class LateReader:
    """Holds the one step whose figures are still on the device, and hands the trainer the steps to settle."""

    def __init__(self) -> None:
        self.pending: StepDone | None = None

    def take(self, done: StepDone, sync: bool, device: torch.device) -> list[StepDone]:
        """The steps whose figures are read now, in order: the pending one (read now that ``done`` is queued
        behind it), and ``done`` itself at a sync point (else it becomes the pending one). Sets ``done``'s
        share of the clock: from its start to here, which includes waiting for the step before it (lagged)
        or for itself (at a sync point, where CUDA is synchronised so the time is the device's)."""
        ready = [d for d in (self.pending, done if sync else None) if d is not None]
        for d in ready:
            d.resolve()  # the host sync
        if sync and device.type == "cuda":
            torch.cuda.synchronize(device)
        done.seconds = time.perf_counter() - done.started
        self.pending = None if sync else done
        return ready
