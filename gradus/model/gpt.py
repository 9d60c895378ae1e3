"""A GPT-style decoder in one readable module, built bottom-up (nanoGPT's layout, Llama's parts).

    tokens [B, T]
      -> token embedding                           [B, T, d]
      -> n_layers × Block:  x + Attention(RMSNorm(x))      (RoPE, causal SDPA, optional grouped-query)
                            x + SwiGLU(RMSNorm(x))
      -> final RMSNorm -> output head (tied to the embedding by default)   [B, T, V]

Shapes in comments use B batch, T sequence length, d d_model, H query heads, K key/value heads,
hd head width (d / H), f SwiGLU hidden width, V vocabulary. No biases anywhere. The parameter layout is
exactly the one :mod:`gradus.sizes` counts, so ``model.num_params()`` equals ``shape.params_total``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gradus.errors import CheckpointError, ConfigError
from gradus.files import make_readable
from gradus.sizes import ModelShape

SHAPE_KEY = "gradus_model_shape"
"""safetensors metadata key holding the shape as JSON, so a weights file says what model it belongs to."""


# ---------------------------------------------------------------------------------------------- RoPE
def rope_tables(
    head_dim: int, max_seq_len: int, theta: float, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [max_seq_len, head_dim] for rotary position embeddings.

    Pair i of a head rotates by angle ``(p / scaling) · theta^(-2i/hd)`` at position p. ``scaling`` > 1 is
    position interpolation (Chen et al. 2023): position p gets the angles that position p/scaling had,
    so a long-context stage never sees angles outside the range trained at the shorter length.
    Computed in float64 and stored as float32 so long tables stay exact.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # [hd/2]
    positions = torch.arange(max_seq_len, dtype=torch.float64) / scaling  # [T_max]
    angles = torch.outer(positions, inv_freq)  # [T_max, hd/2]
    angles = torch.cat([angles, angles], dim=-1)  # [T_max, hd]: the same angle for both halves of a pair
    return angles.cos().float(), angles.sin().float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension (the pairs RoPE rotates)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys x [B, heads, T, hd] by position: cos, sin are [T, hd]."""
    return x * cos + _rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Holds the cos/sin tables. They are non-persistent buffers: derived from the shape, never saved,
    and rebuilt by :meth:`set_scaling` when a long-context stage changes the interpolation factor."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float, scaling: float):
        super().__init__()
        self.head_dim, self.max_seq_len, self.theta, self.scaling = head_dim, max_seq_len, theta, scaling
        cos, sin = rope_tables(head_dim, max_seq_len, theta, scaling)
        self.register_buffer("cos", cos, persistent=False)  # [T_max, hd]
        self.register_buffer("sin", sin, persistent=False)  # [T_max, hd]

    def set_scaling(self, scaling: float) -> None:
        """Rebuild the tables for a new position-interpolation factor (on the same device)."""
        cos, sin = rope_tables(self.head_dim, self.max_seq_len, self.theta, scaling)
        self.cos = cos.to(self.cos.device)
        self.sin = sin.to(self.sin.device)
        self.scaling = scaling

    def forward(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 tables for positions 0..t-1, each [t, hd]."""
        return self.cos[:t], self.sin[:t]


# ------------------------------------------------------------------------------------------ attention
class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE; grouped-query when n_kv_heads < n_heads."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        assert shape.n_kv_heads is not None
        self.n_heads, self.n_kv_heads, self.head_dim = shape.n_heads, shape.n_kv_heads, shape.head_dim
        self.dropout = shape.dropout
        d = shape.d_model
        self.q_proj = nn.Linear(d, d, bias=False)  # d -> H·hd
        self.k_proj = nn.Linear(d, shape.kv_dim, bias=False)  # d -> K·hd
        self.v_proj = nn.Linear(d, shape.kv_dim, bias=False)  # d -> K·hd
        self.o_proj = nn.Linear(d, d, bias=False)  # H·hd -> d; a residual projection (scaled init)
        self.o_proj.residual_projection = True  # type: ignore[attr-defined]
        self.resid_dropout = nn.Dropout(shape.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, T, d] -> [B, T, d]."""
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, K, T, hd]
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, K, T, hd]
        # Rotate in float32 (as Llama does): bf16 angles lose the position resolution at long lengths.
        q = apply_rope(q.float(), cos, sin).type_as(v)
        k = apply_rope(k.float(), cos, sin).type_as(v)
        if self.n_kv_heads != self.n_heads:
            # Each key/value head serves H/K consecutive query heads. Repeating them explicitly works on
            # every torch >= 2.4 (SDPA's enable_gqa flag came later) and costs only activation memory.
            repeat = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(repeat, dim=1)  # [B, H, T, hd]
            v = v.repeat_interleave(repeat, dim=1)  # [B, H, T, hd]
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, T, hd]; flash / memory-efficient kernels where available: no T×T matrix is stored
        y = y.transpose(1, 2).contiguous().view(b, t, d)  # [B, T, d]: heads side by side again
        return self.resid_dropout(self.o_proj(y))


# ------------------------------------------------------------------------------------------------ MLP
class SwiGLU(nn.Module):
    """The gated MLP of PaLM / Llama: down(silu(gate(x)) · up(x))."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        assert shape.ffn_hidden is not None
        self.gate = nn.Linear(shape.d_model, shape.ffn_hidden, bias=False)  # d -> f
        self.up = nn.Linear(shape.d_model, shape.ffn_hidden, bias=False)  # d -> f
        self.down = nn.Linear(shape.ffn_hidden, shape.d_model, bias=False)  # f -> d; residual projection
        self.down.residual_projection = True  # type: ignore[attr-defined]
        self.dropout = nn.Dropout(shape.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, d] -> [B, T, d]."""
        return self.dropout(self.down(F.silu(self.gate(x)) * self.up(x)))  # [B, T, f] inside


# ---------------------------------------------------------------------------------------------- block
class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        self.attn_norm = nn.RMSNorm(shape.d_model, eps=shape.norm_eps)
        self.attn = CausalSelfAttention(shape)
        self.mlp_norm = nn.RMSNorm(shape.d_model, eps=shape.norm_eps)
        self.mlp = SwiGLU(shape)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, T, d] -> [B, T, d]."""
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


# ------------------------------------------------------------------------------------------------ GPT
class GPT(nn.Module):
    """The decoder. ``GPT(shape)``; ``logits, loss = model(inputs, labels)``.

    Initialisation follows GPT-2 / nanoGPT: every matmul weight and the embedding ~ N(0, 0.02²); the two
    projections that write into the residual stream in each block (attention out, MLP down) use
    0.02/sqrt(2·n_layers), so the residual stream's variance does not grow with depth; RMSNorm gains 1.
    """

    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        self.tok_emb = nn.Embedding(shape.vocab_size, shape.d_model)  # V -> d
        self.drop = nn.Dropout(shape.dropout)
        self.rope = RotaryEmbedding(shape.head_dim, shape.max_seq_len, shape.rope_theta, shape.rope_scaling)
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.n_layers))
        self.norm = nn.RMSNorm(shape.d_model, eps=shape.norm_eps)
        self.lm_head = nn.Linear(shape.d_model, shape.vocab_size, bias=False)  # d -> V
        if shape.tie_embeddings:
            # One tensor for both ends; safetensors' save_model/load_model store it once and re-tie it.
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = 0.02
        if isinstance(module, nn.Linear):
            if getattr(module, "residual_projection", False):
                std = 0.02 / math.sqrt(2 * self.shape.n_layers)
            if module is self.lm_head and self.shape.tie_embeddings:
                return  # the shared tensor is initialised once, as the embedding
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)

    def forward(
        self, inputs: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """inputs int64 [B, T] -> (logits [B, T, V], loss).

        ``labels`` [B, T] are the targets at each position (already shifted by the data pipeline);
        -100 marks positions to ignore. ``loss`` is the mean cross-entropy over the unmasked labels,
        computed in float32 (0 when every label is masked, so padding-only batches do not give NaN);
        None without labels.
        """
        _, t = inputs.shape
        if t > self.shape.max_seq_len:
            raise ConfigError(
                f"sequence length {t} exceeds model.max_seq_len={self.shape.max_seq_len}; "
                f"raise model.max_seq_len or shorten the stage's seq_len"
            )
        cos, sin = self.rope(t)  # [T, hd] each, float32
        x = self.drop(self.tok_emb(inputs))  # [B, T, d]
        for block in self.blocks:
            x = block(x, cos, sin)  # [B, T, d]
        logits = self.lm_head(self.norm(x))  # [B, T, V]
        if labels is None:
            return logits, None
        flat = labels.reshape(-1)  # [B·T]
        loss_sum = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), flat, ignore_index=-100, reduction="sum"
        )
        count = (flat != -100).sum().clamp(min=1)
        return logits, loss_sum / count

    def set_rope_scaling(self, scaling: float) -> None:
        """Change the RoPE position-interpolation factor in place (e.g. at a long-context stage); the
        weights are untouched and ``self.shape`` records the new factor."""
        if not scaling >= 1.0:
            raise ConfigError(f"rope_scaling={scaling}: must be ≥ 1 (1 = no position interpolation)")
        self.rope.set_scaling(scaling)
        self.shape = self.shape.with_(rope_scaling=scaling)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, a tied embedding counted once; ``non_embedding`` leaves out the token embedding and
        an untied output head (equals ``shape.params_non_embedding`` / ``shape.params_total``)."""
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if non_embedding:
            total -= self.tok_emb.weight.numel()
            if not self.shape.tie_embeddings:
                total -= self.lm_head.weight.numel()
        return total

    # ------------------------------------------------------------------------------ safetensors
    def save_safetensors(self, path: str | Path) -> None:
        """Write the weights (a tied tensor once) and the shape, as JSON metadata, to ``path``."""
        from safetensors.torch import save_model

        save_model(self, str(path), metadata={SHAPE_KEY: json.dumps(self.shape.to_dict())})
        make_readable(path)  # safetensors writes 0600

    def load_safetensors_(self, path: str | Path) -> GPT:
        """Load weights saved by :meth:`save_safetensors` into this model, in place (strict: every tensor
        must match by name and shape). A missing file or a different shape is a one-line
        :class:`gradus.errors.CheckpointError`. Returns self."""
        from safetensors.torch import load_model

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: weights file not found")
        try:
            load_model(self, str(path), strict=True, device=str(self.tok_emb.weight.device))
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path}: weights do not fit this model ({self.shape.describe()}): {first}") from None
        except Exception as err:  # a truncated or foreign file: safetensors raises its own errors
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
        return self

    @classmethod
    def load_safetensors(cls, path: str | Path, shape: ModelShape | None = None) -> GPT:
        """A new model with the weights from ``path``; its shape is ``shape`` or, when omitted, the one
        stored in the file's metadata."""
        if shape is None:
            shape = read_shape(path)
        return cls(shape).load_safetensors_(path)


def read_shape(path: str | Path) -> ModelShape:
    """The :class:`ModelShape` stored in a weights file written by :meth:`GPT.save_safetensors`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    if SHAPE_KEY not in meta:
        raise CheckpointError(f"{path}: no model shape in the file's metadata; pass the shape explicitly")
    return ModelShape.from_dict(json.loads(meta[SHAPE_KEY]))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on 2-D matmul weights only; none on norms, biases and
    embeddings (a tied output head is the embedding, so it is not decayed; an untied head is a matmul
    and is). Each parameter appears once even when shared."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if isinstance(module, nn.Embedding) or p.dim() < 2:
                no_decay.append(p)
            else:
                decay.append(p)
    # modules() visits the embedding before the head, so a tied tensor is classed as the embedding.
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
