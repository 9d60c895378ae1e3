"""Resolving a config's curriculum into a :class:`Schedule`, once: shapes, mixes, token targets, step
ranges, peak LRs, clips, warmups, the end LR of every stage, and the warnings about what was rounded.

Step and token ranges come from simulating the counters: within a stage every step adds the same
tokens (batch × seq_len, padding included), so the simulation is exact, not an estimate.
"""

from __future__ import annotations

import dataclasses
import math

from gradus.config import GradusConfig, StageConfig
from gradus.curriculum.rules import (
    SEQ_BATCH_MULTIPLIER,
    clip_by_length,
    derive_batch,
    seq_batch_factors,
    seq_batch_multiplier,
    seq_batch_words,
)
from gradus.curriculum.schedule import Schedule, StagePlan
from gradus.curriculum.state import lr_from
from gradus.units import format_count, format_lr

Bounds = tuple[int, int, int, int, "int | None"]
"""(start_step, end_step, start_tokens, end_tokens, token_threshold) of one stage."""


def resolve_schedule(cfg: GradusConfig) -> Schedule:
    """The frozen schedule of ``cfg``: every stage's effective values and ranges, and the warnings."""
    cur = cfg.curriculum
    warnings: list[str] = []
    sources = [s.name for s in cfg.data.sources]
    token_based = any(st.tokens is not None for st in cur.stages)
    shapes = [_shape(i, st, warnings) for i, st in enumerate(cur.stages)]
    ramp = _batch_ramp(cfg, shapes)
    mixes = _mixes(cur.stages, sources, warnings)
    target = _target(cfg, token_based, warnings)
    bounds = _bounds(cur.stages, shapes, target, cfg.train.max_steps, token_based)
    total_steps = bounds[-1][1]

    plans: list[StagePlan] = []
    rope = cfg.model.rope_scaling
    for i, st in enumerate(cur.stages):
        rope = st.rope_scaling if st.rope_scaling is not None else rope
        seq_len, batch, tps = shapes[i]
        peak, lr_note, lr_source = _peak_lr(cfg, st, seq_len, batch)
        batch_lr_factor = None
        if ramp is not None:
            batch_lr_factor = (tps / ramp["reference_tokens_per_step"]) ** ramp["alpha"]
            peak *= batch_lr_factor
            if ramp["alpha"]:
                lr_note += (f" × ({tps}/{ramp['reference_tokens_per_step']})^{ramp['alpha']:g} "
                            f"= {batch_lr_factor:.3g} (batch ramp)")
        clip, clip_note = _clip(cfg, st, seq_len)
        start_step, end_step, start_tok, end_tok, threshold = bounds[i]
        warmup, warmup_note = _warmup(cfg, i, st, tps, total_steps)
        plans.append(StagePlan(
            index=i, name=st.name or f"stage{i + 1}", seq_len=seq_len, batch_size=batch, tokens_per_step=tps,
            peak_lr=peak, lr_note=lr_note, warmup_steps=warmup, warmup_note=warmup_note, lr_source=lr_source,
            decay=st.decay or cur.decay,
            min_lr_ratio=cur.min_lr_ratio if st.min_lr_ratio is None else st.min_lr_ratio,
            grad_clip=clip, clip_note=clip_note, mix=mixes[i], start_step=start_step, end_step=end_step,
            start_tokens=start_tok, end_tokens=end_tok, token_threshold=threshold, rope_scaling=rope,
            batch_lr_factor=batch_lr_factor, kind=st.kind,
        ))
    _check(cfg, plans, warnings)
    warm = _global_warmup_steps(cfg, total_steps, bounds)
    curve = _curve(cfg, total_steps, bounds)
    if curve.get("cooldown_steps", 0) > total_steps - warm:
        # The cooldown starts once the warmup has ended (state.global_factor): the table says where it does.
        warnings.append(f"the wsd warmup ({warm:,} steps) and cooldown ({curve['cooldown_steps']:,} steps) overlap "
                        f"in a run of {total_steps:,} steps: the LR peaks at step {warm:,} and cools down over the "
                        f"last {max(0, total_steps - warm):,}; shorten one of them")
        curve["cooldown_steps"] = max(0, total_steps - warm)
    schedule = Schedule(
        stages=tuple(plans), target_tokens=target, total_steps=total_steps, total_tokens=bounds[-1][3],
        max_steps=cfg.train.max_steps, mode=cur.schedule, decay=cur.decay, min_lr_ratio=cur.min_lr_ratio,
        global_warmup_steps=warm, base_lr=cfg.optim.base_lr,
        max_seq_len=cfg.model.max_seq_len, sources=tuple(sources), token_based=token_based,
        warnings=tuple(warnings), batch_ramp=ramp, **curve,
    )
    return dataclasses.replace(schedule, end_lrs=_end_lrs(schedule))


def steps_starting_below(bounds: list[Bounds], tokens: int) -> int:
    """How many steps of the table ``bounds`` start with the token counter below ``tokens``: the step count
    of an LR-curve segment given in tokens (``global_warmup_tokens``, ``cooldown_tokens``)."""
    count = 0
    for start_step, end_step, start_tokens, end_tokens, _ in bounds:
        steps = end_step - start_step
        if steps and tokens > start_tokens:
            tps = (end_tokens - start_tokens) // steps
            count += min(steps, math.ceil((tokens - start_tokens) / tps))
    return count


def _curve(cfg: GradusConfig, total_steps: int, bounds: list[Bounds]) -> dict:
    """The wsd / linear settings of :class:`Schedule` (its defaults for per_stage and global)."""
    cur = cfg.curriculum
    if cur.schedule == "wsd":
        if cur.cooldown_tokens is not None and total_steps:
            # In tokens: the steps that start inside the run's last cooldown_tokens tokens.
            cooldown = max(1, total_steps - steps_starting_below(bounds, bounds[-1][3] - cur.cooldown_tokens))
        else:  # at least one cooldown step, so a short run still ends below its peak
            cooldown = max(1, math.ceil(cur.cooldown_fraction * total_steps)) if total_steps else 0
        floor = 0.0 if cur.decay_to == "zero" else cur.min_lr_ratio
        return {"cooldown_steps": cooldown, "cooldown_shape": cur.cooldown_shape, "floor_ratio": floor}
    if cur.schedule == "linear":
        return {"floor_ratio": 0.0}
    return {}


def _batch_ramp(cfg: GradusConfig, shapes: list[tuple[int, int, int]]) -> dict | None:
    """The batch ramp as data, with its reference tokens per step resolved (None without a ramp)."""
    ramp = cfg.curriculum.batch_ramp
    if ramp is None:
        return None
    if ramp.reference_tokens is not None:
        reference, source = ramp.reference_tokens, "reference_tokens"
    else:
        index = len(shapes) - 1 if ramp.reference_stage is None else ramp.reference_stage
        reference, source = shapes[index][2], f"stage {index}"
    return {"direction": ramp.direction, "alpha": ramp.alpha, "reference_tokens_per_step": reference,
            "reference": source}


def _end_lrs(schedule: Schedule) -> tuple[float, ...]:
    """LR at the last step of each stage, in order: stage k's warmup ramps from stage k-1's end LR, and a
    stage that never runs passes its predecessor's on."""
    ends: list[float] = []
    for k, s in enumerate(schedule.stages):
        previous = ends[-1] if k else 0.0
        ends.append(previous if s.steps == 0 else lr_from(schedule, s.end_step - 1, k, previous))
    return tuple(ends)


def _global_warmup_steps(cfg: GradusConfig, total_steps: int, bounds: list[Bounds]) -> int:
    cur = cfg.curriculum
    if cur.schedule == "per_stage":
        return 0
    if cur.global_warmup_tokens is not None:
        return max(1, steps_starting_below(bounds, cur.global_warmup_tokens))
    if not cur.global_warmup_fraction:
        return 0
    return max(1, math.ceil(cur.global_warmup_fraction * max(1, total_steps)))


def _shape(i: int, st: StageConfig, warnings: list[str]) -> tuple[int, int, int]:
    """(seq_len, batch, tokens per step) of a stage."""
    if st.batch_size is not None:
        batch = st.batch_size
    else:
        assert st.tokens_per_batch is not None
        batch = derive_batch(st.tokens_per_batch, st.seq_len, st.batch_multiple)
        exact = st.tokens_per_batch / st.seq_len
        if batch != exact:
            warnings.append(
                f"curriculum.stages[{i}]: tokens_per_batch={st.tokens_per_batch} / seq_len={st.seq_len} "
                f"= {exact:g}, rounded to batch {batch} ({batch * st.seq_len} tokens/step)"
            )
    return st.seq_len, batch, batch * st.seq_len


def _mixes(stages: list[StageConfig], sources: list[str], warnings: list[str]) -> list[dict[str, float]]:
    """Each stage's weights over every source, normalised; a stage without a mix keeps the previous one."""
    out: list[dict[str, float]] = []
    previous = {s: 1.0 / len(sources) for s in sources}
    for i, st in enumerate(stages):
        if st.mix is None:
            mix = dict(previous)
        else:
            total = sum(st.mix.values())
            if abs(total - 1.0) > 1e-6:
                warnings.append(f"curriculum.stages[{i}].mix sums to {total:g}; weights normalised to sum to 1")
            mix = {s: st.mix.get(s, 0.0) / total for s in sources}
        out.append(mix)
        previous = mix
    return out


def _target(cfg: GradusConfig, token_based: bool, warnings: list[str]) -> int | None:
    """The token target: given, or (token-budget stages) the sum of the budgets."""
    target = cfg.curriculum.target_tokens
    if token_based:
        budget = sum(st.tokens or 0 for st in cfg.curriculum.stages)
        if target is None:
            return budget
        if target > budget:
            warnings.append(
                f"curriculum.target_tokens={format_count(target)} exceeds the stages' budgets "
                f"({format_count(budget)}); the last stage runs on to the target"
            )
    return target


def _bounds(stages: list[StageConfig], shapes: list[tuple[int, int, int]], target: int | None,
            max_steps: int | None, token_based: bool) -> list[Bounds]:
    """(start_step, end_step, start_tokens, end_tokens, token_threshold) per stage, by simulating the
    counters: within a stage every step adds the same tokens, so this is exact, not an estimate."""
    n = len(stages)
    out: list[Bounds] = []
    step, tokens = 0, 0
    threshold = 0
    for i, st in enumerate(stages):
        tps = shapes[i][2]
        start_step, start_tokens = step, tokens
        # Where would this stage end if nothing stopped training first?
        steps: int | None
        if token_based:
            this_threshold: int | None = threshold
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


def _peak_lr(cfg: GradusConfig, st: StageConfig, seq_len: int, batch: int) -> tuple[float, str, str]:
    """(peak LR, how it was derived in words, which form: peak_lr | lr_multiplier | seq_batch | base)."""
    base = cfg.optim.base_lr
    if st.peak_lr is not None:
        return st.peak_lr, f"peak_lr {format_lr(st.peak_lr)}", "peak_lr"
    if st.lr_multiplier is not None:
        return base * st.lr_multiplier, f"{st.lr_multiplier:g}× base {format_lr(base)}", "lr_multiplier"
    if st.lr_rule == "seq_batch":
        max_len = cfg.model.max_seq_len
        mult = seq_batch_multiplier(seq_len, batch, max_len)
        length, width = seq_batch_factors(seq_len, batch, max_len)
        words = " × ".join(seq_batch_words(seq_len, batch, max_len))
        return base * mult, (
            f"{mult:.3g}× base {format_lr(base)} (seq_batch: {words} = {length:.3g} × {width:.3g})"
        ), "seq_batch"
    return base, f"base {format_lr(base)}", "base"


def _clip(cfg: GradusConfig, st: StageConfig, seq_len: int) -> tuple[float, str]:
    """(grad clip, which rule set it)."""
    if st.grad_clip is not None:
        return st.grad_clip, "grad_clip"
    if st.clip_rule == "by_length":
        return clip_by_length(seq_len), "by_length"
    return cfg.curriculum.grad_clip, "default"


def _warmup(cfg: GradusConfig, i: int, st: StageConfig, tps: int, total_steps: int) -> tuple[int, str]:
    """(warmup steps, how they were derived)."""
    if st.warmup_steps is not None:
        return st.warmup_steps, "warmup_steps"
    if st.warmup_tokens is not None:
        # Token-based adaptive warmup: the same number of tokens whatever the batch shape.
        steps = math.ceil(st.warmup_tokens / tps)
        if st.warmup_cap is not None and steps > st.warmup_cap:
            return st.warmup_cap, f"warmup_tokens {format_count(st.warmup_tokens)} capped at {st.warmup_cap}"
        return steps, f"warmup_tokens {format_count(st.warmup_tokens)} / {tps}"
    if i == 0 and cfg.curriculum.schedule == "per_stage":
        # An AdamW run started at its peak LR without warmup tends to diverge: default to the run's global
        # warmup, in tokens where given (at stage 0's tokens per step), else its fraction of the whole run.
        if cfg.curriculum.global_warmup_tokens is not None:
            tokens = cfg.curriculum.global_warmup_tokens
            return max(1, math.ceil(tokens / tps)), f"default global_warmup_tokens {format_count(tokens)} / {tps}"
        fraction = cfg.curriculum.global_warmup_fraction
        return max(1, round(fraction * total_steps)), f"default {fraction:g} of all steps"
    return 0, "none"


def _check(cfg: GradusConfig, plans: list[StagePlan], warnings: list[str]) -> None:
    """Warnings about the resolved table: a doubled LR rule, stages that never run, warmups too long."""
    rule_stages = [s for s, st in zip(plans, cfg.curriculum.stages, strict=True) if st.lr_rule == "seq_batch"]
    tps = [s.tokens_per_step for s in rule_stages]
    # "Constant" allows the few percent that rounding batches to whole examples costs (21 × 768).
    if len(rule_stages) > 1 and len({s.seq_len for s in rule_stages}) > 1 and max(tps) <= 1.1 * min(tps):
        warnings.append(
            "lr_rule seq_batch at constant tokens per batch counts the same effect twice: a shorter "
            "sequence already means a proportionally larger batch, so both factors of "
            f"{SEQ_BATCH_MULTIPLIER} grow together; consider lr_multiplier"
        )
    cur = cfg.curriculum
    # Compared with the defaults, not with the fields set: a saved config.yaml writes every field out.
    unused = [k for k in ("cooldown_fraction", "cooldown_shape", "decay_to", "cooldown_tokens")
              if getattr(cur, k) != type(cur).model_fields[k].default]
    if unused and cur.schedule != "wsd":
        warnings.append(
            f"curriculum.{', '.join(unused)} only shape the wsd schedule and are ignored with "
            f"schedule: {cur.schedule}; set schedule: wsd or drop them"
        )
    ramp = cur.batch_ramp
    if ramp is not None and ramp.alpha and rule_stages:
        warnings.append(
            f"batch_ramp.alpha={ramp.alpha:g} and lr_rule seq_batch both scale the LR with the batch "
            f"(seq_batch's {seq_batch_words()[1]}); consider alpha: 0 or lr_multiplier"
        )
    for k, s in enumerate(plans):
        if s.steps == 0:
            # A token budget that lies wholly inside the previous stage's last step (the switch happens at the first
            # step that starts at or past a threshold), not a stop rule, when the next stage does run.
            later = next((p for p in plans[k + 1:] if p.steps), None)
            overshot = (k > 0 and s.token_threshold is not None and later is not None
                        and plans[k - 1].end_tokens >= (later.token_threshold or 0))
            why = (f"its budget lies inside stage {k - 1}'s last step (ending at {plans[k - 1].end_tokens:,} tokens); "
                   f"give it more than one step of {plans[k - 1].tokens_per_step:,} tokens, or drop it"
                   if overshot else "training stops before it starts (target_tokens or max_steps)")
            warnings.append(f"stage {s.index} ({s.name}) never runs: {why}")
        elif s.warmup_steps > s.steps:
            warnings.append(f"stage {s.index} ({s.name}): warmup {s.warmup_steps} > its {s.steps} steps")
