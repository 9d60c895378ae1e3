"""The config sections of what is trained on what: the decoder (``model``) and the text it reads (``data``:
sources, tokenizer, packing, the held-out split). Part of the schema (:mod:`gradus.config.schema` composes
them into :class:`~gradus.config.schema.GradusConfig`); same rules: layer 0, a description on every field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gradus.config.fields import SIZE_PRESETS, DocumentCount, Strict, TokenCount


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
