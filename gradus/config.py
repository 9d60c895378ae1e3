"""Typed, validated configuration: YAML in, objects out, and back.

Layer 0: imports nothing from gradus but ``units`` and ``errors``. Every field carries a description
(shown by ``gradus schedule`` and in error messages). Problems are collected and reported at once, each
as ``<file>: line N: <field.path>=<value>: <what is wrong and how to fix it>`` (``<file> (--set): ...``
when a ``--set`` override made the value). "At once" includes the checks pydantic would skip after a
field error (a stage's own rules, the cross-section rules): :func:`stage_problems` and
:func:`cross_check` also run on the raw mapping.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import to_jsonable_python

from gradus.errors import ConfigError
from gradus.units import parse_count


def _count(value: Any) -> int:
    return parse_count(value)


TokenCount = Annotated[int, BeforeValidator(_count)]
"""An int that also accepts ``10M``, ``1.5B``, ``32_768`` in YAML and on the command line."""


def _step_count(value: Any) -> int:
    return parse_count(value, "step count")


StepCount = Annotated[int, BeforeValidator(_step_count)]
"""A step number that also accepts ``2k``, ``40_000``."""

MODEL_PRESETS = ("tiny", "small", "124M", "270M", "1B")
"""Model size presets defined by ``gradus.model`` (kept here too, so a typo is caught with the rest of the
config instead of when the model is built; keep the two lists in step)."""


class Strict(BaseModel):
    """Base for every section: unknown keys are errors (with a did-you-mean), values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


# --------------------------------------------------------------------------------------------- model
class ModelConfig(Strict):
    """The GPT decoder. ``preset`` fills every shape field left unset; explicit fields win."""

    preset: str | None = Field(
        "tiny", description="Size preset (tiny, small, 124M, 270M, 1B) filling unset shape fields."
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

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique, repeated: {', '.join(dup)}")
        return self


# ---------------------------------------------------------------------------------------- curriculum
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
    mix: dict[str, float] | None = Field(
        None, description="Source weights by name (normalised); default: the previous stage's, else uniform."
    )

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


def _given(d: Mapping, key: str) -> bool:
    return d.get(key) is not None


def _number(value: Any) -> float | None:
    """A raw YAML value as a number, or None when it is not one (the schema reports that itself)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) and number == int(number) else None


def _counted(value: Any) -> int | None:
    try:
        return parse_count(value)
    except (ValueError, TypeError):
        return None


def stage_problems(stage: Mapping) -> list[str]:
    """Checks inside one stage, on its raw mapping or on a validated stage's ``model_dump()``.

    Works on raw data so that these problems are reported together with field errors (pydantic skips a
    model's own validator once a field fails). A line starting with ``.`` names a field of the stage; the
    caller puts the stage's path in front.
    """
    problems: list[str] = []
    has_batch, has_tpb = _given(stage, "batch_size"), _given(stage, "tokens_per_batch")
    if has_batch and has_tpb:
        problems.append(
            f"both batch_size={stage['batch_size']} and tokens_per_batch={stage['tokens_per_batch']} are given; "
            "keep one (batch_size fixes the examples per step, tokens_per_batch derives them from seq_len)"
        )
    elif not has_batch and not has_tpb:
        problems.append(
            "neither batch_size nor tokens_per_batch is given; add one, e.g. batch_size: 32 or tokens_per_batch: 32768"
        )
    if _given(stage, "step") and _given(stage, "tokens"):
        problems.append(
            f"both step={stage['step']} and tokens={stage['tokens']} are given; a stage starts at a step or lasts "
            "a token budget, keep one"
        )
    lr_keys = ("peak_lr", "lr_multiplier", "lr_scale", "lr_rule")
    lr_forms = [k for k in lr_keys if _given(stage, k)]
    if len(lr_forms) > 1:
        problems.append(
            f"{' and '.join(lr_forms)} are given; the peak LR comes from one of peak_lr, lr_multiplier "
            "(alias lr_scale) or lr_rule, keep one"
        )
    if _given(stage, "warmup_steps") and _given(stage, "warmup_tokens"):
        problems.append("both warmup_steps and warmup_tokens are given; keep one")
    if _given(stage, "warmup_cap") and not _given(stage, "warmup_tokens"):
        problems.append(f".warmup_cap={stage['warmup_cap']}: only bounds a warmup_tokens warmup; add warmup_tokens or drop it")
    if _given(stage, "grad_clip") and _given(stage, "clip_rule"):
        problems.append(f"both grad_clip={stage['grad_clip']} and clip_rule={stage['clip_rule']} are given; keep one")
    mix = stage.get("mix")
    if isinstance(mix, Mapping) and mix:
        weights = {str(k): _number(v) for k, v in mix.items()}
        for source, weight in weights.items():
            if weight is not None and not weight >= 0:
                problems.append(f".mix.{source}={mix[source]}: mix weights must be ≥ 0; use 0 to leave a source out")
        usable = [w for w in weights.values() if w is not None]
        if len(usable) == len(weights) and all(w >= 0 for w in usable) and sum(usable) <= 0:
            problems.append(".mix: the weights sum to 0; give at least one source a positive weight")
    return problems


class CurriculumConfig(Strict):
    """Ordered stages and when training stops."""

    stages: list[StageConfig] = Field(..., min_length=1, description="Stages in order.")
    target_tokens: TokenCount | None = Field(
        None, gt=0, description="Stop after this many tokens; default: the sum of the stages' token budgets."
    )
    schedule: Literal["per_stage", "global"] = Field(
        "per_stage",
        description="per_stage: each stage warms up and decays on its own; global: one warmup+cosine over the run, "
        "scaled by each stage's peak.",
    )
    decay: Literal["cosine", "linear", "constant"] = Field("cosine", description="Default in-stage decay shape.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Default decay floor as a fraction of the peak.")
    global_warmup_fraction: float = Field(
        0.02, ge=0, lt=1, description="global schedule: warmup as a fraction of all steps (1–2% recommended)."
    )
    grad_clip: float = Field(1.0, gt=0, description="Default gradient clip for stages that give none.")


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


class LoggingConfig(Strict):
    """Console, metrics.jsonl and TensorBoard."""

    log_every: int = Field(10, gt=0, description="Steps between console lines and metric records.")
    tensorboard: bool = Field(True, description="Write TensorBoard events when tensorboard is installed.")
    progress_bar: bool = Field(True, description="Live progress bar on a terminal.")
    peak_flops: float | None = Field(
        None, gt=0, description="Peak FLOP/s for MFU; default: a table by GPU name, or a measured matmul peak."
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
        problems = cross_check(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _section(data: Mapping, key: str) -> Mapping:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def cross_check(cfg: GradusConfig | Mapping) -> list[str]:
    """Checks that span sections; each problem is one line ``field=value: why; how to fix``.

    Takes a validated config or the raw mapping: on raw data it checks whatever values are usable, so these
    problems are reported together with the schema's own (every problem at once).
    """
    data: Mapping = cfg.model_dump() if isinstance(cfg, BaseModel) else cfg
    problems: list[str] = []
    model, cur, train = _section(data, "model"), _section(data, "curriculum"), _section(data, "train")
    raw_sources = _section(data, "data").get("sources")
    sources = raw_sources if isinstance(raw_sources, list) else []
    names = [src.get("name") for src in sources if isinstance(src, Mapping)]
    # Unknown mix sources can only be judged when every source has a readable name.
    names_known = bool(names) and len(names) == len(sources) and all(isinstance(n, str) for n in names)
    raw_stages = cur.get("stages")
    stages = [st if isinstance(st, Mapping) else {} for st in raw_stages] if isinstance(raw_stages, list) else []

    max_len = _int(model.get("max_seq_len", ModelConfig.model_fields["max_seq_len"].default))
    preset = model.get("preset", ModelConfig.model_fields["preset"].default)
    if isinstance(preset, str) and preset not in MODEL_PRESETS:
        close = difflib.get_close_matches(preset, MODEL_PRESETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        problems.append(f"model.preset={preset!r}: unknown model preset; {hint}known: {', '.join(MODEL_PRESETS)}")
    d_model, n_heads, n_kv = (_int(model.get(k)) for k in ("d_model", "n_heads", "n_kv_heads"))
    if d_model and n_heads and d_model % n_heads:
        problems.append(f"model.d_model={d_model} is not divisible by model.n_heads={n_heads}; pick a divisor")
    if n_heads and n_kv and n_heads % n_kv:
        problems.append(f"model.n_heads={n_heads} is not divisible by model.n_kv_heads={n_kv}; pick a divisor")

    for i, st in enumerate(stages):
        where = f"curriculum.stages[{i}]"
        seq_len = _int(st.get("seq_len"))
        if seq_len is not None and max_len is not None and 0 < max_len < seq_len:
            problems.append(
                f"{where}.seq_len={seq_len} exceeds model.max_seq_len={max_len}; "
                f"lower the stage's seq_len or raise model.max_seq_len"
            )
        mix = st.get("mix")
        if names_known and isinstance(mix, Mapping):
            for source in mix:
                if source not in names:
                    hint = difflib.get_close_matches(str(source), sorted(names), n=1)
                    fix = f"did you mean {hint[0]!r}?" if hint else f"known sources: {', '.join(sorted(names))}"
                    problems.append(f"{where}.mix.{source}: unknown source {source!r}; {fix}")

    step_based = [_given(st, "step") for st in stages]
    token_based = [_given(st, "tokens") for st in stages]
    target = cur.get("target_tokens")
    max_steps = train.get("max_steps")
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
        else:
            first = _int(stages[0].get("step"))
            if first is not None and first != 0:
                problems.append(
                    f"curriculum.stages[0].step={stages[0].get('step')}: the first stage must start at step 0"
                )
        for i in range(1, len(stages)):
            a, b = _counted(stages[i - 1].get("step")), _counted(stages[i].get("step"))
            if a is not None and b is not None and b <= a:
                problems.append(
                    f"curriculum.stages[{i}].step={stages[i].get('step')} is not after "
                    f"stages[{i - 1}].step={stages[i - 1].get('step')}; stage starts must increase"
                )
        if target is None and max_steps is None:
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
        if len(stages) == 1 and not token_based[0] and target is None and max_steps is None:
            problems.append("curriculum.target_tokens is missing; give target_tokens or train.max_steps")
    ref = _int(train.get("eval_reference_seq_len"))
    if ref is not None and max_len is not None and 0 < max_len < ref:
        problems.append(
            f"train.eval_reference_seq_len={ref} exceeds model.max_seq_len={max_len}; lower it or raise max_seq_len"
        )
    return problems


# ------------------------------------------------------------------------------------ load / dump
def _unwrap(annotation: Any) -> Any:
    """The model class inside Optional[...], list[...], dict[..., X], Annotated[...]."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (list, tuple):
        return _unwrap(typing.get_args(annotation)[0])
    if origin is dict:
        return _unwrap(typing.get_args(annotation)[1])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                found = _unwrap(arg)
                if isinstance(found, type) and issubclass(found, BaseModel):
                    return found
        return None
    return annotation


def _parent_model(loc: tuple) -> type[BaseModel] | None:
    """The config class that owns the last key of an error location."""
    cls: Any = GradusConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return None
        cls = _unwrap(cls.model_fields[part].annotation)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_names(cls: type[BaseModel]) -> list[str]:
    """Keys a section accepts: field names and their aliases (``lr_scale``)."""
    names: list[str] = []
    for name, info in cls.model_fields.items():
        names.append(name)
        if isinstance(info.validation_alias, AliasChoices):
            names += [c for c in info.validation_alias.choices if isinstance(c, str) and c != name]
    return names


_SECTIONS = ("curriculum.", "model.", "data.", "train.", "optim.", "logging.")


def _join(path: str, sub: str) -> str:
    """Put a validator's problem line under the path of the object it checked."""
    if sub.startswith(_SECTIONS):  # cross-section lines carry their own full path
        return sub
    if sub.startswith("."):  # a field of the checked object: ".mix.code=-1: ..."
        return f"{path}{sub}" if path else sub[1:]
    return f"{path or '(config)'}: {sub}"


def format_validation_error(err: ValidationError) -> list[str]:
    """One human line per pydantic error: field path, value, and how to fix it."""
    errors = err.errors()
    unknown: dict[tuple, list[str]] = {}
    for e in errors:
        if e["type"] == "extra_forbidden":
            unknown.setdefault(tuple(e["loc"][:-1]), []).append(str(e["loc"][-1]))
    lines = []
    for e in errors:
        loc = tuple(e["loc"])
        path = _path(loc)
        kind = e["type"]
        if kind == "extra_forbidden":
            parent = _parent_model(loc)
            key = str(loc[-1])
            hint = ""
            if parent is not None:
                known = _field_names(parent)
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            lines.append(f"{path}: unknown key {key!r}{hint}")
        elif kind == "missing":
            # `curriculm:` gives an unknown key *and* a missing `curriculum`; the did-you-mean says both.
            siblings = unknown.get(loc[:-1], [])
            if any(difflib.get_close_matches(k, [str(loc[-1])], n=1) for k in siblings):
                continue
            parent = _parent_model(loc)
            info = parent.model_fields.get(str(loc[-1])) if parent is not None else None
            what = f" ({info.description.rstrip('.')})" if info is not None and info.description else ""
            lines.append(f"{path}: required field is missing{what}; add it")
        elif kind in ("value_error", "assertion_error"):
            msg = str(e.get("ctx", {}).get("error", e["msg"]))
            value = e.get("input")
            for sub in msg.split("\n"):
                if isinstance(value, Mapping) or not loc:  # a model's own check
                    lines.append(_join(path, sub))
                else:  # a field's parser, e.g. a token count: show the value it got
                    lines.append(f"{path}={_short(value)}: {sub}")
        else:
            value = e.get("input")
            msg = e["msg"].replace("Input should be", "must be")
            lines.append(f"{path or '(config)'}={_short(value)}: {msg[:1].lower()}{msg[1:]}")
    return lines


def _all_problems(data: Any, err: ValidationError) -> list[str]:
    """The schema's errors plus the checks pydantic skipped because a field failed first."""
    lines = format_validation_error(err)
    if isinstance(data, Mapping):
        # A stage's own validator runs only when all its fields are valid; check the others on raw data.
        failed = {e["loc"][2] for e in err.errors() if e["loc"][:2] == ("curriculum", "stages") and len(e["loc"]) > 3}
        stages = _section(data, "curriculum").get("stages")
        if isinstance(stages, list):
            for i, stage in enumerate(stages):
                if i in failed and isinstance(stage, Mapping):
                    lines += [_join(f"curriculum.stages[{i}]", p) for p in stage_problems(stage)]
        # The whole-config check never ran (some section failed): run it on whatever is usable.
        lines += cross_check(data)
    return list(dict.fromkeys(lines))  # de-duplicated, in order


def config_problems(data: Any) -> list[str]:
    """Every problem of a config mapping, one line each (empty when it is valid)."""
    try:
        GradusConfig.model_validate(data)
    except ValidationError as err:
        return _all_problems(data, err)
    return []


_INDEX = re.compile(r"^(.*?)\[(\d+)\]$")


def _split_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for raw in key.split("."):
        indices = []
        while (m := _INDEX.match(raw)) is not None:
            raw, idx = m.group(1), int(m.group(2))
            indices.insert(0, idx)
        if raw:
            parts.append(int(raw) if raw.isdigit() else raw)
        parts.extend(indices)
    return parts


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` / ``curriculum.stages[2].seq_len=128`` overrides; values are parsed as YAML."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.max_steps=100")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parts = _split_key(key.strip())
        node: Any = data
        for j, part in enumerate(parts[:-1]):
            nxt = parts[j + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    size = len(node) if isinstance(node, list) else 0
                    raise ConfigError(f"--set {key}: index [{part}] out of range (the list has {size} items)")
                node = node[part]
            else:
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {key}: {part!r} is not inside a mapping")
                if node.get(part) is None:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
        last = parts[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise ConfigError(f"--set {key}: index [{last}] out of range")
            node[last] = value
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: cannot set {last!r} on a non-mapping")
            node[last] = value
    return data


_LEADING_PATH = re.compile(r"^[A-Za-z_][\w\-]*(?:\[\d+\]|\.[^\s=:.\[]+)*")


class _YamlIndex:
    """Line numbers of every key and list item of a YAML text, and its duplicated keys."""

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        self.duplicates: list[tuple[tuple, int, int]] = []
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            root = None
        if root is not None:
            self._walk(root, (), 0)

    def _walk(self, node: yaml.Node, path: tuple, depth: int) -> None:
        if depth > 64:  # anchors can nest deeply; line numbers there are not worth a recursion error
            return
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key, line = key_node.value, key_node.start_mark.line + 1
                if key in seen and key != "<<":
                    self.duplicates.append((path + (key,), seen[key], line))
                seen[key] = line
                self.lines[path + (key,)] = line
                self._walk(value_node, path + (key,), depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[path + (i,)] = item.start_mark.line + 1
                self._walk(item, path + (i,), depth + 1)

    def line_of(self, parts: tuple) -> int | None:
        """Line of the deepest key of ``parts`` present in the file."""
        for n in range(len(parts), 0, -1):
            if parts[:n] in self.lines:
                return self.lines[parts[:n]]
        return None


def _place(problems: list[str], origin: str, index: _YamlIndex | None, set_keys: list[str]) -> list[str]:
    """Prefix each problem with where it comes from: the file and line, or the --set that made it."""
    set_paths = [tuple(_split_key(k)) for k in set_keys]
    out = []
    for line in problems:
        m = _LEADING_PATH.match(line)
        parts = tuple(_split_key(m.group(0))) if m else ()
        if parts and any(parts[: len(sp)] == sp for sp in set_paths):
            out.append(f"{origin} (--set): {line}")
            continue
        number = index.line_of(parts) if index is not None and parts else None
        out.append(f"{origin}: line {number}: {line}" if number else f"{origin}: {line}")
    return out


def _read_yaml(path: str | Path) -> tuple[dict, _YamlIndex]:
    p = Path(path)
    if not p.is_file():
        what = "is a directory, not a config file" if p.is_dir() else "config file not found"
        raise ConfigError(f"{p}: {what}; check the path (or use --preset NAME)")
    try:
        text = p.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}:{where} malformed YAML: {problem}; fix the syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text; save the config as UTF-8 YAML") from None
    if data is None:
        raise ConfigError(f"{p}: the file is empty; a config needs data: and curriculum: sections")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top (model:, data:, curriculum:, ...)")
    return data, _YamlIndex(text)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or malformed YAML is a one-line ConfigError with the line."""
    return _read_yaml(path)[0]


def from_dict(data: dict, origin: str = "config") -> GradusConfig:
    """Validate a mapping; all problems are raised together as one ConfigError."""
    try:
        return GradusConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(*[f"{origin}: {line}" for line in _all_problems(data, err)]) from None


def load_config(path: str | Path, overrides: list[str] | None = None, origin: str | None = None) -> GradusConfig:
    """Load a YAML file, apply ``--set`` overrides, validate.

    Every problem is reported at once as ``<origin>: line N: <field.path>=<value>: <why; how to fix>``
    (``<origin> (--set): ...`` when an override made the value). ``origin`` defaults to the path.
    """
    data, index = _read_yaml(path)
    overrides = overrides or []
    data = apply_overrides(data, overrides)
    origin = origin or str(path)
    problems = [
        f"{_path(where)}: duplicate key (lines {first} and {second}); YAML keeps only the last, delete one"
        for where, first, second in index.duplicates
    ]
    cfg = None
    try:
        cfg = GradusConfig.model_validate(data)
    except ValidationError as err:
        problems += _all_problems(data, err)
    if problems or cfg is None:
        set_keys = [item.split("=", 1)[0].strip() for item in overrides]
        raise ConfigError(*_place(problems, origin, index, set_keys))
    return cfg


def _plain(value: Any) -> Any:
    """Plain data of a config object: optional fields that are unset (None by default) are left out, but a
    None that overrides a default (``early_stopping_patience: null``) is kept, so the dump reloads equal."""
    if isinstance(value, BaseModel):
        out = {}
        for name, info in type(value).model_fields.items():
            item = getattr(value, name)
            if item is None and info.default is None:
                continue
            out[name] = _plain(item)
        return out
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return to_jsonable_python(value)


def to_dict(cfg: GradusConfig) -> dict:
    """Plain data (field names, not aliases; unset optional fields left out) that reloads to ``cfg``."""
    return _plain(cfg)


def dump_yaml(cfg: GradusConfig) -> str:
    """The resolved config as YAML (what a run directory's config.yaml holds); reloads to ``cfg``."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: GradusConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(dump_yaml(cfg), encoding="utf-8")
