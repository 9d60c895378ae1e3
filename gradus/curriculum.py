"""The curriculum as a pure function of the counters: ``state_at(step, tokens) -> StageState``.

Layer 1: no torch, no I/O. A checkpoint stores only (step, tokens); everything else is recomputed here,
so the same table can be printed by ``gradus schedule``, planned by ``gradus plan`` and tested on tables.

Conventions
-----------
* ``step`` counts optimizer steps taken so far (the next step to run has index ``step``).
* ``tokens`` counts training tokens consumed so far (batch × seq_len per step, summed).
* Step-based stages switch when ``step`` reaches the stage's start step; token-budget stages switch
  when ``tokens`` reaches the running sum of budgets. Because every step of a stage has the same shape,
  both counters are deterministic, and the constructor simulates them to give each stage its step range
  and token range (:attr:`Curriculum.stages`). This is exact as long as the trainer counts
  batch × seq_len tokens per step (padding included), which is what ``tokens_per_step`` says.
* Stage 0 warms up from 0; a later stage with a warmup ramps linearly from where the previous stage
  ended to its own peak, so a switch never jumps the LR up in one step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from gradus.config import GradusConfig, StageConfig
from gradus.units import format_count, format_lr

CLIP_BY_LENGTH = ((128, 5.0), (512, 1.0))
"""clip_rule by_length: (max seq_len, clip) pairs; longer sequences get 0.5."""
CLIP_BY_LENGTH_LONG = 0.5


def _round_half_up(x: float) -> int:
    # Python's round() goes to the even neighbour (round(2.5) == 2); a batch size should not depend on that.
    return math.floor(x + 0.5)


def derive_batch(tokens_per_batch: int, seq_len: int, multiple: int) -> int:
    """Examples per step for a token budget per step: rounded to the nearest multiple of ``multiple``;
    when that budget holds fewer than ``multiple`` examples, the nearest whole number (never below 1)."""
    raw = tokens_per_batch / seq_len
    if raw >= multiple:
        return max(multiple, _round_half_up(raw / multiple) * multiple)
    return max(1, _round_half_up(raw))


def seq_batch_multiplier(seq_len: int, batch: int, max_seq_len: int) -> float:
    """The plans' LR rule: min(max_seq_len / seq_len, 4) × sqrt(batch / 32)."""
    return min(max_seq_len / seq_len, 4.0) * math.sqrt(batch / 32.0)


def clip_by_length(seq_len: int) -> float:
    """The plans' clip rule: seq_len ≤ 128 → 5.0, ≤ 512 → 1.0, else 0.5."""
    for limit, clip in CLIP_BY_LENGTH:
        if seq_len <= limit:
            return clip
    return CLIP_BY_LENGTH_LONG


@dataclass(frozen=True)
class StagePlan:
    """One resolved stage: every value effective, and where it starts and ends in steps and tokens."""

    index: int
    name: str
    seq_len: int
    batch_size: int
    tokens_per_step: int
    peak_lr: float
    lr_note: str
    warmup_steps: int
    decay: str
    min_lr_ratio: float
    grad_clip: float
    clip_note: str
    mix: dict[str, float]
    start_step: int
    end_step: int
    start_tokens: int
    end_tokens: int
    token_threshold: int | None
    """Token-budget stages: the running budget sum at which this stage begins (exact switch point)."""
    warmup_note: str = ""
    """How warmup_steps was derived (given, from warmup_tokens, or the default)."""
    lr_source: str = "base"
    """Which form set the peak: peak_lr, lr_multiplier, seq_batch (the rule) or base (optim.base_lr)."""
    rope_scaling: float = 1.0
    """RoPE position-interpolation factor in effect during this stage."""

    @property
    def steps(self) -> int:
        """Optimizer steps in this stage."""
        return self.end_step - self.start_step

    @property
    def tokens(self) -> int:
        """Training tokens in this stage."""
        return self.end_tokens - self.start_tokens

    @property
    def examples(self) -> int:
        """Training sequences in this stage."""
        return self.steps * self.batch_size

    def to_json(self) -> dict:
        """The shape ``gradus schedule --json`` prints."""
        out = asdict(self)
        out["steps"] = self.steps
        out["tokens"] = self.tokens
        out["examples"] = self.examples
        return out


@dataclass(frozen=True)
class StageState:
    """Everything the trainer and data pipeline need for the step about to run."""

    step: int
    tokens: int
    stage_index: int
    stage_name: str
    num_stages: int
    seq_len: int
    batch_size: int
    tokens_per_step: int
    lr: float
    peak_lr: float
    warmup_progress: float
    grad_clip: float
    mix: dict[str, float] = field(default_factory=dict)
    done: bool = False
    done_reason: str | None = None
    stage_start_step: int = 0
    stage_end_step: int = 0
    rope_scaling: float = 1.0


class Curriculum:
    """Ordered stages, resolved against the model, optimizer and stopping rules of one config."""

    def __init__(self, cfg: GradusConfig):
        self.cfg = cfg
        cur = cfg.curriculum
        self.max_steps = cfg.train.max_steps
        self.warnings: list[str] = []
        sources = [s.name for s in cfg.data.sources]
        self.token_based = any(st.tokens is not None for st in cur.stages)

        shapes = [self._shape(i, st) for i, st in enumerate(cur.stages)]
        mixes = self._mixes(cur.stages, sources)
        self.target_tokens = self._target(cur.stages)
        bounds = self._bounds(cur.stages, shapes)
        self.total_steps = bounds[-1][1]
        self.total_tokens = bounds[-1][3]

        plans: list[StagePlan] = []
        rope = cfg.model.rope_scaling
        for i, st in enumerate(cur.stages):
            rope = st.rope_scaling if st.rope_scaling is not None else rope
            seq_len, batch, tps = shapes[i]
            peak, lr_note, lr_source = self._peak_lr(st, seq_len, batch)
            clip, clip_note = self._clip(st, seq_len)
            start_step, end_step, start_tok, end_tok, threshold = bounds[i]
            warmup, warmup_note = self._warmup(i, st, tps)
            plans.append(
                StagePlan(
                    index=i,
                    name=st.name or f"stage{i + 1}",
                    seq_len=seq_len,
                    batch_size=batch,
                    tokens_per_step=tps,
                    peak_lr=peak,
                    lr_note=lr_note,
                    warmup_steps=warmup,
                    warmup_note=warmup_note,
                    lr_source=lr_source,
                    decay=st.decay or cur.decay,
                    min_lr_ratio=cur.min_lr_ratio if st.min_lr_ratio is None else st.min_lr_ratio,
                    grad_clip=clip,
                    clip_note=clip_note,
                    mix=mixes[i],
                    start_step=start_step,
                    end_step=end_step,
                    start_tokens=start_tok,
                    end_tokens=end_tok,
                    token_threshold=threshold,
                    rope_scaling=rope,
                )
            )
        self.stages = plans
        self._end_lrs: dict[int, float] = {}
        self._check_warnings()

    # ------------------------------------------------------------------------------ resolution
    def _shape(self, i: int, st: StageConfig) -> tuple[int, int, int]:
        if st.batch_size is not None:
            batch = st.batch_size
        else:
            assert st.tokens_per_batch is not None
            batch = derive_batch(st.tokens_per_batch, st.seq_len, st.batch_multiple)
            exact = st.tokens_per_batch / st.seq_len
            if batch != exact:
                self.warnings.append(
                    f"curriculum.stages[{i}]: tokens_per_batch={st.tokens_per_batch} / seq_len={st.seq_len} "
                    f"= {exact:g}, rounded to batch {batch} ({batch * st.seq_len} tokens/step)"
                )
        return st.seq_len, batch, batch * st.seq_len

    def _mixes(self, stages: list[StageConfig], sources: list[str]) -> list[dict[str, float]]:
        out: list[dict[str, float]] = []
        previous = {s: 1.0 / len(sources) for s in sources}
        for i, st in enumerate(stages):
            if st.mix is None:
                mix = dict(previous)
            else:
                total = sum(st.mix.values())
                if abs(total - 1.0) > 1e-6:
                    self.warnings.append(
                        f"curriculum.stages[{i}].mix sums to {total:g}; weights normalised to sum to 1"
                    )
                mix = {s: st.mix.get(s, 0.0) / total for s in sources}
            out.append(mix)
            previous = mix
        return out

    def _target(self, stages: list[StageConfig]) -> int | None:
        target = self.cfg.curriculum.target_tokens
        if self.token_based:
            budget = sum(st.tokens or 0 for st in stages)
            if target is None:
                return budget
            if target > budget:
                self.warnings.append(
                    f"curriculum.target_tokens={format_count(target)} exceeds the stages' budgets "
                    f"({format_count(budget)}); the last stage runs on to the target"
                )
        return target

    def _bounds(self, stages: list[StageConfig], shapes: list[tuple[int, int, int]]):
        """(start_step, end_step, start_tokens, end_tokens, token_threshold) per stage, by simulating the
        counters: within a stage every step adds the same tokens, so this is exact, not an estimate."""
        target = self.target_tokens
        max_steps = self.max_steps
        n = len(stages)
        out = []
        step, tokens = 0, 0
        threshold = 0
        for i, st in enumerate(stages):
            tps = shapes[i][2]
            start_step, start_tokens = step, tokens
            # Where would this stage end if nothing stopped training first?
            if self.token_based:
                this_threshold = threshold
                threshold += st.tokens or 0
                stage_end_tokens = threshold if i < n - 1 else max(threshold, target or 0)
                steps = max(0, math.ceil((stage_end_tokens - tokens) / tps))
            else:
                this_threshold = None
                if i < n - 1:
                    steps = max(0, (stages[i + 1].step or 0) - step)
                else:
                    steps = math.ceil(max(0, (target or 0) - tokens) / tps) if target is not None else None
            # The global stopping rules cut the stage short.
            if target is not None:
                steps_to_target = max(0, math.ceil((target - tokens) / tps))
                steps = steps_to_target if steps is None else min(steps, steps_to_target)
            if max_steps is not None:
                steps = max(0, max_steps - step) if steps is None else min(steps, max(0, max_steps - step))
            assert steps is not None
            step += steps
            tokens += steps * tps
            out.append((start_step, step, start_tokens, tokens, this_threshold))
        return out

    def _peak_lr(self, st: StageConfig, seq_len: int, batch: int) -> tuple[float, str, str]:
        """(peak LR, how it was derived in words, which form: peak_lr | lr_multiplier | seq_batch | base)."""
        base = self.cfg.optim.base_lr
        if st.peak_lr is not None:
            return st.peak_lr, f"peak_lr {format_lr(st.peak_lr)}", "peak_lr"
        if st.lr_multiplier is not None:
            return base * st.lr_multiplier, f"{st.lr_multiplier:g}× base {format_lr(base)}", "lr_multiplier"
        if st.lr_rule == "seq_batch":
            max_len = self.cfg.model.max_seq_len
            mult = seq_batch_multiplier(seq_len, batch, max_len)
            length, width = min(max_len / seq_len, 4.0), math.sqrt(batch / 32.0)
            return base * mult, (
                f"{mult:.3g}× base {format_lr(base)} (seq_batch: min({max_len}/{seq_len}, 4) × "
                f"sqrt({batch}/32) = {length:.3g} × {width:.3g})"
            ), "seq_batch"
        return base, f"base {format_lr(base)}", "base"

    def _clip(self, st: StageConfig, seq_len: int) -> tuple[float, str]:
        if st.grad_clip is not None:
            return st.grad_clip, "grad_clip"
        if st.clip_rule == "by_length":
            return clip_by_length(seq_len), "by_length"
        return self.cfg.curriculum.grad_clip, "default"

    def _warmup(self, i: int, st: StageConfig, tps: int) -> tuple[int, str]:
        if st.warmup_steps is not None:
            return st.warmup_steps, "warmup_steps"
        if st.warmup_tokens is not None:
            # Token-based adaptive warmup: the same number of tokens whatever the batch shape.
            steps = math.ceil(st.warmup_tokens / tps)
            if st.warmup_cap is not None and steps > st.warmup_cap:
                return st.warmup_cap, f"warmup_tokens {format_count(st.warmup_tokens)} capped at {st.warmup_cap}"
            return steps, f"warmup_tokens {format_count(st.warmup_tokens)} / {tps}"
        if i == 0 and self.cfg.curriculum.schedule == "per_stage":
            # An AdamW run started at its peak LR without warmup tends to diverge: default to the
            # global warmup fraction of the whole run.
            fraction = self.cfg.curriculum.global_warmup_fraction
            return max(1, round(fraction * self.total_steps)), f"default {fraction:g} of all steps"
        return 0, "none"

    def _check_warnings(self) -> None:
        rule_stages = [s for s, st in zip(self.stages, self.cfg.curriculum.stages, strict=True) if st.lr_rule == "seq_batch"]
        tps = [s.tokens_per_step for s in rule_stages]
        # "Constant" allows the few percent that rounding batches to whole examples costs (21 × 768).
        if len(rule_stages) > 1 and len({s.seq_len for s in rule_stages}) > 1 and max(tps) <= 1.1 * min(tps):
            self.warnings.append(
                "lr_rule seq_batch at constant tokens per batch counts the same effect twice: a shorter "
                "sequence already means a proportionally larger batch, so both factors of "
                "min(max_seq_len/seq_len, 4) × sqrt(batch/32) grow together; consider lr_multiplier"
            )
        for s in self.stages:
            if s.steps == 0:
                self.warnings.append(
                    f"stage {s.index} ({s.name}) never runs: training stops before it starts "
                    f"(target_tokens or max_steps)"
                )
            elif s.warmup_steps > s.steps:
                self.warnings.append(f"stage {s.index} ({s.name}): warmup {s.warmup_steps} > its {s.steps} steps")

    # ------------------------------------------------------------------------------- queries
    def stage_index_at(self, step: int, tokens: int) -> int:
        """The stage the next step belongs to. Token-budget stages switch exactly at their budget sums.

        Stages that never run (training stops first, or an earlier stage overshot their whole budget) are
        skipped, so a finished run reports the stage it finished in."""
        index = 0
        for s in self.stages:
            if s.steps == 0:
                continue
            reached = tokens >= s.token_threshold if s.token_threshold is not None else step >= s.start_step
            if reached:
                index = s.index
        return index

    def lr_at(self, step: int, stage_index: int | None = None) -> float:
        """Learning rate of the step with index ``step`` (before any guard back-off)."""
        k = self.stages_index_by_step(step) if stage_index is None else stage_index
        s = self.stages[k]
        i = step - s.start_step
        if self.cfg.curriculum.schedule == "global":
            target = s.peak_lr * self._global_factor(step)
        else:
            target = self._in_stage(s, i)
        if s.warmup_steps and i < s.warmup_steps and (k > 0 or self.cfg.curriculum.schedule == "per_stage"):
            start = 0.0 if k == 0 else self._end_lr(k - 1)
            ramp_to = s.peak_lr if self.cfg.curriculum.schedule == "per_stage" else target
            return start + (ramp_to - start) * (i + 1) / s.warmup_steps
        return target

    def stages_index_by_step(self, step: int) -> int:
        """Stage of a step number, from the simulated table (same as stage_index_at on the real counters)."""
        index = 0
        for s in self.stages:
            if s.steps and step >= s.start_step:
                index = s.index
        return index

    def _in_stage(self, s: StagePlan, i: int) -> float:
        """Per-stage decay after warmup: cosine/linear from peak to min_lr_ratio × peak over the stage."""
        floor = s.peak_lr * s.min_lr_ratio
        span = max(1, s.steps - s.warmup_steps)
        p = min(1.0, max(0.0, (i - s.warmup_steps) / span))
        if s.decay == "cosine":
            return floor + (s.peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
        if s.decay == "linear":
            return s.peak_lr - (s.peak_lr - floor) * p
        return s.peak_lr

    def _global_factor(self, step: int) -> float:
        """One linear warmup, then curriculum.decay (cosine by default) over the whole run: a factor in
        [min_lr_ratio, 1] that scales each stage's peak. Stage 0's warmup is this global one."""
        cur = self.cfg.curriculum
        total = max(1, self.total_steps)
        warm = self.global_warmup_steps()
        if step < warm:
            return (step + 1) / warm
        p = min(1.0, (step - warm) / max(1, total - warm))
        if cur.decay == "cosine":
            return cur.min_lr_ratio + (1 - cur.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
        if cur.decay == "linear":
            return 1.0 - (1 - cur.min_lr_ratio) * p
        return 1.0

    def _end_lr(self, k: int) -> float:
        """LR at the last step of stage k (where the next stage's warmup starts from); cached, because
        every warmup step of stage k+1 asks for it."""
        if k not in self._end_lrs:
            s = self.stages[k]
            if s.steps == 0:
                value = 0.0 if k == 0 else self._end_lr(k - 1)
            else:
                value = self.lr_at(s.end_step - 1, k)
            self._end_lrs[k] = value
        return self._end_lrs[k]

    def global_warmup_steps(self) -> int:
        """Warmup steps of the global schedule (0 in per_stage mode)."""
        cur = self.cfg.curriculum
        if cur.schedule != "global" or not cur.global_warmup_fraction:
            return 0
        return max(1, math.ceil(cur.global_warmup_fraction * max(1, self.total_steps)))

    def state_at(self, step: int, tokens: int) -> StageState:
        """The curriculum state for the step about to run, from the two saved counters."""
        k = self.stage_index_at(step, tokens)
        s = self.stages[k]
        done_reason = None
        if self.target_tokens is not None and tokens >= self.target_tokens:
            done_reason = f"reached target_tokens={self.target_tokens}"
        elif self.max_steps is not None and step >= self.max_steps:
            done_reason = f"reached max_steps={self.max_steps}"
        elif step >= self.total_steps:
            done_reason = "reached the end of the last stage"
        i = step - s.start_step
        if k == 0 and self.cfg.curriculum.schedule == "global" and self.global_warmup_steps():
            warmup_progress = min(1.0, (step + 1) / self.global_warmup_steps())
        else:
            warmup_progress = 1.0 if s.warmup_steps == 0 else min(1.0, max(0, i + 1) / s.warmup_steps)
        return StageState(
            step=step,
            tokens=tokens,
            stage_index=k,
            stage_name=s.name,
            num_stages=len(self.stages),
            seq_len=s.seq_len,
            batch_size=s.batch_size,
            tokens_per_step=s.tokens_per_step,
            lr=self.lr_at(step, k),
            peak_lr=s.peak_lr,
            warmup_progress=warmup_progress,
            grad_clip=s.grad_clip,
            mix=dict(s.mix),
            done=done_reason is not None,
            done_reason=done_reason,
            stage_start_step=s.start_step,
            stage_end_step=s.end_step,
            rope_scaling=s.rope_scaling,
        )

    def to_json(self) -> dict:
        """The schedule as data (``gradus schedule --json``)."""
        return {
            "stages": [s.to_json() for s in self.stages],
            "target_tokens": self.target_tokens,
            "total_steps": self.total_steps,
            "total_tokens": self.total_tokens,
            "max_steps": self.max_steps,
            "schedule": self.cfg.curriculum.schedule,
            "global_warmup_steps": self.global_warmup_steps(),
            "base_lr": self.cfg.optim.base_lr,
            "max_seq_len": self.cfg.model.max_seq_len,
            "sources": [src.name for src in self.cfg.data.sources],
            "warnings": list(self.warnings),
        }
