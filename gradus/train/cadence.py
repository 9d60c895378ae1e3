"""What follows step k: one pure decision, from the counters alone.

After each step the trainer asks :func:`due_after` once: whether the step is logged, evaluated,
checkpointed, ends its stage (or the run), reaches ``--stop-at-step``, and so whether its figures must be
read at once rather than one step late (:meth:`Due.read_now`, :mod:`gradus.train.lag`). Every rank decides
alike from the same counters and the config, and a resumed run decides as the uninterrupted one did: the
answer depends on nothing but (step, tokens, tokens at the last checkpoint, the stage states around it).
``tests/test_cadence.py`` holds it as a table. No torch, no state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradus.config import GradusConfig, TrainConfig
    from gradus.curriculum import StageState


@dataclass(frozen=True)
class Due:
    """What follows the step just counted, decided once from the counters (every rank decides alike)."""

    log: bool
    """A logging step (``logging.log_every``)."""
    evaluate: bool
    """An evaluation on the cadence (:func:`evaluation_due`); a stage end may add one (``eval_at_stage_change``,
    in :attr:`evaluate_now`)."""
    checkpoint: bool
    """A checkpoint on the cadence or at a stage end (:func:`checkpoint_due`)."""
    stage_end: bool
    """The step ends its stage or the run."""
    stop_at_step: bool
    """``--stop-at-step`` is reached."""
    evaluate_at_stage_end: bool = False
    """``train.eval_at_stage_change``: a stage end is evaluated too."""

    @property
    def evaluate_now(self) -> bool:
        """Whether the step is evaluated: on the cadence, or at a stage end when configured."""
        return self.evaluate or (self.stage_end and self.evaluate_at_stage_end)

    def sync(self, signalled: bool) -> bool:
        """Whether the step's figures must be read at once: something above follows it, or a stop was asked
        for (``signalled``: only on a single process; under DDP every rank must decide alike, and a signal
        waits for the next sync point)."""
        return self.log or self.evaluate or self.checkpoint or self.stage_end or self.stop_at_step or signalled

    def read_now(self, lagged: bool, signalled: bool) -> bool:
        """Whether the step's figures are read now: always when nothing is read late (``lagged`` off), else
        at a sync point (:meth:`sync`)."""
        return not lagged or self.sync(signalled)


def crossed_multiple(tokens: int, step_tokens: int, every: int) -> bool:
    """Whether the step just counted (``tokens`` so far, ``step_tokens`` of them in this step) crossed a multiple
    of ``every`` tokens: the token count before the step and after it lie in different multiples. A step of any
    size crosses at most once per multiple reached, so a cadence by tokens holds over batch changes, and a resumed
    run crosses at the same steps as an uninterrupted one."""
    return tokens // every > (tokens - step_tokens) // every


def evaluation_due(train: TrainConfig, step: int, tokens: int, step_tokens: int) -> bool:
    """Whether the step just counted (``step``, ``tokens`` so far, ``step_tokens`` of them in this step) ends
    with an evaluation on the cadence: every ``train.eval_every_tokens`` tokens when that is set (the count
    crossed a multiple of it in this step), else every ``train.eval_every`` steps. Stateless, so a resumed run
    evaluates at the same points as an uninterrupted one."""
    every = train.eval_every_tokens
    if every:
        return crossed_multiple(tokens, step_tokens, every)
    return step % train.eval_every == 0


def checkpoint_due(train: TrainConfig, step: int, tokens: int, last_checkpoint_tokens: int, stage_end: bool) -> bool:
    """Whether the step just counted (``step``, ``tokens`` so far) ends with a checkpoint: at every stage end,
    every ``checkpoint_every`` steps, and once ``checkpoint_every_tokens`` tokens passed since the last one
    (at ``last_checkpoint_tokens``)."""
    if stage_end:
        return True
    if train.checkpoint_every and step % train.checkpoint_every == 0:
        return True
    return bool(train.checkpoint_every_tokens and tokens - last_checkpoint_tokens >= train.checkpoint_every_tokens)


def due_after(cfg: GradusConfig, step: int, tokens: int, last_checkpoint_tokens: int, state: StageState,
              nxt: StageState, stop_at_step: int | None = None) -> Due:
    """What follows the step just counted (``step`` steps and ``tokens`` tokens done, the last checkpoint at
    ``last_checkpoint_tokens``), run in ``state``; ``nxt`` is the next step's state (done at the run's end)."""
    t = cfg.train
    stage_end = bool(nxt.done or nxt.stage_index != state.stage_index)
    # The run's last window is logged even when it is shorter than log_every: a run of 98 steps at log_every
    # 10 would otherwise end its metrics at step 90, and gradus report would miss its last steps and tokens.
    # (A stop that is resumed logs nothing extra: its metrics then equal an uninterrupted run's.)
    return Due(log=step % cfg.logging.log_every == 0 or bool(nxt.done),
               evaluate=evaluation_due(t, step, tokens, state.tokens_per_step),
               checkpoint=checkpoint_due(t, step, tokens, last_checkpoint_tokens, stage_end),
               stage_end=stage_end,
               stop_at_step=stop_at_step is not None and step >= stop_at_step,
               evaluate_at_stage_end=t.eval_at_stage_change)
