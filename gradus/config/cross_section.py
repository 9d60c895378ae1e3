"""Rules that relate several sections of a config, each problem one line.

Each section checks its own fields (types, bounds, the section's validators). What needs more of the config is
here: a stage's ``seq_len`` against ``model.max_seq_len``, stage starts that must increase, mix weights naming
known sources, chat sources for sft stages, a batch ramp its stages contradict, what an adaptive curriculum
cannot run with, a model preset from :data:`gradus.config.fields.SIZE_PRESETS` (checked with the whole config,
so that a bare ``ModelConfig`` stays buildable and is refused by :func:`gradus.sizes.resolve_shape` instead).
:class:`~gradus.config.schema.GradusConfig`'s validator runs :func:`cross_check`, and
:func:`gradus.config.checks.validate` runs it again on the raw mapping when the config failed (a failed
section makes pydantic skip the validator), so these problems are reported together with the schema's own.

The rules read each raw value through the schema's own field type (:func:`field_value`), so nothing here
parses a value a second way, and a value the schema rejects is left to the schema's message. Each problem
is one line ``<field.path>=<value>: <what is wrong>; <how to fix it>``.

The dependency goes one way: this module reads the sections (:mod:`gradus.config.schema_data`,
:mod:`~gradus.config.schema_curriculum`, :mod:`~gradus.config.schema_run`); :mod:`gradus.config.schema`
imports it, and :mod:`gradus.config.checks` imports both.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from gradus.config.fields import MODEL_PRESETS, SIZE_PRESETS, given
from gradus.config.schema_curriculum import (
    AdaptiveBatchConfig,
    AdaptiveConfig,
    BatchRampConfig,
    CurriculumConfig,
    StageConfig,
    VerifyConfig,
)
from gradus.config.schema_data import ModelConfig, PackingConfig, SourceConfig
from gradus.config.schema_run import NoiseScaleConfig, TrainConfig


# ------------------------------------------------------------------------------- reading raw values
@functools.cache
def _adapter(cls: type[BaseModel], name: str) -> TypeAdapter:
    info = cls.model_fields[name]
    # The field's type with its bounds (gt=0, ...) and parsers (10M, 2k): the schema's reading of it.
    kind = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return TypeAdapter(kind)


def field_value(cls: type[BaseModel], section: Mapping, name: str) -> Any:
    """Field ``name`` of a raw ``section`` of type ``cls``, read as the schema reads it: the field's default
    when the key is absent, the validated value (``2k`` -> 2000) when it is valid on its own, None when it
    is not (the schema reports that)."""
    info = cls.model_fields[name]
    if name not in section:
        return None if info.is_required() else info.get_default(call_default_factory=True)
    try:
        return _adapter(cls, name).validate_python(section[name])
    except ValidationError:
        return None


def _section(data: Mapping, key: str) -> Mapping:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


# ----------------------------------------------------------------------------------- across sections
def cross_check(cfg: BaseModel | Mapping) -> list[str]:
    """Checks that span sections; each problem is one line ``field=value: why; how to fix``.

    Takes a validated config or the raw mapping: on raw data it checks whatever values the schema can read
    (:func:`field_value`), so these problems are reported together with the schema's own.
    """
    data: Mapping = cfg.model_dump() if isinstance(cfg, BaseModel) else cfg
    model, cur, train = _section(data, "model"), _section(data, "curriculum"), _section(data, "train")
    raw_stages = cur.get("stages")
    stages = [st if isinstance(st, Mapping) else {} for st in raw_stages] if isinstance(raw_stages, list) else []
    max_len = field_value(ModelConfig, model, "max_seq_len")
    problems = _model_problems(model)
    problems += _stage_fit_problems(stages, max_len, _source_names(data))
    problems += _stage_kind_problems(stages, data)
    problems += _stage_order_problems(stages, cur, train)
    problems += _batch_ramp_problems(stages, cur)
    problems += _adaptive_problems(stages, cur, train)
    problems += _stride_problems(stages, _section(data, "data"))
    problems += _first_warmup_problems(stages, cur)
    ref = field_value(TrainConfig, train, "eval_reference_seq_len")
    if ref is not None and max_len is not None and max_len < ref:
        problems.append(
            f"train.eval_reference_seq_len={ref} exceeds model.max_seq_len={max_len}; lower it or raise max_seq_len"
        )
    problems += _early_stopping_metric_problems(train, _source_names(data))
    if train.get("parallel") == "fsdp" and train.get("ema"):
        problems.append("train.ema: the weights' average is not kept under train.parallel=fsdp (its weights are "
                        "sharded); drop train.ema or use parallel: ddp")
    probe = train.get("passkey")
    probe_len = probe.get("seq_len") if isinstance(probe, Mapping) else None
    if isinstance(probe_len, int) and max_len is not None and probe_len > max_len:
        problems.append(f"train.passkey.seq_len={probe_len} exceeds model.max_seq_len={max_len}; lower it or raise "
                        f"max_seq_len")
    return problems


def _early_stopping_metric_problems(train: Mapping, sources: list[str] | None) -> list[str]:
    """An early-stopping metric that no evaluation writes: an unknown source, or val_ema without train.ema."""
    metric = train.get("early_stopping_metric")
    if not isinstance(metric, str):
        return []
    parts = metric.split("/")
    if parts[0] == "val_ema" and len(parts) == 3:
        return [f"train.early_stopping_metric={metric}: the EMA weights are evaluated on the mix only; use val_ema/loss"]
    if len(parts) == 3 and sources and parts[1] not in sources:
        return [f"train.early_stopping_metric={metric}: no source named {parts[1]!r}; use val/loss or "
                f"val/<source>/loss with one of {', '.join(sources)}"]
    if parts[0] == "val_ema" and not train.get("ema"):
        return [f"train.early_stopping_metric={metric}: needs train.ema; set train.ema.decay or follow val/loss"]
    return []


def _model_problems(model: Mapping) -> list[str]:
    """An unknown size preset; attention heads that do not divide the width, or key/value heads that do
    not divide the heads."""
    problems: list[str] = []
    # Checked with the whole config, not on ModelConfig alone: a bare ModelConfig with an unknown preset
    # is refused later, by gradus.sizes.resolve_shape, with the same list of names.
    preset = field_value(ModelConfig, model, "preset")
    if preset is not None and preset not in SIZE_PRESETS:
        close = difflib.get_close_matches(preset, MODEL_PRESETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        problems.append(f"model.preset={preset!r}: unknown model preset; {hint}known: {', '.join(MODEL_PRESETS)}")
    d_model, n_heads, n_kv = (field_value(ModelConfig, model, k) for k in ("d_model", "n_heads", "n_kv_heads"))
    if d_model and n_heads and d_model % n_heads:
        problems.append(f"model.d_model={d_model} is not divisible by model.n_heads={n_heads}; pick a divisor")
    if n_heads and n_kv and n_heads % n_kv:
        problems.append(f"model.n_heads={n_heads} is not divisible by model.n_kv_heads={n_kv}; pick a divisor")
    return problems


def _source_names(data: Mapping) -> list[str] | None:
    """Names of the data sources, or None unless every source has a valid one (only then can a mix name
    be called unknown)."""
    raw = _section(data, "data").get("sources")
    if not isinstance(raw, list) or not raw:
        return None
    names = [field_value(SourceConfig, src, "name") if isinstance(src, Mapping) else None for src in raw]
    return names if all(n is not None for n in names) else None


def _stage_fit_problems(stages: list[Mapping], max_len: int | None, names: list[str] | None) -> list[str]:
    """Each stage against the rest of the config: its seq_len within model.max_seq_len, its mix naming
    known sources."""
    problems: list[str] = []
    for i, st in enumerate(stages):
        where = f"curriculum.stages[{i}]"
        seq_len = field_value(StageConfig, st, "seq_len")
        if seq_len is not None and max_len is not None and max_len < seq_len:
            problems.append(
                f"{where}.seq_len={seq_len} exceeds model.max_seq_len={max_len}; "
                f"lower the stage's seq_len or raise model.max_seq_len"
            )
        mix = st.get("mix")
        if names is not None and isinstance(mix, Mapping):
            for source in mix:
                if source not in names:
                    hint = difflib.get_close_matches(str(source), sorted(names), n=1)
                    fix = f"did you mean {hint[0]!r}?" if hint else f"known sources: {', '.join(sorted(names))}"
                    problems.append(f"{where}.mix.{source}: unknown source {source!r}; {fix}")
    return problems


def _first_warmup_problems(stages: list[Mapping], cur: Mapping) -> list[str]:
    """Stage 0's own warmup under a schedule of one curve (wsd, global, linear): that curve's warmup is the
    run's (global_warmup_fraction / global_warmup_tokens), so a warmup written on stage 0 would be ignored
    (a later stage's re-warms from the LR the previous one ended at, and is kept)."""
    mode = field_value(CurriculumConfig, cur, "schedule")
    if not stages or mode in (None, "per_stage"):
        return []
    for key in ("warmup_steps", "warmup_tokens"):
        value = field_value(StageConfig, stages[0], key)
        if value:
            fix = ("curriculum.global_warmup_tokens" if key == "warmup_tokens" else
                   "curriculum.global_warmup_tokens or global_warmup_fraction")
            return [f"curriculum.stages[0].{key}={stages[0].get(key)}: under schedule {mode} the run warms up once, "
                    f"over curriculum.global_warmup_fraction or global_warmup_tokens, and stage 0 has no warmup of "
                    f"its own; move it to {fix}, or use schedule: per_stage"]
    return []


def _stride_problems(stages: list[Mapping], data: Mapping) -> list[str]:
    """``data.packing.stride`` against the shortest stage: a stride above a stage's seq_len starts its windows
    past the last one's end, so the tokens between are never trained on nor counted."""
    packing = data.get("packing")
    stride = field_value(PackingConfig, packing, "stride") if isinstance(packing, Mapping) else None
    if stride is None:
        return []
    for i, st in enumerate(stages):
        seq_len = field_value(StageConfig, st, "seq_len")
        if seq_len is not None and seq_len < stride:
            return [f"data.packing.stride={stride} is above curriculum.stages[{i}].seq_len={seq_len}: its windows "
                    f"would skip {stride - seq_len} tokens in every {stride}; use a stride of at most {seq_len}, or "
                    "packing.stride_fraction (a share of each stage's length)"]
    return []


def _stage_kind_problems(stages: list[Mapping], data: Mapping) -> list[str]:
    """Chat sources are read by sft stages only, and sft stages read chat sources only: the two are packed
    differently (one record per row, masked) and cannot share a batch. The mix each stage really uses is
    judged (its own, else the previous stage's, else uniform over every source)."""
    raw = _section(data, "data").get("sources")
    kinds: dict[str, str] = {}
    for src in raw if isinstance(raw, list) else []:
        name = field_value(SourceConfig, src, "name") if isinstance(src, Mapping) else None
        if name is None:
            return []  # the schema reports the source; a mix cannot be judged without names
        kinds[name] = field_value(SourceConfig, src, "kind") or "text"
    problems: list[str] = []
    mix: Mapping | None = None
    for i, st in enumerate(stages):
        if isinstance(st.get("mix"), Mapping):
            mix = st["mix"]
        weighted = list(kinds) if mix is None else [
            n for n, w in mix.items() if isinstance(w, int | float) and w > 0 and n in kinds]
        where = f"curriculum.stages[{i}]"
        if (field_value(StageConfig, st, "kind") or "pretrain") == "sft":
            if not any(kinds[n] == "chat" for n in weighted):
                problems.append(f"{where}.kind=sft: no source of kind: chat has a weight in this stage; add a chat "
                                f"source (JSONL records with messages) to data.sources and to the stage's mix")
            else:
                problems += [f"{where}.mix.{n}: source {n!r} is kind: text, and a stage with kind: sft reads chat "
                             f"records only; give it weight 0 here or make the source kind: chat"
                             for n in weighted if kinds[n] != "chat"]
        else:
            problems += [f"{where}.mix.{n}: source {n!r} is kind: chat, read only by stages with kind: sft; give "
                         f"it weight 0 here (write the stage's mix) or set the stage's kind: sft"
                         for n in weighted if kinds[n] == "chat"]
    return problems


def _stage_order_problems(stages: list[Mapping], cur: Mapping, train: Mapping) -> list[str]:
    """Stages all start at a step (0 first, increasing) or all last a token budget, and the run has an end."""
    problems: list[str] = []
    step_based = [given(st, "step") for st in stages]
    token_based = [given(st, "tokens") for st in stages]
    # Whether a stopping rule is given at all; a given but invalid one is the schema's to report.
    has_end = cur.get("target_tokens") is not None or train.get("max_steps") is not None
    if any(step_based) and any(token_based):
        problems.append(
            "curriculum.stages: mix of step starts and token budgets; give every stage a start step, "
            "or every stage a tokens budget"
        )
    elif any(step_based):
        missing = [i for i, s in enumerate(step_based) if not s]
        if missing:
            problems.append(
                f"curriculum.stages[{missing[0]}].step is missing; every stage needs a start step "
                "once one has one"
            )
        elif field_value(StageConfig, stages[0], "step") not in (None, 0):
            problems.append(
                f"curriculum.stages[0].step={stages[0].get('step')}: the first stage must start at step 0"
            )
        for i in range(1, len(stages)):
            a, b = (field_value(StageConfig, stages[j], "step") for j in (i - 1, i))
            if a is not None and b is not None and b <= a:
                problems.append(
                    f"curriculum.stages[{i}].step={stages[i].get('step')} is not after "
                    f"stages[{i - 1}].step={stages[i - 1].get('step')}; stage starts must increase"
                )
        if not has_end:
            problems.append(
                "curriculum.target_tokens is missing; step-based stages need a target_tokens "
                "(or train.max_steps) to know when to stop"
            )
    elif stages:
        missing = [i for i, s in enumerate(token_based) if not s]
        if len(stages) > 1 and missing:
            problems.append(
                f"curriculum.stages[{missing[0]}] has neither step nor tokens; give every stage one of them"
            )
        if len(stages) == 1 and not token_based[0] and not has_end:
            problems.append("curriculum.target_tokens is missing; give target_tokens or train.max_steps")
    return problems


# ----------------------------------------------------------------------------------- batch ramp
def _tokens_per_step(st: Mapping) -> tuple[int | None, str]:
    """(tokens per step as written, the field that gives it) of a raw stage, or (None, '') when its values
    are unusable. A tokens_per_batch that no batch meets is reported on its own (:func:`_reachable`)."""
    seq_len = field_value(StageConfig, st, "seq_len")
    batch, tpb = field_value(StageConfig, st, "batch_size"), field_value(StageConfig, st, "tokens_per_batch")
    if batch is not None and seq_len is not None:
        return batch * seq_len, "batch_size"
    if tpb is not None:
        return tpb, "tokens_per_batch"
    return None, ""


def _reachable(tpb: int, seq_len: int, multiple: int) -> tuple[int, int] | None:
    """None when some batch meets ``tpb`` tokens exactly at ``seq_len``, else the nearest token counts
    below and above that a batch does meet. Derived batches are whole numbers below ``multiple`` and
    multiples of it from there (StageConfig.batch_multiple), so those are the batches checked here."""
    batch, rest = divmod(tpb, seq_len)
    if rest == 0 and (batch < multiple or batch % multiple == 0):
        return None
    if batch < multiple:
        return max(1, batch) * seq_len, (batch + 1) * seq_len
    lower = batch // multiple * multiple
    return lower * seq_len, (lower + multiple) * seq_len


def _batch_ramp_problems(stages: list[Mapping], cur: Mapping) -> list[str]:
    """Token budgets per step that no batch meets, and a declared batch ramp that its stages contradict."""
    problems: list[str] = []
    ramp_raw = cur.get("batch_ramp")
    ramp = ramp_raw if isinstance(ramp_raw, Mapping) else None
    for i, st in enumerate(stages):
        seq_len, tpb = field_value(StageConfig, st, "seq_len"), field_value(StageConfig, st, "tokens_per_batch")
        if seq_len is None or tpb is None or given(st, "batch_size"):
            continue
        where = f"curriculum.stages[{i}].tokens_per_batch={st.get('tokens_per_batch')}"
        if tpb < seq_len:
            problems.append(
                f"{where}: fewer tokens than one sequence of seq_len={seq_len}; give at least {seq_len} "
                f"tokens per step or a shorter seq_len"
            )
        elif ramp is not None:
            multiple = field_value(StageConfig, st, "batch_multiple")
            near = _reachable(tpb, seq_len, multiple) if multiple is not None else None
            if near is not None:
                problems.append(
                    f"{where}: no batch at seq_len={seq_len} (whole, and a multiple of batch_multiple={multiple} "
                    f"from {multiple} on) gives exactly that; a batch ramp needs exact tokens per step, write "
                    f"tokens_per_batch: {near[0]} or {near[1]}, or a batch_size"
                )
    if ramp is None:
        return problems
    reference = field_value(BatchRampConfig, ramp, "reference_stage")
    if reference is not None and stages and reference >= len(stages):
        problems.append(
            f"curriculum.batch_ramp.reference_stage={reference}: there are only {len(stages)} stages; "
            f"give an index from 0 to {len(stages) - 1}"
        )
    if given(ramp, "reference_stage") and given(ramp, "reference_tokens"):
        problems.append(
            "curriculum.batch_ramp: both reference_stage and reference_tokens are given; keep one"
        )
    if field_value(BatchRampConfig, ramp, "direction") == "grow":
        previous: tuple[int, int] | None = None
        for i, st in enumerate(stages):
            tps, key = _tokens_per_step(st)
            if tps is None:
                previous = None
                continue
            if previous is not None and tps < previous[1]:
                problems.append(
                    f"curriculum.stages[{i}].{key}={st.get(key)}: tokens per step shrink from "
                    f"{previous[1]:,} (stage {previous[0]}) to {tps:,}, but curriculum.batch_ramp.direction is "
                    "grow; raise this stage's tokens per step or set direction: any"
                )
            previous = (i, tps)
    return problems


# ----------------------------------------------------------------------------------- adaptive stages
def _share(cur: Mapping, tokens_field: str, fraction_field: str, run: int | None) -> float:
    """A phase of the LR curve (the warmup, the cooldown) as a share of the run: its tokens over the run's where
    they are given and the run's tokens are known, else its fraction."""
    tokens = field_value(CurriculumConfig, cur, tokens_field)
    if tokens is not None and run:
        return min(1.0, tokens / run)
    return field_value(CurriculumConfig, cur, fraction_field) or 0.0


def _adaptive_problems(stages: list[Mapping], cur: Mapping, train: Mapping) -> list[str]:
    """What an adaptive curriculum cannot run with (issue 30's bad input), one line each, before anything trains."""
    raw = cur.get("adaptive")
    if not isinstance(raw, Mapping):
        return []
    problems: list[str] = []
    mode = field_value(CurriculumConfig, cur, "schedule")
    batch_raw = raw.get("batch")
    batch = batch_raw if isinstance(batch_raw, Mapping) else {}
    batch_on = field_value(AdaptiveBatchConfig, batch, "enabled") is not False
    target = field_value(CurriculumConfig, cur, "target_tokens")
    budgets = [field_value(StageConfig, st, "tokens") for st in stages]
    run = target if target is not None else (sum(budgets) if budgets and None not in budgets else None)
    if mode == "per_stage":
        problems.append("curriculum.schedule=per_stage: an adaptive curriculum moves stage boundaries, which would "
                        "cut a stage's own decay short; set curriculum.schedule: wsd (one LR curve over the run)")
    elif batch_on and mode is not None and mode != "wsd":
        problems.append(f"curriculum.schedule={mode}: curriculum.adaptive.batch grows the batch only in a stable "
                        "phase, which only wsd has; set schedule: wsd or adaptive.batch.enabled: false")
    steps = [i for i, st in enumerate(stages) if given(st, "step")]
    if steps:
        problems.append(f"curriculum.stages[{steps[0]}].step: an adaptive curriculum needs token budgets; write each "
                        "stage's tokens: instead of step:")
    previous = None
    for i, st in enumerate(stages):
        seq_len = field_value(StageConfig, st, "seq_len")
        if seq_len is not None and previous is not None and seq_len < previous:
            problems.append(f"curriculum.stages[{i}].seq_len={seq_len} is shorter than stage {i - 1}'s {previous}; "
                            "an adaptive ladder never shortens: order the stages by length")
        previous = seq_len if seq_len is not None else previous
    if batch_on:
        if cur.get("batch_ramp") is not None:
            problems.append("curriculum.batch_ramp: a fixed batch ramp and curriculum.adaptive.batch both set the "
                            "tokens per step; drop batch_ramp or set adaptive.batch.enabled: false")
        if train.get("max_steps") is not None:
            problems.append(f"train.max_steps={train.get('max_steps')}: a batch decision changes how many steps the "
                            "run has; stop by curriculum.target_tokens or set adaptive.batch.enabled: false")
        noise = train.get("noise_scale")
        if (field_value(AdaptiveBatchConfig, batch, "enabled") is True and isinstance(noise, Mapping)
                and field_value(NoiseScaleConfig, noise, "enabled") is False):
            problems.append("train.noise_scale.enabled=false: curriculum.adaptive.batch decides from the gradient "
                            "noise scale, which the run would not measure; set train.noise_scale.enabled: true or "
                            "adaptive.batch.enabled: false")
        rule = [i for i, st in enumerate(stages) if st.get("lr_rule") == "seq_batch"]
        if rule:
            problems.append(f"curriculum.stages[{rule[0]}].lr_rule=seq_batch scales the LR with the batch, as "
                            "adaptive.batch.alpha does; use lr_multiplier or peak_lr")
        bound = field_value(AdaptiveBatchConfig, batch, "max_tokens_per_step")
        first = _tokens_per_step(stages[0])[0] if stages else None
        if bound is not None and first is not None and bound < first:
            problems.append(f"curriculum.adaptive.batch.max_tokens_per_step={batch.get('max_tokens_per_step')} is "
                            f"below stage 0's {first:,} tokens per step (the run starts there): raise it to at "
                            f"least {2 * first:,} for one doubling")
        verify_raw = batch.get("verify")
        verify = verify_raw if isinstance(verify_raw, Mapping) else {}
        fraction = field_value(VerifyConfig, verify, "fraction")
        enabled = field_value(VerifyConfig, verify, "enabled") is not False
        warm = _share(cur, "global_warmup_tokens", "global_warmup_fraction", run)
        cool = _share(cur, "cooldown_tokens", "cooldown_fraction", run)
        stable = 1.0 - warm - cool
        if enabled and fraction is not None and fraction >= stable:
            problems.append(f"curriculum.adaptive.batch.verify.fraction={verify.get('fraction')}: a branch that long "
                            f"does not fit in the stable phase ({stable:.0%} of the run, between the warmup and the "
                            f"cooldown); lower it (1–3% is usual)")
    check = field_value(AdaptiveConfig, raw, "check_every_tokens")
    if check is not None and run is not None and check >= run:
        budget = (f"target_tokens={cur.get('target_tokens')}" if target is not None
                  else f"the stages' budgets ({run:,} tokens)")
        problems.append(f"curriculum.adaptive.check_every_tokens={raw.get('check_every_tokens')} is not below "
                        f"{budget}; check several times a run (default: 1/64 of it)")
    return problems
