"""What a step needs, as pure functions of a :class:`Schedule` and the two counters (step, tokens).

No caches and no mutable state: the same (schedule, step, tokens) always gives the same answer, so the
trainer, the data pipeline's prefetch thread and a resumed run agree without sharing anything.

Two stage lookups, on purpose:

* :func:`stage_index_at` (``step``, ``tokens``) is *the* stage of the step about to run, from the real
  counters a checkpoint saves: token-budget stages switch when ``tokens`` reaches their budget sum.
* :func:`stage_of_step` (``step`` alone) reads the stage table. Use it where only a step number is known:
  the stage the *previous* step was in, the LR of an arbitrary step, the tokens at step k. It agrees with
  :func:`stage_index_at` on the counters a run really has (``tokens == tokens_at_step(step)``), because
  every step of a stage adds the same tokens and resolution simulated exactly that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gradus.curriculum.schedule import Schedule, StagePlan


@dataclass(frozen=True)
class StageState:
    """Everything the trainer and data pipeline need for the step about to run."""

    step: int
    """The step about to run (optimizer steps taken so far)."""
    tokens: int
    """Training tokens consumed so far."""
    stage_index: int
    """Index of the stage the step belongs to."""
    stage_name: str
    """Name of that stage."""
    num_stages: int
    """Stages in the curriculum."""
    seq_len: int
    """Tokens per sequence of this step."""
    batch_size: int
    """Sequences in this step (all ranks together)."""
    tokens_per_step: int
    """batch_size × seq_len."""
    lr: float
    """Learning rate of this step (before any guard back-off)."""
    peak_lr: float
    """The stage's peak LR."""
    warmup_progress: float
    """How far through its warmup the step is, in (0, 1]; 1 after the warmup."""
    grad_clip: float
    """Gradient-norm clip."""
    mix: dict[str, float] = field(default_factory=dict)
    """Source weights of this step."""
    done: bool = False
    """True when training stops before this step."""
    done_reason: str | None = None
    """Why training stops, in words (None while it runs)."""
    stage_start_step: int = 0
    """First step of the stage."""
    stage_end_step: int = 0
    """One past the last step of the stage."""
    rope_scaling: float = 1.0
    """RoPE position-interpolation factor."""
    kind: str = "pretrain"
    """The stage's kind: pretrain (packed documents) or sft (one chat record per row, assistant loss)."""


def stage_index_at(schedule: Schedule, step: int, tokens: int) -> int:
    """The stage the next step belongs to, from the real counters. Token-budget stages switch exactly at
    their budget sums.

    Stages that never run (training stops first, or an earlier stage overshot their whole budget) are
    skipped, so a finished run reports the stage it finished in."""
    index = 0
    for s in schedule.stages:
        if s.steps == 0:
            continue
        reached = tokens >= s.token_threshold if s.token_threshold is not None else step >= s.start_step
        if reached:
            index = s.index
    return index


def stage_of_step(schedule: Schedule, step: int) -> int:
    """The stage of a step number, read from the table (see the module note for why both lookups exist)."""
    index = 0
    for s in schedule.stages:
        if s.steps and step >= s.start_step:
            index = s.index
    return index


def tokens_at_step(schedule: Schedule, step: int) -> int:
    """The token counter before step ``step`` runs: the tokens of all earlier steps (past the end of the
    run, the last running stage's shape continues)."""
    s = schedule.stages[stage_of_step(schedule, step)]
    return s.start_tokens + (step - s.start_step) * s.tokens_per_step


def lr_at(schedule: Schedule, step: int, stage_index: int | None = None) -> float:
    """Learning rate of the step with index ``step`` (before any guard back-off); ``stage_index``
    defaults to :func:`stage_of_step`."""
    k = stage_of_step(schedule, step) if stage_index is None else stage_index
    return lr_from(schedule, step, k, 0.0 if k == 0 else schedule.end_lrs[k - 1])


def lr_from(schedule: Schedule, step: int, k: int, warmup_start: float) -> float:
    """The LR of ``step`` in stage ``k`` when the stage's warmup ramps from ``warmup_start`` (the end LR
    of stage k-1; 0 for stage 0). Resolution uses it to fill :attr:`Schedule.end_lrs` in order."""
    s = schedule.stages[k]
    i = step - s.start_step
    per_stage = not schedule.is_global
    target = s.peak_lr * global_factor(schedule, step) if schedule.is_global else _in_stage(s, i)
    if s.warmup_steps and i < s.warmup_steps and (k > 0 or per_stage):
        ramp_to = s.peak_lr if per_stage else target
        return warmup_start + (ramp_to - warmup_start) * (i + 1) / s.warmup_steps
    return target


def _in_stage(s: StagePlan, i: int) -> float:
    """Per-stage decay after warmup: cosine/linear from peak to min_lr_ratio × peak over the stage."""
    floor = s.peak_lr * s.min_lr_ratio
    span = max(1, s.steps - s.warmup_steps)
    p = min(1.0, max(0.0, (i - s.warmup_steps) / span))
    if s.decay == "cosine":
        return floor + (s.peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
    if s.decay == "linear":
        return s.peak_lr - (s.peak_lr - floor) * p
    return s.peak_lr


def global_factor(schedule: Schedule, step: int) -> float:
    """The one curve of the global modes, a factor in [floor, 1] that scales each stage's peak (stage 0's
    warmup is this curve's). After one linear warmup over ``global_warmup_steps``:

    * ``global``: the curriculum's decay (cosine by default) to min_lr_ratio over the rest of the run;
    * ``wsd``: 1 until the last ``cooldown_steps``, then linear or 1-sqrt down towards floor_ratio;
    * ``linear``: a straight line towards 0 (decay to zero, D2Z).

    Progress ``p`` runs over the decaying steps as (step - start) / (end - start), so the first decaying
    step is at the peak and the last one a step short of the floor, the same convention for all three."""
    total = max(1, schedule.total_steps)
    warm = schedule.global_warmup_steps
    if step < warm:
        return (step + 1) / warm
    if schedule.mode == "wsd":
        start = max(warm, total - schedule.cooldown_steps)
        if step < start:
            return 1.0
        p = min(1.0, (step - start) / max(1, total - start))
        floor = schedule.floor_ratio or 0.0
        return floor + (1 - floor) * (1 - p if schedule.cooldown_shape == "linear" else 1 - math.sqrt(p))
    p = min(1.0, (step - warm) / max(1, total - warm))
    if schedule.mode == "linear":
        floor = schedule.floor_ratio or 0.0
        return floor + (1 - floor) * (1 - p)
    ratio = schedule.min_lr_ratio
    if schedule.decay == "cosine":
        return ratio + (1 - ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule.decay == "linear":
        return 1.0 - (1 - ratio) * p
    return 1.0


def _done_reason(schedule: Schedule, step: int, tokens: int) -> str | None:
    if schedule.target_tokens is not None and tokens >= schedule.target_tokens:
        return f"reached target_tokens={schedule.target_tokens}"
    if schedule.max_steps is not None and step >= schedule.max_steps:
        return f"reached max_steps={schedule.max_steps}"
    if step >= schedule.total_steps:
        return "reached the end of the last stage"
    return None


def state_at(schedule: Schedule, step: int, tokens: int) -> StageState:
    """The curriculum state for the step about to run, from the two saved counters."""
    k = stage_index_at(schedule, step, tokens)
    s = schedule.stages[k]
    done_reason = _done_reason(schedule, step, tokens)
    i = step - s.start_step
    if schedule.is_global and step < schedule.global_warmup_steps:  # the run's one warmup, in whichever stage
        warmup_progress = (step + 1) / schedule.global_warmup_steps
    elif k == 0 and schedule.is_global:
        warmup_progress = 1.0
    else:
        warmup_progress = 1.0 if s.warmup_steps == 0 else min(1.0, max(0, i + 1) / s.warmup_steps)
    return StageState(
        step=step,
        tokens=tokens,
        stage_index=k,
        stage_name=s.name,
        num_stages=len(schedule.stages),
        seq_len=s.seq_len,
        batch_size=s.batch_size,
        tokens_per_step=s.tokens_per_step,
        lr=lr_at(schedule, step, k),
        peak_lr=s.peak_lr,
        warmup_progress=warmup_progress,
        grad_clip=s.grad_clip,
        mix=dict(s.mix),
        done=done_reason is not None,
        done_reason=done_reason,
        stage_start_step=s.start_step,
        stage_end_step=s.end_step,
        rope_scaling=s.rope_scaling,
        kind=s.kind,
    )
