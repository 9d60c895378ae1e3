"""The config schema: every section and field a YAML config may hold, with its type, bounds and description.

Layer 0: imports nothing from gradus but ``units`` and ``errors``. Every field carries a description (shown
by ``gradus schedule`` and in error messages). Rules on one field live here, as pydantic types and field
validators; rules that relate several fields live in :mod:`gradus.config.checks`, which the validators of
:class:`StageConfig` and :class:`GradusConfig` call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    Field,
    ModelWrapValidatorHandler,
    field_validator,
    model_validator,
)

from gradus.config.fields import (
    SIZE_PRESETS,
    DocumentCount,
    StepCount,
    Strict,
    TokenCount,
)
from gradus.config.schema_run import (
    LoggingConfig,
    OptimConfig,
    TrainConfig,
)


# --------------------------------------------------------------------------------------------- model
class ModelConfig(Strict):
    """The GPT decoder. ``preset`` fills every shape field left unset; explicit fields win."""

    preset: str | None = Field(
        "tiny", description=f"Size preset ({', '.join(SIZE_PRESETS)}) filling unset shape fields."
    )
    n_layers: int | None = Field(None, gt=0, description="Transformer blocks.")
    d_model: int | None = Field(None, gt=0, description="Residual stream width.")
    n_heads: int | None = Field(None, gt=0, description="Attention heads; d_model must divide by it.")
    n_kv_heads: int | None = Field(None, gt=0, description="Key/value heads (grouped-query); default n_heads.")
    ffn_hidden: int | None = Field(None, gt=0, description="SwiGLU hidden width; default ~8/3 d_model, rounded.")
    vocab_size: int | None = Field(None, gt=0, description="Embedding rows; default: the tokenizer's size.")
    max_seq_len: int = Field(2048, gt=0, description="Longest sequence any stage may use (RoPE table size).")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency.")
    rope_scaling: float = Field(
        1.0, ge=1.0, description="RoPE position-interpolation factor (>1 for a long-context stage)."
    )
    tie_embeddings: bool = Field(True, description="Share the input embedding with the output head.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on attention and residual outputs.")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon.")
    init_from: str | None = Field(
        None,
        description="Start from the weights of an exported Hugging Face (Llama) directory (`gradus export "
        "--hf`); the model's shape fields must match it. A resumed run loads its own checkpoint instead.",
    )


# ---------------------------------------------------------------------------------------------- data
class SourceConfig(Strict):
    """One named text source. Exactly one of ``dataset`` (Hugging Face hub), ``path`` (local files,
    path or glob) or ``builtin`` (text shipped with every Python install, for the offline demo)."""

    name: str = Field(..., min_length=1, description="Name used by stage mix weights.")
    dataset: str | None = Field(None, description="Hugging Face dataset id, streamed (e.g. HuggingFaceFW/fineweb-edu).")
    dataset_config: str | None = Field(None, description="Hugging Face dataset config name (subset).")
    split: str = Field("train", description="Split of the hub dataset to stream.")
    path: str | None = Field(None, description="Local file, directory or glob (JSONL, JSON.GZ, Parquet, text).")
    format: Literal["auto", "jsonl", "json", "parquet", "text"] = Field(
        "auto", description="File format; auto guesses from the extension."
    )
    builtin: Literal["python-docs", "python-stdlib", "arithmetic"] | None = Field(
        None, description="Offline text: interpreter docs (prose), stdlib sources (code), generated word problems (math)."
    )
    text_unit: Literal["file", "paragraph", "line"] = Field(
        "file",
        description="Plain-text files: one document per file (streamed in pieces, any size), per blank-line "
        "paragraph, or per line.",
    )
    text_field: str = Field("text", description="Record field holding the text.")
    template: str | None = Field(
        None, description="Joins several fields, e.g. '{question}\\n{answer}' for GSM8K; overrides text_field."
    )
    on_exhausted: Literal["repeat", "drop"] = Field(
        "repeat", description="When the source runs out: start another epoch, or drop it and renormalise the mix."
    )
    validation_split: str | None = Field(
        None, description="Explicit held-out split/path for validation; default: a hash of each document decides."
    )
    kind: Literal["text", "chat"] = Field(
        "text",
        description="text: documents for pretraining; chat: instruction/chat records for a stage with kind: sft "
        "(each record a `messages` list of {role, content}, or prompt_template/response_template over its "
        "fields), rendered by the chat template and trained on the assistant spans only.",
    )
    messages_field: str = Field("messages", description="chat: record field holding the [{role, content}] list.")
    prompt_template: str | None = Field(
        None, description="chat: the user turn built from a record's fields, e.g. '{question}' (GSM8K); with "
        "response_template, used instead of messages_field.",
    )
    response_template: str | None = Field(
        None, description="chat: the assistant turn built from a record's fields, e.g. '{answer}'."
    )
    chat_template: Literal["auto", "builtin"] = Field(
        "auto", description="chat: auto = the tokenizer's Hugging Face chat_template (tokenizer_config.json) when "
        "it has one, else the built-in template (README, 'Stage D'); builtin = always the built-in one.",
    )

    @model_validator(mode="after")
    def _chat_fields(self) -> SourceConfig:
        if (self.prompt_template is None) != (self.response_template is None):
            raise ValueError(f"source {self.name!r}: set both prompt_template and response_template, or neither "
                             f"(then records carry a {self.messages_field!r} list)")
        chat_only = [k for k in ("prompt_template", "response_template") if getattr(self, k) is not None]
        if self.kind != "chat" and chat_only:
            raise ValueError(f"source {self.name!r}: {chat_only[0]} needs kind: chat")
        if self.kind == "chat" and self.template is not None:
            raise ValueError(f"source {self.name!r}: a chat source takes prompt_template/response_template, "
                             f"not template")
        return self

    @model_validator(mode="after")
    def _one_origin(self) -> SourceConfig:
        origins = [k for k in ("dataset", "path", "builtin") if getattr(self, k) is not None]
        if len(origins) != 1:
            raise ValueError(
                f"source {self.name!r} needs exactly one of dataset, path or builtin (got {origins or 'none'})"
            )
        return self


class TokenizerConfig(Strict):
    """The tokenizer, fixed for a run and recorded in every checkpoint."""

    name_or_path: str | None = Field(
        "gpt2", description="Hugging Face tokenizer name, a tokenizer.json, or a folder with vocab.json+merges.txt."
    )
    train_vocab_size: int | None = Field(
        None, gt=256, description="Train a byte-level BPE of this size on the sources instead (cached in the run dir)."
    )
    train_max_documents: int = Field(20000, gt=0, description="Documents per source read to train the BPE.")
    eos_token: str | None = Field(None, description="End-of-document token; default: the tokenizer's own.")

    @model_validator(mode="after")
    def _one_tokenizer(self) -> TokenizerConfig:
        # A tokenizer named next to train_vocab_size used to be ignored in silence (the BPE was trained): say it.
        # The default name ("gpt2") with train_vocab_size is what configs written before said, and is kept.
        named = self.name_or_path
        if self.train_vocab_size is not None and named is not None and named != "gpt2":
            raise ValueError(
                f"name_or_path={named!r} and train_vocab_size={self.train_vocab_size} both given: give one "
                f"(--set data.tokenizer.train_vocab_size=null to use {named!r}, or name_or_path=null to train a BPE)")
        return self


class PackingConfig(Strict):
    """How documents become fixed-length windows."""

    mode: Literal["concat", "document"] = Field(
        "concat", description="concat: documents joined with EOS; document: windows never cross documents."
    )
    stride: int | None = Field(
        None, gt=0, description="Tokens between window starts (< seq_len overlaps, e.g. seq_len//2); default seq_len."
    )
    stride_fraction: float | None = Field(
        None, gt=0, le=1, description="Stride as a fraction of each stage's seq_len (0.5 = 50% overlap)."
    )
    remainder: Literal["drop", "pad"] = Field(
        "drop", description="document mode: drop a document's short tail, or pad it with masked labels."
    )
    lanes: int = Field(
        256, ge=1, le=65536,
        description="concat mode: token streams the rows of a batch are cut from, one per row up to this many "
        "(a row continues its stream in the next step). 1 = every batch is consecutive windows of one "
        "stream, so a small batch holds about one document. More lanes keep about lanes x half a document "
        "waiting, which lags a mix change by as much. Document mode always uses one.",
    )

    @model_validator(mode="after")
    def _lanes_need_concat(self) -> PackingConfig:
        if "lanes" in self.model_fields_set and self.lanes > 1 and self.mode != "concat":
            raise ValueError("lanes > 1 needs mode: concat (document mode cuts one document at a time); "
                             "set lanes: 1 or mode: concat")
        return self


class ValidationConfig(Strict):
    """Held-out documents for evaluation; never trained on."""

    fraction: float = Field(0.005, ge=0, lt=1, description="Share of documents held out by a hash of their text.")
    max_documents: int = Field(200, gt=0, description="Held-out documents kept per source.")
    tokens: TokenCount = Field(65536, gt=0, description="Tokens evaluated at each evaluation and length.")


class DataConfig(Strict):
    """Sources, tokenizer, packing and the streaming loader."""

    sources: list[SourceConfig] = Field(..., min_length=1, description="Named text sources.")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="Tokenizer.")
    packing: PackingConfig = Field(default_factory=PackingConfig, description="Window packing.")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="Held-out split.")
    shuffle_buffer: int = Field(1000, ge=0, description="Documents in the shuffle buffer (0 = no shuffling).")
    num_workers: int = Field(0, ge=0, description="Tokenising worker processes (0 = a background thread).")
    prefetch_batches: int = Field(4, ge=0, description="Batches prepared ahead of the trainer.")
    retries: int = Field(5, ge=0, description="Retries of a streaming source after a network fault.")
    retry_backoff: float = Field(2.0, gt=0, description="First retry delay in seconds (doubles each time).")
    # The dataset's size, for planning only: `gradus schedule` turns it into coverage columns; the loader
    # never reads these (a streamed source has no size to check them against).
    dataset_documents: DocumentCount | None = Field(
        None, gt=0, description="Documents in the whole dataset, held-out share included (planning only): "
        "gradus schedule prints each stage's coverage, examples / (this × (1 − validation.fraction)).",
    )
    dataset_tokens: TokenCount | None = Field(
        None, gt=0, description="Tokens in the whole dataset, all sources together (planning only, accepts "
        "920M): gradus schedule prints the share each stage reads and, with dataset_documents, the chunks "
        "per document at each seq_len. --dataset-tokens overrides it.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique, repeated: {', '.join(dup)}")
        return self


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
    peak_lr: float | None = Field(None, gt=0, description="Peak learning rate of the stage.")
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
        from gradus.config.checks import stage_problems  # checks reads this module: import at call time

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


def _positive(value: float) -> float:
    if not value > 0.0:  # written so that NaN fails too
        raise ValueError("must be above 0 (e.g. 2: propose a larger batch when the noise scale is twice the batch)")
    return value


class VerifyConfig(Strict):
    """The branch test of a batch proposal (Merrill et al. 2025): from a snapshot of every part of the run,
    train ``fraction`` of the run's tokens at the proposed batch, put everything back, train the same tokens
    at the current batch, and accept when the branch's mean training loss over the second half of those
    tokens (the same documents in both) is no worse than the main run's by more than ``z`` standard errors
    measured from the two windows' own step-to-step scatter. The branch's tokens are counted and reported."""

    enabled: bool = Field(True, description="Verify each batch proposal with a branch before accepting it.")
    fraction: float = Field(
        0.02, gt=0, lt=0.5, description="Tokens of each branch as a share of the run's target tokens (1–3% is usual)."
    )
    z: float = Field(2.0, ge=0, description="Noise margin in standard errors of the paired loss difference.")


class AdaptiveBatchConfig(Strict):
    """Tokens per step × 2 when the smoothed gradient noise scale (``train.noise_scale``) stays above ``rho``
    × the current tokens per step for ``patience`` consecutive checks; the LR × 2^alpha on acceptance. Only
    in the wsd schedule's stable phase (after the warmup, before the cooldown), within the bounds."""

    enabled: bool = Field(True, description="Let the run double its tokens per step.")
    rho: Annotated[float, AfterValidator(_positive)] = Field(
        2.0, description="Propose a doubling when B_simple > rho × tokens per step (Merrill et al.: 2); each "
        "rejected verification doubles it for the rest of the run."
    )
    patience: int = Field(3, ge=1, description="Consecutive checks above the threshold before a proposal.")
    alpha: Annotated[float, AfterValidator(_unit_interval)] = Field(
        0.5, description="LR × 2^alpha when the batch doubles (0.5: the square-root rule, for AdamW)."
    )
    min_samples: int = Field(
        20, ge=1, description="Steps of noise-scale samples since the last change before a check counts."
    )
    max_tokens_per_step: TokenCount | None = Field(
        None, gt=0, description="Largest tokens per step a doubling may reach (the stages' own are the smallest: "
        "the run starts at them); default 8× the first stage's."
    )
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="The branch test of each proposal.")


class AdaptiveLengthConfig(Strict):
    """Switch to the next stage's (longer) sequence length before its planned boundary when the validation
    loss at the reference length gains, per doubling of compute, less than ``threshold`` × what the current
    length gained in its first measured interval, for ``patience`` consecutive evaluations. Compute is counted
    in reference-length token equivalents (each token weighted by the model's FLOPs per token at its length),
    a deterministic stand-in for calibrated seconds, so a resumed run decides exactly alike. The stages' own
    boundaries are the fallback: a switch is never later than the table and never to a shorter length."""

    enabled: bool = Field(True, description="Let the run move a length switch earlier than the table.")
    threshold: float = Field(
        0.5, gt=0, lt=1, description="Switch when the gain per compute doubling falls below this share of the "
        "stage's first."
    )
    patience: int = Field(2, ge=1, description="Consecutive evaluations below the threshold before a switch.")


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


class GradusConfig(Strict):
    """A whole run: model, data, curriculum, optimizer, training loop and logging."""

    name: str | None = Field(None, description="Run label.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model.")
    data: DataConfig = Field(..., description="Data.")
    curriculum: CurriculumConfig = Field(..., description="Curriculum.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training loop.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging.")

    @model_validator(mode="after")
    def _cross_check(self) -> GradusConfig:
        from gradus.config.checks import cross_check  # checks reads this module: import at call time

        problems = cross_check(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self
