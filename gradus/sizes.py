"""Model shapes without torch: a config's shape, exact parameter counts, FLOPs per token, and a shape for a
target parameter count (used by ``gradus plan``).

Layer 1, below both ``gradus.model`` and ``gradus.plan`` (which read it; ``gradus.model`` re-exports its
names): it imports only ``gradus.config`` (the size presets' table, :data:`gradus.config.SIZE_PRESETS`) and
``gradus.errors``. Pure Python on purpose: the planner and ``gradus schedule`` read shapes on any laptop
without importing torch. :class:`gradus.model.gpt.GPT` builds exactly the parameters counted here (a test
holds the two together).

Parameter layout of one model (``d`` = d_model, ``f`` = ffn_hidden, ``V`` = vocab_size, ``L`` = n_layers,
``hd`` = d_model / n_heads, ``kv`` = n_kv_heads)::

    token embedding               V·d
    per block   attn RMSNorm      d
                q, o projections  2·d·d
                k, v projections  2·d·(kv·hd)
                MLP RMSNorm       d
                SwiGLU gate, up   2·d·f
                SwiGLU down       f·d
    final RMSNorm                 d
    output head                   V·d (shared with the embedding when tied, then counted once)

No biases anywhere. "Non-embedding" parameters (Kaplan et al.'s N, the planner's N) are everything except
the token embedding and an untied output head.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any

from gradus.config import SIZE_PRESETS, ModelConfig
from gradus.errors import ConfigError

GPT2_VOCAB_SIZE = 50257
"""Vocabulary of the GPT-2 BPE (the default tokenizer); used where no tokenizer size is known."""


def default_ffn_hidden(d_model: int) -> int:
    """SwiGLU hidden width when none is given: 8/3·d_model (so the three SwiGLU matrices hold as many
    parameters as a 4·d GELU MLP's two), rounded up to a multiple of 16 (64 from d_model 512 up) so
    matmuls stay aligned for tensor cores."""
    multiple = 64 if d_model >= 512 else 16
    return multiple * math.ceil(8 * d_model / 3 / multiple)


@dataclass(frozen=True)
class ModelShape:
    """Everything that fixes the model's parameters and forward pass. Built by :func:`resolve_shape`
    from a :class:`gradus.config.ModelConfig`, or directly in tests. Invalid combinations raise
    :class:`gradus.errors.ConfigError` naming the ``model.`` field."""

    n_layers: int
    """Transformer blocks."""
    d_model: int
    """Residual stream width."""
    n_heads: int
    """Query heads; d_model must divide by it and the head width must be even (RoPE rotates pairs)."""
    vocab_size: int
    """Embedding rows (the tokenizer's vocabulary size)."""
    max_seq_len: int = 2048
    """Longest sequence the model accepts (size of the RoPE table)."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; None means n_heads (plain multi-head attention)."""
    ffn_hidden: int | None = None
    """SwiGLU hidden width; None means :func:`default_ffn_hidden` of d_model."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rope_scaling: float = 1.0
    """RoPE position interpolation: positions are divided by this factor (Chen et al. 2023), so a model
    trained at length L attends over s·L positions within the range of angles it has seen."""
    tie_embeddings: bool = True
    """Share the token embedding matrix with the output head."""
    dropout: float = 0.0
    """Dropout probability on attention weights and on each residual branch's output."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""

    def __post_init__(self) -> None:
        # Fill the derived defaults so every consumer sees concrete numbers (frozen: set via object).
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.ffn_hidden is None and self.d_model > 0:
            object.__setattr__(self, "ffn_hidden", default_ffn_hidden(self.d_model))
        problems = _shape_problems(self)
        if problems:
            raise ConfigError(*problems)

    # ------------------------------------------------------------------------------ derived sizes
    @property
    def head_dim(self) -> int:
        """Width of one attention head: d_model / n_heads."""
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        """Width of the key (and of the value) projection: n_kv_heads · head_dim."""
        assert self.n_kv_heads is not None
        return self.n_kv_heads * self.head_dim

    @property
    def params_per_layer(self) -> int:
        """Parameters of one transformer block (two RMSNorms, attention, SwiGLU MLP)."""
        d, f = self.d_model, self.ffn_hidden
        assert f is not None
        attention = 2 * d * d + 2 * d * self.kv_dim
        mlp = 3 * d * f
        return attention + mlp + 2 * d

    @property
    def params_embedding(self) -> int:
        """Token embedding, plus the output head when it is not tied to it."""
        rows = self.vocab_size * self.d_model
        return rows if self.tie_embeddings else 2 * rows

    @property
    def params_non_embedding(self) -> int:
        """N of the scaling laws: every parameter but the token embedding and an untied output head."""
        return self.n_layers * self.params_per_layer + self.d_model

    @property
    def params_total(self) -> int:
        """All parameters, a tied embedding counted once."""
        return self.params_non_embedding + self.params_embedding

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token at ``seq_len`` (default max_seq_len)::

            6·N_mm + 6·n_layers·seq_len·d_model,   N_mm = params_non_embedding + vocab_size·d_model

        6·N_mm is 2 FLOPs per weight per token forward and 4 backward over every weight used in a matmul:
        the non-embedding parameters plus the output head (tied or not, the head is a real V×d matmul;
        the input embedding is a lookup and costs nothing). The attention term is the PaLM / Chinchilla
        appendix count of QKᵀ and A·V: 2·2·seq_len·d_model FLOPs per token and layer forward, ×3 for
        training, halved because a causal token attends to (seq_len+1)/2 positions on average
        (PaLM's 12·L·H·Q·T without causal masking, halved). Norms, softmax and RoPE are left out (<1%).
        """
        t = self.max_seq_len if seq_len is None else seq_len
        matmul_params = self.params_non_embedding + self.vocab_size * self.d_model
        return 6.0 * matmul_params + 6.0 * self.n_layers * t * self.d_model

    def with_(self, **changes: Any) -> ModelShape:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-safe) that :meth:`from_dict` turns back into this shape."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelShape:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model shape: unknown fields {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def describe(self) -> str:
        """One line: layers × width, heads, FFN, parameters."""
        kv = "" if self.n_kv_heads == self.n_heads else f" ({self.n_kv_heads} kv)"
        return (
            f"{self.n_layers} layers × {self.d_model} wide, {self.n_heads} heads{kv} of {self.head_dim}, "
            f"SwiGLU {self.ffn_hidden}, vocab {self.vocab_size}; "
            f"N={_human(self.params_non_embedding)} non-embedding, {_human(self.params_total)} total"
        )


def _human(n: float) -> str:
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(int(n))


def _shape_problems(s: ModelShape) -> list[str]:
    """Every problem of a shape, one line each, naming the model.* field and the fix."""
    problems: list[str] = []
    for name in ("n_layers", "d_model", "n_heads", "vocab_size", "max_seq_len", "n_kv_heads", "ffn_hidden"):
        value = getattr(s, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            problems.append(f"model.{name}={value!r}: must be a positive integer")
    if problems:
        return problems
    if s.d_model % s.n_heads:
        divisors = [h for h in range(1, s.d_model + 1) if s.d_model % h == 0 and (s.d_model // h) % 2 == 0]
        near = min(divisors, key=lambda h: abs(h - s.n_heads)) if divisors else 1
        problems.append(
            f"model.d_model={s.d_model} is not divisible by model.n_heads={s.n_heads}; "
            f"pick n_heads dividing d_model (e.g. {near}) or change d_model"
        )
    elif (s.d_model // s.n_heads) % 2:
        problems.append(
            f"model.n_heads={s.n_heads}: head width d_model/n_heads={s.d_model // s.n_heads} is odd; "
            f"RoPE needs an even head width, so change n_heads or d_model"
        )
    assert s.n_kv_heads is not None
    if not problems and s.n_heads % s.n_kv_heads:
        problems.append(
            f"model.n_kv_heads={s.n_kv_heads} does not divide model.n_heads={s.n_heads}; "
            f"each key/value head serves n_heads/n_kv_heads query heads, so pick a divisor"
        )
    if not (s.rope_theta > 0):
        problems.append(f"model.rope_theta={s.rope_theta}: must be > 0")
    if not (s.rope_scaling >= 1.0):
        problems.append(f"model.rope_scaling={s.rope_scaling}: must be ≥ 1 (1 = no position interpolation)")
    if not (0.0 <= s.dropout < 1.0):
        problems.append(f"model.dropout={s.dropout}: must be in [0, 1)")
    if not (s.norm_eps > 0):
        problems.append(f"model.norm_eps={s.norm_eps}: must be > 0")
    return problems


# ----------------------------------------------------------------------------------------- presets
def preset_fields(name: str) -> dict[str, int]:
    """The shape fields of a size preset; an unknown name is a ConfigError listing the known ones.
    Matching ignores case (``1b`` is ``1B``)."""
    if name in SIZE_PRESETS:
        return dict(SIZE_PRESETS[name])
    folded = {k.lower(): k for k in SIZE_PRESETS}
    if name.lower() in folded:
        return dict(SIZE_PRESETS[folded[name.lower()]])
    close = difflib.get_close_matches(name, list(SIZE_PRESETS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"model.preset={name!r}: unknown size preset; {hint}known: {', '.join(SIZE_PRESETS)} "
        f"(or set preset: null and give n_layers, d_model, n_heads)"
    )


def check_vocab_fits(model_cfg: ModelConfig, tokenizer_vocab_size: int) -> None:
    """A ``model.vocab_size`` below the real tokenizer's is a one-line ConfigError before training (the
    embedding would be indexed out of range at the first forward pass). Only for a loaded tokenizer:
    ``gradus plan``/``schedule`` resolve shapes from a guessed vocabulary."""
    vocab = model_cfg.vocab_size
    if vocab is not None and vocab < tokenizer_vocab_size:
        raise ConfigError(
            f"model.vocab_size={vocab} is smaller than the tokenizer's {tokenizer_vocab_size} tokens; set it to "
            f"at least {tokenizer_vocab_size} or leave it unset to use the tokenizer's"
        )


def resolve_shape(model_cfg: ModelConfig, vocab_size: int) -> ModelShape:
    """The concrete shape of a model config: the preset fills every shape field the config leaves unset,
    explicit fields win. ``vocab_size`` (the tokenizer's) is used unless ``model.vocab_size`` is set.

    Derived fields follow the field they derive from: a preset's ``ffn_hidden`` is used only when
    ``d_model`` also comes from the preset (otherwise 8/3·d_model), and its ``n_kv_heads`` only when
    ``n_heads`` does (otherwise n_heads).
    """
    base: dict[str, int] = preset_fields(model_cfg.preset) if model_cfg.preset else {}
    explicit = {
        k: getattr(model_cfg, k)
        for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_hidden")
        if getattr(model_cfg, k) is not None
    }
    if "d_model" in explicit:
        base.pop("ffn_hidden", None)
    if "n_heads" in explicit:
        base.pop("n_kv_heads", None)
    fields = {**base, **explicit}
    missing = [k for k in ("n_layers", "d_model", "n_heads") if k not in fields]
    if missing:
        raise ConfigError(
            f"model.{missing[0]} is missing; give it (and {', '.join('model.' + m for m in missing[1:]) or 'nothing else'}) "
            f"or name a size preset, one of {', '.join(SIZE_PRESETS)}"
        )
    vocab = model_cfg.vocab_size if model_cfg.vocab_size is not None else vocab_size
    return ModelShape(
        n_layers=fields["n_layers"],
        d_model=fields["d_model"],
        n_heads=fields["n_heads"],
        n_kv_heads=fields.get("n_kv_heads"),
        ffn_hidden=fields.get("ffn_hidden"),
        vocab_size=vocab,
        max_seq_len=model_cfg.max_seq_len,
        rope_theta=model_cfg.rope_theta,
        rope_scaling=model_cfg.rope_scaling,
        tie_embeddings=model_cfg.tie_embeddings,
        dropout=model_cfg.dropout,
        norm_eps=model_cfg.norm_eps,
    )


# ------------------------------------------------------------------------------ shape for a target N
def _target_aspect(n: float) -> float:
    """Preferred d_model / n_layers at N non-embedding parameters: 128 from 1B up (Llama 1B-13B use
    128), 64 at 100M (GPT-2 small: 768/12), 32 for the tiniest models; (N/1e9)^0.3 between."""
    return 128.0 * min(1.0, max(0.25, (n / 1e9) ** 0.3))


def _nice_widths() -> list[int]:
    """Widths a model family would pick: multiples of 64 up to 512, of 128 up to 2048, of 256 up to 8192,
    then of 512 (aligned for tensor cores and divisible into 64- or 128-wide heads)."""
    widths = list(range(64, 513, 64)) + list(range(640, 2049, 128)) + list(range(2304, 8193, 256))
    return widths + list(range(8704, 32769, 512))


def _nice_depths() -> list[int]:
    """Depths: any up to 12, even up to 32, multiples of 4 up to 128."""
    return list(range(1, 13)) + list(range(14, 33, 2)) + list(range(36, 129, 4))


def shape_for_params(
    n_target: float,
    *,
    vocab_size: int = GPT2_VOCAB_SIZE,
    max_seq_len: int = 2048,
    tie_embeddings: bool = True,
) -> ModelShape:
    """A plain multi-head SwiGLU shape whose non-embedding N is near ``n_target``.

    Candidates are "nice" widths and depths (:func:`_nice_widths`, :func:`_nice_depths`), heads 64 wide
    (128 from 2048 wide up) and the default 8/3·d SwiGLU width; the winner has the smallest
    ``|ln(N/target)| + 0.1·|ln(aspect/preferred aspect)|``: the parameter count first, then a width/depth
    ratio like the known families' (:func:`_target_aspect`). N lands within a few percent of the target
    from ~1M parameters up.
    """
    if not (n_target > 0 and math.isfinite(n_target)):
        raise ConfigError(f"params={n_target!r}: the target parameter count must be a positive number")
    best: tuple[float, ModelShape] | None = None
    want_aspect = _target_aspect(n_target)
    for d in _nice_widths():
        # Depth that hits the target at this width (N ≈ 12·L·d²); only the nice depths around it matter.
        ideal = n_target / (12.0 * d * d)
        for layers in _nice_depths():
            if not (ideal / 2 <= layers <= ideal * 2 + 1):
                continue
            head = 128 if d >= 2048 else 64
            shape = ModelShape(
                n_layers=layers,
                d_model=d,
                n_heads=d // head,
                vocab_size=vocab_size,
                max_seq_len=max_seq_len,
                tie_embeddings=tie_embeddings,
            )
            n = shape.params_non_embedding
            score = abs(math.log(n / n_target)) + 0.1 * abs(math.log((d / layers) / want_aspect))
            if best is None or score < best[0]:
                best = (score, shape)
    if best is None:  # below one 64-wide layer: the smallest shape there is.
        return ModelShape(n_layers=1, d_model=64, n_heads=1, vocab_size=vocab_size, max_seq_len=max_seq_len,
                          tie_embeddings=tie_embeddings)
    return best[1]
