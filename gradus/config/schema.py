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
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    field_validator,
    model_validator,
)

from gradus.units import parse_count


def _count(value: Any) -> int:
    return parse_count(value)


TokenCount = Annotated[int, BeforeValidator(_count)]
"""An int that also accepts ``10M``, ``1.5B``, ``32_768`` in YAML and on the command line."""


def _step_count(value: Any) -> int:
    return parse_count(value, "step count")


StepCount = Annotated[int, BeforeValidator(_step_count)]
"""A step number that also accepts ``2k``, ``40_000``."""


def _document_count(value: Any) -> int:
    return parse_count(value, "document count")


DocumentCount = Annotated[int, BeforeValidator(_document_count)]
"""A number of documents that also accepts ``237_758``, ``240k``."""

SIZE_PRESETS: dict[str, dict[str, int]] = {
    # CPU tests and the offline demo: ~0.2M non-embedding parameters (the embedding adds V·64).
    "tiny": {"n_layers": 4, "d_model": 64, "n_heads": 4},
    # CPU benchmarks (BENCHMARKS.md's first measurement: 4 layers × 128): ~0.8M non-embedding.
    "small": {"n_layers": 4, "d_model": 128, "n_heads": 4},
    # GPT-2 small's shape with SwiGLU (8/3·768 = 2048): 85M non-embedding, 124M total at vocab 50257.
    "124M": {"n_layers": 12, "d_model": 768, "n_heads": 12, "ffn_hidden": 2048},
    # 16 × 1024 with a 3·d SwiGLU: 218M non-embedding, 270M total at vocab 50257.
    "270M": {"n_layers": 16, "d_model": 1024, "n_heads": 16, "ffn_hidden": 3072},
    # Llama-3.2-1B's body (16 × 2048, 32 heads, 8 kv heads, SwiGLU 8192): N = 0.97B non-embedding.
    "1B": {"n_layers": 16, "d_model": 2048, "n_heads": 32, "n_kv_heads": 8, "ffn_hidden": 8192},
}
"""Model size presets by name: the :class:`ModelConfig` shape fields each one sets. The one list of presets:
the config checks ``model.preset`` against it (:func:`gradus.config.checks.cross_check`) and
:func:`gradus.sizes.resolve_shape` fills shapes from it.
Names are approximate parameter counts at the GPT-2 vocabulary (50,257); ``vocab_size``, ``max_seq_len``
and the RoPE/dropout settings come from the config."""

MODEL_PRESETS = tuple(SIZE_PRESETS)
"""Names of the model size presets, in the table's order."""


class Strict(BaseModel):
    """Base for every section: unknown keys are errors (with a did-you-mean), values are validated."""

    # allow_inf_nan=False: `--set optim.base_lr=.inf` is one line naming the field, not a traceback later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True, allow_inf_nan=False)


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


class CurriculumConfig(Strict):
    """Ordered stages and when training stops."""

    stages: list[StageConfig] = Field(..., min_length=1, description="Stages in order.")
    target_tokens: TokenCount | None = Field(
        None, gt=0, description="Stop after this many tokens; default: the sum of the stages' token budgets."
    )
    schedule: Literal["per_stage", "global", "wsd", "linear"] = Field(
        "per_stage",
        description="per_stage: each stage warms up and decays on its own; global: one warmup+cosine over the run, "
        "scaled by each stage's peak; wsd: one warmup, a stable peak, then a cooldown over the last "
        "cooldown_fraction of the run; linear: one warmup, then a straight line to zero (D2Z). The last three are "
        "global: stage switches do not restart them.",
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


# ------------------------------------------------------------------------------------- optim / train
class OptimConfig(Strict):
    """AdamW."""

    base_lr: float = Field(6e-4, gt=0, description="Base LR that lr_multiplier and lr_rule scale.")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW β1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW β2.")
    eps: float = Field(1e-8, gt=0, description="AdamW ε.")
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay (not on norms, biases, embeddings).")
    fused: Literal["auto", "on", "off"] = Field("auto", description="Fused AdamW kernel where available.")


class GuardConfig(Strict):
    """Loss-spike and NaN guard."""

    enabled: bool = Field(True, description="Watch the loss for spikes and NaN/Inf.")
    spike_factor: float = Field(2.0, gt=1, description="A loss above this × the running mean is a spike.")
    window: int = Field(50, gt=1, description="Steps in the running mean.")
    warmup_steps: int = Field(20, ge=0, description="Steps before spikes are judged (the mean needs history).")
    lr_backoff: float = Field(0.5, gt=0, lt=1, description="LR factor applied at a spike.")
    recover_steps: int = Field(100, ge=1, description="Steps over which the LR factor recovers to 1.")
    max_bad_steps: int = Field(3, ge=1, description="NaN/Inf steps in a row before rolling back to a checkpoint.")
    max_rollbacks: int = Field(
        5, ge=0, description="Rollbacks in one run before it stops as diverged (each halves the LR factor)."
    )
    skip_bad_batches: bool = Field(
        False, description="After max_bad_steps NaN/Inf steps in a row, skip on (recording each skipped batch's data "
        "position) instead of rolling back; the run still stops once max_rollbacks + 1 such runs of bad steps occur."
    )
    min_lr_factor: float = Field(
        1e-3, gt=0, le=1, description="Floor of the LR factor a resumed run inherits from rollbacks (raised to it, "
        "with a message)."
    )


class EmaConfig(Strict):
    """An exponential moving average of the weights, evaluated next to them and saved as ``checkpoints/ema``."""

    decay: float = Field(0.999, gt=0, lt=1, description="Weight of the old average at each update, in (0, 1); "
                         "0.999 averages over about the last 1000 updates.")
    every: int = Field(1, ge=1, description="Optimizer steps between updates of the average.")


class PasskeyConfig(Strict):
    """The long-context probe: a key hidden in filler at several depths, retrieved or not (stage C)."""

    seq_len: int | None = Field(None, gt=0, description="Probe length in tokens; default the current stage's "
                                "seq_len. At most model.max_seq_len.")
    depths: int = Field(4, ge=1, description="Depths the key is hidden at, evenly from the start (0%) to the end "
                        "(100%) of the filler.")
    trials: int = Field(8, ge=1, description="Prompts per depth (each with its own random key).")
    digits: int = Field(5, ge=1, le=20, description="Digits of the key.")
    seed: int = Field(0, description="Seed of the keys (the same prompts at every evaluation).")


class TrainConfig(Strict):
    """The loop: stopping, evaluation, checkpoints, precision, determinism."""

    seed: int = Field(0, description="One seed for model init, data order and sampling.")
    max_steps: StepCount | None = Field(
        None, gt=0, description="Stop after this many steps (also when tokens remain); accepts 10k."
    )
    eval_every: int = Field(2000, gt=0, description="Steps between evaluations (also at every stage change).")
    eval_reference_seq_len: int | None = Field(
        None, gt=0, description="Fixed evaluation length for comparable curves; default the longest stage's seq_len."
    )
    eval_at_stage_change: bool = Field(True, description="Also evaluate at every stage change.")
    checkpoint_every: int | None = Field(1000, gt=0, description="Steps between checkpoints (None = stage ends only).")
    checkpoint_every_tokens: TokenCount | None = Field(None, gt=0, description="Tokens between checkpoints.")
    keep_last: int = Field(3, ge=1, description="Checkpoints kept besides the best.")
    early_stopping_patience: int | None = Field(
        10, ge=1, description="Evaluations without improvement of the reference loss before stopping (None = off)."
    )
    early_stopping_metric: str = Field(
        "val/loss", pattern=r"^val(_ema)?/([^/]+/)?loss$", description="The evaluation figure early stopping and the best checkpoint follow: val/loss "
        "(the mix at the reference length), val/<source>/loss (one source's held-out documents) or val_ema/loss."
    )
    early_stopping_min_delta: float | None = Field(
        None, gt=0, lt=1, description="Stop on a flat curve: when each of the last flat_evals evaluations improved "
        "the followed loss by less than this share of it (0.001 = 0.1%); None = off (patience still applies)."
    )
    early_stopping_flat_evals: int = Field(
        3, ge=1, description="Evaluations in a row with a relative improvement below early_stopping_min_delta "
        "that count as a flat curve."
    )
    ema: EmaConfig | None = Field(
        None, description="Keep an exponential moving average of the weights (evaluated as val_ema/..., saved as "
        "checkpoints/ema and ema.safetensors in each checkpoint); None = off."
    )
    passkey: PasskeyConfig | None = Field(
        None, description="Run the passkey-retrieval probe at every evaluation (probe/passkey/accuracy and "
        "probe/passkey/depth_<percent>); None = off."
    )
    micro_batch_size: int | None = Field(
        None, gt=0, description="Examples per forward pass (an upper bound); default: found per stage, on CUDA by "
        "a memory probe, on CPU from a memory estimate against the host's free memory."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU."
    )
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile (auto: on for CUDA).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    threads: int | None = Field(
        None, gt=0, description="CPU threads for torch (torch.set_num_threads); default: torch's own choice. "
        "On a shared CPU box, fewer threads than cores avoids stalls."
    )
    guard: GuardConfig = Field(default_factory=GuardConfig, description="Loss-spike and NaN guard.")


class WandbConfig(Strict):
    """Weights & Biases: every metric record mirrored to a W&B run (needs ``pip install wandb``)."""

    project: str = Field("gradus", min_length=1, description="W&B project the run is logged to.")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: written under the run directory's wandb/, sent later with `wandb sync`; "
        "online: sent as it trains (needs a W&B login); disabled: no W&B at all."
    )
    entity: str | None = Field(None, description="W&B team or user; default: the login's own.")
    name: str | None = Field(None, description="W&B run name; default: the config's name, else the run directory's.")
    group: str | None = Field(None, description="W&B group, to show related runs (a sweep's arms) together.")
    tags: list[str] = Field(default_factory=list, description="W&B tags.")


class LoggingConfig(Strict):
    """Console, metrics.jsonl, TensorBoard and (optionally) Weights & Biases."""

    log_every: int = Field(10, gt=0, description="Steps between console lines and metric records.")
    tensorboard: bool = Field(True, description="Write TensorBoard events when tensorboard is installed.")
    progress_bar: bool = Field(True, description="Live progress bar on a terminal.")
    peak_flops: float | None = Field(
        None, gt=0, description="Peak FLOP/s for MFU; default: a table by GPU name, or a measured matmul peak."
    )
    wandb: WandbConfig | None = Field(
        None, description="Mirror the metrics to Weights & Biases, e.g. {project: my-runs, mode: offline}; "
        "unset: no W&B."
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
