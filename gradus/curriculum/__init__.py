"""The curriculum as one pure function of the counters: ``state_at(schedule, step, tokens) -> StageState``.

Layer 1: no torch, no I/O. A config resolves once into a frozen :class:`Schedule`
(:func:`resolve_schedule`); everything a step needs is then a pure function of (schedule, step, tokens).
A checkpoint stores only (step, tokens); the rest is recomputed here, so the same table can be printed by
``gradus schedule``, planned by ``gradus plan``, predicted by the data pipeline and tested on tables::

    schedule = resolve_schedule(cfg)
    state = state_at(schedule, step, tokens)        # seq_len, batch, LR, clip, mix, done ...

Conventions
-----------
* ``step`` counts optimizer steps taken so far (the next step to run has index ``step``).
* ``tokens`` counts training tokens consumed so far (batch × seq_len per step, summed).
* Step-based stages switch when ``step`` reaches the stage's start step; token-budget stages switch
  when ``tokens`` reaches the running sum of budgets. Because every step of a stage has the same shape,
  both counters are deterministic, and resolution simulates them to give each stage its step range
  and token range (:attr:`Schedule.stages`). This is exact as long as the trainer counts
  batch × seq_len tokens per step (padding included), which is what ``tokens_per_step`` says.
* Stage 0 warms up from 0; a later stage with a warmup ramps linearly from where the previous stage
  ended to its own peak, so a switch never jumps the LR up in one step.

Modules: ``rules`` (batch, LR and clip rules), ``schedule`` (the frozen data), ``resolve`` (config →
schedule) and ``state`` (the lookups).
"""

from gradus.curriculum.resolve import resolve_schedule
from gradus.curriculum.rules import (
    CLIP_BY_LENGTH,
    CLIP_BY_LENGTH_LONG,
    clip_by_length,
    derive_batch,
    seq_batch_multiplier,
)
from gradus.curriculum.schedule import Schedule, StagePlan
from gradus.curriculum.state import (
    StageState,
    global_factor,
    lr_at,
    stage_index_at,
    stage_of_step,
    state_at,
    tokens_at_step,
)

__all__ = [
    "CLIP_BY_LENGTH",
    "CLIP_BY_LENGTH_LONG",
    "Schedule",
    "StagePlan",
    "StageState",
    "clip_by_length",
    "derive_batch",
    "global_factor",
    "lr_at",
    "resolve_schedule",
    "seq_batch_multiplier",
    "stage_index_at",
    "stage_of_step",
    "state_at",
    "tokens_at_step",
]
