"""An exponential moving average (EMA) of the weights, kept beside the trained ones.

Averaged weights often evaluate better than the last step's (they smooth the noise of the final,
low-LR steps), so a run with ``train.ema`` keeps a shadow copy of the model in float32, updated after
every ``every`` optimizer steps as ``shadow = decay · shadow + (1 − decay) · weights``. The shadow is a
whole model, so it is evaluated as it is (``val_ema/...``) and saved with the weights' own safetensors
code (``ema.safetensors`` in each checkpoint, and ``checkpoints/ema``). It is a Stateful part: its
tensors and update count ride in ``state.pt``, so a resumed run continues the same average bit for bit.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from gradus.config import EmaConfig


class WeightEMA:
    """The shadow model and its update rule (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, cfg: EmaConfig):
        self.decay = cfg.decay
        """Weight of the old average at each update, in (0, 1)."""
        self.every = cfg.every
        """Optimizer steps between updates."""
        self.updates = 0
        """Updates applied so far."""
        # float32 whatever the training dtype: a 0.999 average of bf16 weights would round away.
        self.model = copy.deepcopy(model).float().eval()
        """The averaged model (float32, evaluation mode, never trained)."""
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def maybe_update(self, step: int, model: torch.nn.Module, applied: torch.Tensor | None = None) -> bool:
        """Fold ``model``'s weights into the average when ``step`` (steps done) is a multiple of ``every``.
        ``applied``: the step's on-device flag where the host has not read it yet (``train.host_sync: lagged``):
        a skipped step (not applied) folds with weight 0, so the average moves only after real updates in
        either mode, without a sync. (``updates`` then counts it: a count of folds, not of moves.)"""
        if step % self.every != 0:
            return False
        shadow = list(self.model.parameters())
        live = [p.detach().float() for p in model.parameters()]
        weight: float | torch.Tensor = 1.0 - self.decay
        if applied is not None:
            weight = applied.to(shadow[0].device, torch.float32) * (1.0 - self.decay)
        torch._foreach_lerp_(shadow, live, weight)
        self.updates += 1
        return True

    def follow(self, model: torch.nn.Module) -> torch.nn.Module:
        """The averaged model, with ``model``'s current RoPE scaling (a long-context stage's)."""
        scaling = getattr(getattr(model, "shape", None), "rope_scaling", None)
        if hasattr(self.model, "set_rope_scaling") and scaling != self.model.shape.rope_scaling:
            self.model.set_rope_scaling(scaling)
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights (copies, on the CPU) and the update count."""
        return {"weights": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.model.load_state_dict(state["weights"])
        self.updates = int(state["updates"])


def ema_evaluation(ema: WeightEMA, model: torch.nn.Module, validation, rt) -> tuple[dict[str, float], str]:
    """Evaluate the averaged weights at the reference length (``validation``: the run's
    :class:`~gradus.train.evaluate.Validation`, ``rt`` its runtime): :func:`ema_record` of the figures."""
    return ema_record(validation.reference(ema.follow(model), rt.device, rt.autocast))


def ema_record(figures: dict[str, float]) -> tuple[dict[str, float], str]:
    """The ``val_ema/...`` keys of an evaluation record and the console's addition, from
    :func:`~gradus.train.evaluate.evaluate`'s figures of the averaged weights at the reference length."""
    record = {"val_ema/loss": figures["loss"], "val_ema/ppl": figures["ppl"], "val_ema/accuracy": figures["accuracy"]}
    return record, f"; EMA {figures['loss']:.4f}"
