"""The ``curriculum`` section of the schema: the stages (shape, start or token budget, LR, mix), the LR
schedule over them, the batch ramp and the adaptive rules. Part of the schema (:mod:`gradus.config.schema`
composes it into :class:`~gradus.config.schema.GradusConfig`); same rules: layer 0, a description on every
field.

Which fields of one stage exclude or need each other is :func:`stage_problems`: :class:`StageConfig`'s
validator runs it, and :func:`gradus.config.checks.validate` runs it again on a stage whose fields failed
(pydantic then skips the validator), so that every problem is reported at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    ModelWrapValidatorHandler,
    field_validator,
    model_validator,
)

from gradus.config.fields import StepCount, Strict, TokenCount, given


# ------------------------------------------------------------------------------------ one stage
def stage_problems(stage: Mapping) -> list[str]:
    """Fields of one stage that exclude or need each other, on its raw mapping or a stage's ``model_dump()``.

    Only which fields are given matters here (each value is the schema's to judge), so it runs on raw
    data too and its problems are reported together with field errors. The values are shown as written
    (``tokens=1M``). A line starting with ``.`` names a field of the stage; the caller puts the stage's
    path in front.
    """
    problems: list[str] = []
    has_batch, has_tpb = given(stage, "batch_size"), given(stage, "tokens_per_batch")
    if has_batch and has_tpb:
        problems.append(
            f"both batch_size={stage['batch_size']} and tokens_per_batch={stage['tokens_per_batch']} are given; "
            "keep one (batch_size fixes the examples per step, tokens_per_batch derives them from seq_len)"
        )
    elif not has_batch and not has_tpb:
        problems.append(
            "neither batch_size nor tokens_per_batch is given; add one, e.g. batch_size: 32 or tokens_per_batch: 32768"
        )
    if given(stage, "step") and given(stage, "tokens"):
        problems.append(
            f"both step={stage['step']} and tokens={stage['tokens']} are given; a stage starts at a step or lasts "
            "a token budget, keep one"
        )
    lr_keys = ("peak_lr", "lr_multiplier", "lr_scale", "lr_rule")
    lr_forms = [k for k in lr_keys if given(stage, k)]
    if len(lr_forms) > 1:
        problems.append(
            f"{' and '.join(lr_forms)} are given; the peak LR comes from one of peak_lr, lr_multiplier "
            "(alias lr_scale) or lr_rule, keep one"
        )
    if given(stage, "warmup_steps") and given(stage, "warmup_tokens"):
        problems.append("both warmup_steps and warmup_tokens are given; keep one")
    if given(stage, "warmup_cap") and not given(stage, "warmup_tokens"):
        problems.append(f".warmup_cap={stage['warmup_cap']}: only bounds a warmup_tokens warmup; add warmup_tokens or drop it")
    if given(stage, "grad_clip") and given(stage, "clip_rule"):
        problems.append(f"both grad_clip={stage['grad_clip']} and clip_rule={stage['clip_rule']} are given; keep one")
    return problems


# ---------------------------------------------------------------------------------------- curriculum
def _weight(value: float) -> float:
    if not value >= 0:  # written so that NaN fails too
        raise ValueError("mix weights must be ≥ 0; use 0 to leave a source out")
    return value


MixWeight = Annotated[float, AfterValidator(_weight)]
"""One source's weight in a stage mix: a number ≥ 0 (0 leaves the source out)."""


class StageConfig(Strict):
    """One stage of the curriculum. It starts at ``step`` (a step number) or lasts ``tokens`` (a token
    budget); its shape is ``seq_len`` × (``batch_size`` or ``tokens_per_batch`` / seq_len)."""

    name: str | None = Field(None, description="Optional label shown in tables and logs.")
    kind: Literal["pretrain", "sft"] = Field(
        "pretrain",
        description="pretrain: packed documents, every token trained; sft: supervised fine-tuning (stage D) on "
        "chat sources, one record per row (padded, never packed with another), loss on assistant tokens only.",
    )
    step: StepCount | None = Field(
        None, ge=0, description="Start step (the plans' {step: 0, seq_len: 64, ...} form); accepts 2k."
    )
    tokens: TokenCount | None = Field(None, gt=0, description="Token budget of this stage (the streaming plan's form).")
    seq_len: int = Field(..., gt=0, description="Sequence length of every example in this stage.")
    batch_size: int | None = Field(None, gt=0, description="Global examples per optimizer step.")
    tokens_per_batch: TokenCount | None = Field(
        None, gt=0, description="Tokens per step; batch = this / seq_len rounded to batch_multiple."
    )
    batch_multiple: int = Field(8, gt=0, description="Derived batch sizes are rounded to a multiple of this.")
    peak_lr: float | None = Field(None, gt=0, le=10, description="Peak learning rate of the stage (at most 10).")
    lr_multiplier: float | None = Field(
        None,
        gt=0,
        validation_alias=AliasChoices("lr_multiplier", "lr_scale"),
        description="Peak LR = this × optim.base_lr (alias lr_scale).",
    )
    lr_rule: Literal["seq_batch"] | None = Field(
        None, description="seq_batch: base × min(max_seq_len/seq_len, 4) × sqrt(batch/32)."
    )
    warmup_steps: int | None = Field(None, ge=0, description="Linear warmup steps at the start of the stage.")
    warmup_tokens: TokenCount | None = Field(
        None, ge=0, description="Warmup as tokens: steps = min(warmup_tokens / tokens_per_step, warmup_cap)."
    )
    warmup_cap: int | None = Field(None, ge=0, description="Upper bound on warmup steps derived from warmup_tokens.")
    decay: Literal["cosine", "linear", "constant"] | None = Field(
        None, description="Decay inside the stage; default curriculum.decay."
    )
    min_lr_ratio: float | None = Field(None, ge=0, le=1, description="Decay floor as a fraction of the peak.")
    grad_clip: float | None = Field(None, gt=0, description="Gradient-norm clip of this stage.")
    clip_rule: Literal["by_length"] | None = Field(
        None, description="by_length: seq_len ≤128 → 5.0, ≤512 → 1.0, else 0.5."
    )
    rope_scaling: float | None = Field(
        None, ge=1.0, description="RoPE position-interpolation factor from this stage on (long-context "
        "adaptation); default: the previous stage's, else model.rope_scaling."
    )
    mix: dict[str, MixWeight] | None = Field(
        None, description="Source weights by name (normalised); default: the previous stage's, else uniform."
    )

    @field_validator("mix")
    @classmethod
    def _some_weight(cls, mix: dict[str, float] | None) -> dict[str, float] | None:
        if mix and sum(mix.values()) <= 0:
            raise ValueError("the weights sum to 0; give at least one source a positive weight")
        return mix

    @model_validator(mode="wrap")
    @classmethod
    def _check(cls, data: Any, handler: ModelWrapValidatorHandler[StageConfig]) -> StageConfig:
        stage = handler(data)  # field errors propagate as they are
        # Judge the values as written (tokens: 1M, not 1000000) so the lines match the raw-data check
        # that from_dict runs on stages whose fields failed.
        problems = stage_problems(data if isinstance(data, Mapping) else stage.model_dump())
        if problems:
            raise ValueError("\n".join(problems))
        return stage


def _cooldown_fraction(value: float) -> float:
    if not 0.0 < value < 1.0:  # written so that NaN fails too
        raise ValueError("the WSD cooldown is a fraction of the run strictly between 0 and 1; write e.g. 0.2")
    return value


def _ramp_alpha(value: float) -> float:
    if not 0.0 <= value <= 2.0:  # written so that NaN fails too
        raise ValueError("the batch-ramp LR exponent must be in [0, 2] (0: no scaling, 0.5: square-root, 1: linear)")
    return value


class BatchRampConfig(Strict):
    """Tokens per step that change across stages (each stage's own batch_size or tokens_per_batch), declared
    so that the direction is checked, every stage's tokens per step must be met exactly, and each stage's
    peak LR can follow its batch: peak × (tokens_per_step / reference)^alpha."""

    direction: Literal["grow", "any"] = Field(
        "grow", description="grow: tokens per step never shrink from one stage to the next (checked); any: free."
    )
    alpha: Annotated[float, AfterValidator(_ramp_alpha)] = Field(
        0.0, description="LR exponent in [0, 2]: each stage's peak LR × (tokens_per_step / reference)^alpha "
        "(0 = no scaling, 0.5 = square-root rule)."
    )
    reference_stage: int | None = Field(
        None, ge=0, description="Stage index whose tokens per step is the reference (factor 1); default the last."
    )
    reference_tokens: TokenCount | None = Field(
        None, gt=0, description="A reference tokens per step given as a number (e.g. 512k) instead of a stage."
    )


def _unit_interval(value: float) -> float:
    if not 0.0 <= value <= 1.0:  # written so that NaN fails too
        raise ValueError("must be in [0, 1] (0.5: the square-root rule for AdamW)")
    return value


def _bool_or_auto(value: Any) -> Any:
    # One line for a wrong value: the union's own errors would be two, one per member.
    if isinstance(value, bool) or value == "auto":
        return value
    raise ValueError("must be true, false or auto (auto: on in a run over two or more data-parallel processes)")


def _positive(value: float) -> float:
    if not value > 0.0:  # written so that NaN fails too
        raise ValueError("must be above 0 (e.g. 2: propose a larger batch when the noise scale is twice the batch)")
    return value


class VerifyConfig(Strict):
    """The branch test of a batch proposal (after Merrill et al. 2025): from a snapshot of every part of the
    run, train ``fraction`` of the run's tokens at the proposed batch (the main run's next batches, joined),
    evaluate the branch's model on the held-out rows at the stage's length, put everything back, train the
    same tokens at the current batch, evaluate the main run's model on the same rows, and accept when the
    branch's held-out loss is no higher than the main run's by more than ``z`` standard errors of the
    row-by-row difference (by default not higher at all). Held-out, not training loss: with
    ``data.packing.lanes`` the smaller batch has always just stepped on the text before what it predicts,
    which lowers its training loss but not its held-out loss (and made every doubling look 0.04–0.18 worse).
    The branch's tokens are counted and reported; the two evaluations are timed as evaluation."""

    enabled: bool = Field(True, description="Verify each batch proposal with a branch before accepting it.")
    fraction: float = Field(
        0.02, gt=0, lt=0.5, description="Tokens of each branch as a share of the run's target tokens (1–3% is usual)."
    )
    z: float = Field(
        0.0, ge=0, description="Noise margin in standard errors of the row-by-row held-out loss difference: the branch may be "
        "this much behind and still be accepted. 0 (the default) accepts only a branch at least as good per token, "
        "for one device whose time follows its tokens (a doubling within the noise costs tokens in expectation, "
        "1 + batch / B_noise); 2 gives a doubling the benefit of the doubt, for many data-parallel devices where "
        "the steps it saves are the time (with rho 2)."
    )


class AdaptiveBatchConfig(Strict):
    """Tokens per step × 2 when the smoothed gradient noise scale (``train.noise_scale``) stays above ``rho``
    × the current tokens per step for ``patience`` consecutive checks; the LR × 2^alpha on acceptance. Only
    in the wsd schedule's stable phase (after the warmup, before the cooldown), within the bounds."""

    enabled: Annotated[bool | Literal["auto"], BeforeValidator(_bool_or_auto)] = Field(
        "auto", description="Let the run double its tokens per step. auto (the default): in a run over two or more "
        "data-parallel processes, not on one process, where a doubled batch saves optimizer steps but not tokens "
        "and the device's time follows its tokens, so each verification branch (2% of the run) would be paid for "
        "nothing (measured: BENCHMARKS.md, issue 30); true probes on one process too."
    )
    rho: Annotated[float, AfterValidator(_positive)] = Field(
        8.0, description="Propose a doubling when B_simple > rho × tokens per step; each rejected verification "
        "raises it for the rest of the run to twice B_simple / tokens per step at the rejected proposal (the run's own "
        "calibration of the noise scale). It prices steps against tokens: by McCandlish et al.'s trade-off "
        "(tokens needed ∝ 1 + batch / B_noise) the doubled batch needs at most 1 + 2/rho times the fewest tokens. "
        "8 (the default) spends at most 1.25× the tokens, for one device whose time follows its tokens (a GPU "
        "already busy at the current batch, a CPU); 2 (Merrill et al.'s OLMo rule) accepts up to 2× the tokens "
        "for fewer steps, where a step costs little more at twice the batch (many data-parallel devices)."
    )
    patience: int = Field(3, ge=1, description="Consecutive checks above the threshold before a proposal.")
    alpha: Annotated[float, AfterValidator(_unit_interval)] = Field(
        0.5, description="LR × 2^alpha when the batch doubles (0.5: the square-root rule, for AdamW)."
    )
    min_samples: int = Field(
        20, ge=1, description="Noise-scale samples (measured steps: all, or one in train.noise_scale.every) since "
        "the last change before a check counts."
    )
    max_tokens_per_step: TokenCount | None = Field(
        None, gt=0, description="Largest tokens per step a doubling may reach (the stages' own are the smallest: "
        "the run starts at them); default 8× the first stage's."
    )
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="The branch test of each proposal.")


class AdaptiveLengthConfig(Strict):
    """Switch to the next stage's (longer) sequence length before its planned boundary when the validation
    loss at the reference length gains, per doubling of compute, less than ``threshold`` × what the current
    length gained in its first ``window`` evaluations, beyond the gain's own noise (``z`` standard errors), for
    ``patience`` consecutive evaluations. The gain is the slope of a least-squares line through the last
    ``window`` evaluations against log2(compute), and its standard error comes from their scatter about it: a
    single noisy evaluation neither makes nor breaks a switch (with two-point gains, runs switched on
    evaluations that went *up*, and ended worse than the table). Compute is counted in reference-length token
    equivalents (each token weighted by the model's FLOPs per token at its length), a deterministic stand-in
    for calibrated seconds, so a resumed run decides exactly alike. The stages' own boundaries are the
    fallback: a switch is never later than the table and never to a shorter length."""

    enabled: bool = Field(True, description="Let the run move a length switch earlier than the table.")
    threshold: float = Field(
        0.5, gt=0, lt=1, description="Switch when the gain per compute doubling falls below this share of the "
        "stage's first."
    )
    patience: int = Field(2, ge=1, description="Consecutive evaluations below the threshold before a switch.")
    window: int = Field(
        4, ge=2, description="Evaluations each gain is fitted over (the stage's first gain too); 2: the gain "
        "between the last two, with no noise estimate."
    )
    z: float = Field(
        2.0, ge=0, description="An evaluation counts as below only when the gain plus z standard errors is "
        "below the threshold (0: the gain itself)."
    )
    interval: Literal["t", "normal"] = Field(
        "t", description="How z becomes the gain's upper bound. t: z is read as a confidence (that of z under "
        "the normal curve) and the bound uses Student's t for the window's window - 2 degrees of freedom, "
        "because a standard error fitted from 4 evaluations is itself uncertain (z 2 becomes 4.5 standard "
        "errors at window 4); normal: z standard errors as given (the rule before 2026-12-06, whose 1.3M-token "
        "benchmark runs switched on falls that were noise)."
    )


class AdaptiveConfig(Strict):
    """Stage switches decided by the run itself (issue 30): the stages are the ladder of lengths and the
    fallback table; the run may double its tokens per step (``batch``) and move a length switch earlier
    (``length``). Every decision goes to decisions.jsonl and the checkpoint, and a run resumed anywhere
    decides alike; ``gradus schedule --from-run RUN --write FILE`` freezes what a run found into a fixed table."""

    check_every_tokens: TokenCount | None = Field(
        None, gt=0, description="Tokens between batch checks; default 1/64 of the target tokens."
    )
    batch: AdaptiveBatchConfig = Field(default_factory=AdaptiveBatchConfig, description="The batch rule.")
    length: AdaptiveLengthConfig = Field(default_factory=AdaptiveLengthConfig, description="The length rule.")


class CurriculumConfig(Strict):
    """Ordered stages and when training stops."""

    stages: list[StageConfig] = Field(..., min_length=1, description="Stages in order.")
    target_tokens: TokenCount | None = Field(
        None, gt=0, description="Stop after this many tokens; default: the sum of the stages' token budgets."
    )
    schedule: Literal["per_stage", "global", "wsd", "linear"] = Field(
        "wsd",
        description="wsd (the default): one warmup, a stable peak, then a cooldown over the last cooldown_fraction "
        "of the run; global: one warmup+cosine over the run; linear: one warmup, then a straight line to zero "
        "(D2Z); each scaled by each stage's peak, and a stage switch does not restart them. per_stage: each stage "
        "warms up and decays on its own (LR restarts at every switch; the plans' per-stage tables).",
    )
    decay: Literal["cosine", "linear", "constant"] = Field("cosine", description="Default in-stage decay shape.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Default decay floor as a fraction of the peak.")
    global_warmup_fraction: float = Field(
        0.02, ge=0, lt=1, description="global schedule: warmup as a fraction of all steps (1–2% recommended)."
    )
    grad_clip: float = Field(1.0, gt=0, description="Default gradient clip for stages that give none.")
    cooldown_fraction: Annotated[float, AfterValidator(_cooldown_fraction)] = Field(
        0.2, description="wsd schedule: share of all steps in the final cooldown, in (0, 1)."
    )
    cooldown_shape: Literal["linear", "1-sqrt"] = Field(
        "linear", description="wsd schedule: cooldown curve, linear or 1-sqrt (1 - sqrt(progress))."
    )
    decay_to: Literal["floor", "zero"] = Field(
        "floor", description="wsd schedule: the cooldown ends at min_lr_ratio × peak (floor) or at zero."
    )
    batch_ramp: BatchRampConfig | None = Field(
        None, description="Declare tokens per step that change across stages (grow), optionally scaling each "
        "stage's peak LR by (tokens_per_step / reference)^alpha; default: none (constant tokens per step is the "
        "plans' design)."
    )
    global_warmup_tokens: TokenCount | None = Field(
        None, gt=0, description="Global modes: the warmup as tokens (the steps whose tokens start below it) "
        "instead of global_warmup_fraction of the steps; keeps the LR curve in tokens when batches change."
    )
    cooldown_tokens: TokenCount | None = Field(
        None, gt=0, description="wsd: the cooldown as the last this-many tokens of the run instead of "
        "cooldown_fraction of the steps; keeps the LR curve in tokens when batches change."
    )
    adaptive: AdaptiveConfig | None = Field(
        None, description="Stage switches decided by the run's own signals (gradient noise scale, loss rate); "
        "the stages are the ladder and the fallback table. Default: none (the table as written)."
    )
