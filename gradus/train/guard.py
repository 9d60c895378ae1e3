"""Loss-spike and NaN guard (no torch: it sees plain floats).

* A finite loss above ``spike_factor`` × the running mean of recent good losses is a spike: the LR is
  multiplied by ``lr_backoff`` and recovers linearly to full over ``recover_steps`` steps.
* A NaN/Inf loss or gradient norm: the step is skipped (the trainer zeroes the gradients).
* ``max_bad_steps`` bad steps in a row: roll back to the last good checkpoint with the LR halved for the
  rest of the run (``rollback_factor``), since replaying the same data at the same LR would diverge again.
  With ``skip_bad_batches`` the run skips on past those batches instead of rolling back.
* After ``max_rollbacks`` rollbacks (or skipped runs of bad steps) the next one is ``diverged``: the trainer
  stops with a one-line error instead of halving the LR forever.
* A resumed guard never keeps a rollback factor below ``min_lr_factor`` silently: it is raised to the floor
  and :attr:`LossGuard.notice` says so.

Every event is returned to the trainer, which logs it with its step.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from gradus.config import GuardConfig


@dataclass(frozen=True)
class GuardEvent:
    """Something the guard decided at a step: ``kind`` is spike, skip, rollback or diverged."""

    step: int
    kind: str
    loss: float
    detail: str
    since: int | None = None
    """For skip/rollback: the first step of the current run of non-finite steps."""


class LossGuard:
    """Watches the training loss; tells the trainer to back off, skip, or roll back."""

    def __init__(self, cfg: GuardConfig):
        self.cfg = cfg
        self.history: deque[float] = deque(maxlen=cfg.window)
        self.bad_in_row = 0
        self.bad_since: int | None = None
        self.spike_step: int | None = None
        self.rollback_factor = 1.0
        self.events_total = {"spike": 0, "skip": 0, "rollback": 0, "skip_run": 0}
        self.notice: str | None = None
        """Set by :meth:`load_state_dict` when it raised the LR factor to the floor: the trainer reports it."""

    def lr_factor(self, step: int) -> float:
        """Multiplier on the scheduled LR for ``step``: spike back-off recovering linearly, times the
        permanent factor left by rollbacks."""
        factor = self.rollback_factor
        if self.spike_step is not None:
            since = step - self.spike_step  # negative for the spike's own step: it ran before the back-off
            if 0 <= since < self.cfg.recover_steps:
                back = self.cfg.lr_backoff
                factor *= back + (1.0 - back) * since / self.cfg.recover_steps
        return factor

    def running_mean(self) -> float | None:
        """Mean of the recent good losses, or None before any."""
        return sum(self.history) / len(self.history) if self.history else None

    def observe(self, step: int, loss: float, grad_norm: float) -> GuardEvent | None:
        """Judge the step that just ran. Returns an event, or None when all is well.

        ``skip`` means: do not apply this step's update. ``rollback`` means: restore the last good
        checkpoint (the guard has already halved ``rollback_factor``).
        """
        if not self.cfg.enabled:
            self.history.append(loss)
            return None
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            if self.bad_in_row == 0:
                self.bad_since = step
            self.bad_in_row += 1
            if self.bad_in_row >= self.cfg.max_bad_steps:
                return self._bad_run(step, loss)
            self.events_total["skip"] += 1
            return GuardEvent(step, "skip", loss, f"non-finite loss={loss} grad_norm={grad_norm}; step skipped",
                              self.bad_since)
        self.bad_in_row, self.bad_since = 0, None
        mean = self.running_mean()
        event = None
        if (
            mean is not None
            and len(self.history) >= max(2, self.cfg.warmup_steps)
            and loss > self.cfg.spike_factor * mean
        ):
            self.spike_step = step + 1  # the back-off applies from the next step on
            self.events_total["spike"] += 1
            event = GuardEvent(
                step, "spike", loss,
                f"loss {loss:.4f} > {self.cfg.spike_factor:g} × running mean {mean:.4f}; LR × {self.cfg.lr_backoff:g}, "
                f"recovering over {self.cfg.recover_steps} steps",
            )
        else:
            # Spikes stay out of the running mean, so one spike does not raise the bar for the next.
            self.history.append(loss)
        return event

    def _bad_run(self, step: int, loss: float) -> GuardEvent:
        """``max_bad_steps`` non-finite steps in a row: roll back, skip on, or (past ``max_rollbacks``) give up."""
        since, n = self.bad_since, self.cfg.max_bad_steps
        self.bad_in_row, self.bad_since = 0, None
        runs = self.events_total["rollback"] + self.events_total.get("skip_run", 0)
        what = f"{n} non-finite steps in a row since step {since}"
        if runs >= self.cfg.max_rollbacks:
            return GuardEvent(step, "diverged", loss,
                              f"{what}, after {runs} rollbacks (train.guard.max_rollbacks={self.cfg.max_rollbacks})",
                              since)
        if self.cfg.skip_bad_batches:
            self.events_total["skip_run"] = self.events_total.get("skip_run", 0) + 1
            self.events_total["skip"] += 1
            return GuardEvent(step, "skip", loss, f"{what}; batches skipped (train.guard.skip_bad_batches)", since)
        self.rollback_factor *= 0.5
        self.events_total["rollback"] += 1
        return GuardEvent(step, "rollback", loss, f"{what}; LR factor now {self.rollback_factor:g}", since)

    def state_dict(self) -> dict:
        """Everything needed to resume the guard exactly."""
        return {
            "history": list(self.history),
            "bad_in_row": self.bad_in_row,
            "bad_since": self.bad_since,
            "spike_step": self.spike_step,
            "rollback_factor": self.rollback_factor,
            "events_total": dict(self.events_total),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        self.history = deque(state["history"], maxlen=self.cfg.window)
        self.bad_in_row = state["bad_in_row"]
        self.bad_since = state.get("bad_since")
        self.spike_step = state["spike_step"]
        self.rollback_factor = state["rollback_factor"]
        self.events_total = {"skip_run": 0, **state["events_total"]}
        self.notice = None
        if self.rollback_factor < self.cfg.min_lr_factor:
            self.notice = (
                f"the checkpoint's LR factor {self.rollback_factor:g} (after {self.events_total['rollback']} "
                f"rollbacks) is below train.guard.min_lr_factor={self.cfg.min_lr_factor:g}; raised to it"
            )
            self.rollback_factor = self.cfg.min_lr_factor
