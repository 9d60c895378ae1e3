"""Training memory of one device for one stage shape: weights, gradients, AdamW state and activations.

Pure Python: an estimate from the shape, counted tensor by tensor for :class:`gradus.model.gpt.GPT`
(fp32 master weights, autocast activations, a fused SDPA kernel), good to ~20%. It does not count the
CUDA context and allocator fragmentation (typically 0.5–2 GiB), so :func:`fits` keeps 10% headroom.
``gradus plan --measure`` reports the measured peak next to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradus.sizes import ModelShape

ACT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 2}
"""Bytes per activation element by training precision (autocast computes matmuls in 16 bits). fp8 counts as
bf16: outside the float8 matmuls it runs under bf16 autocast, and the float8 casts kept for the backward pass
are smaller than the bf16 tensors counted, so the figure is an upper bound."""
HEADROOM = 0.9
"""Share of device memory an estimate may fill before a stage is reported as not fitting."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on one device while training one micro-batch of ``micro_batch`` × ``seq_len``."""

    micro_batch: int
    """Sequences per forward pass."""
    seq_len: int
    """Sequence length."""
    precision: str
    """fp32, bf16, fp16 or fp8."""
    weights: int
    """fp32 parameters, plus autocast's 16-bit copies of the matmul weights under bf16/fp16."""
    gradients: int
    """fp32 gradients."""
    optimizer: int
    """AdamW's two fp32 moments."""
    activations: int
    """Tensors saved for the backward pass, plus the logits and their gradient at the loss."""

    @property
    def total(self) -> int:
        """Peak estimate: everything at once (the moment backward starts)."""
        return self.weights + self.gradients + self.optimizer + self.activations


def activation_bytes_per_token(shape: ModelShape, precision: str = "bf16") -> float:
    """Bytes saved for backward per token of a micro-batch (all layers, embedding and loss).

    Per block, with a = 2 bytes (16-bit autocast) or 4 (fp32), d = d_model, f = ffn_hidden:

    * the fp32 residual stream entering each RMSNorm (2 × 4d);
    * RMSNorm outputs cast for the matmuls (2 × a·d);
    * q, k, v after RoPE as SDPA keeps them (k, v repeated to all heads under grouped-query): 3·a·d;
    * the attention output, and its contiguous copy entering the output projection: 2·a·d;
    * SwiGLU: gate, silu(gate), up and their product: 4·a·f.

    Outside the blocks: the embedding output (4d), the final norm (4d + a·d), and at the loss the logits
    (a·V), their fp32 copy and log-softmax (8·V) and the logits' gradient (4·V). The T×T attention
    matrix of the math SDPA path depends on the length and is added by :func:`estimate_memory`.
    """
    a = ACT_BYTES[precision]
    d, v = shape.d_model, shape.vocab_size
    outside = 4 * d + 4 * d + a * d + a * v + 8 * v + 4 * v
    return shape.n_layers * _block_bytes_per_token(shape, precision) + outside


def _block_bytes_per_token(shape: ModelShape, precision: str) -> float:
    """One block's share of :func:`activation_bytes_per_token`."""
    a = ACT_BYTES[precision]
    d, f = shape.d_model, shape.ffn_hidden or 0
    per_layer = 8 * d + 2 * a * d + 3 * a * d + 2 * a * d + 4 * a * f
    if shape.dropout > 0:
        per_layer += 2 * d  # one byte per element for each of the two residual dropout masks
    return per_layer


def checkpointed_blocks(n_layers: int, mode: str, every_k: int) -> list[int]:
    """Indices of the blocks whose activations ``train.activation_checkpointing`` recomputes: none, all
    (``full``), or every ``every_k``-th starting with block 0 (``every_k``)."""
    if mode == "none":
        return []
    return list(range(0, n_layers, 1 if mode == "full" else every_k))


def memory_layout(train, n_layers: int, world_size: int) -> dict[str, int]:
    """``estimate_memory``'s ``shards`` and ``checkpointed`` for a run of ``train`` (a
    :class:`~gradus.config.TrainConfig`) on ``world_size`` processes: FSDP shards only over more than one."""
    shards = world_size if train.parallel == "fsdp" and world_size > 1 else 1
    blocks = checkpointed_blocks(n_layers, train.activation_checkpointing, train.activation_checkpointing_every_k)
    return {"shards": shards, "checkpointed": len(blocks)}


def checkpointed_activation_bytes_per_token(shape: ModelShape, precision: str, checkpointed: int) -> float:
    """:func:`activation_bytes_per_token` with ``checkpointed`` blocks' activations recomputed in the
    backward pass (``train.activation_checkpointing``): such a block keeps only its fp32 input (4d per
    token), and one block's full set exists again while it is recomputed."""
    full = activation_bytes_per_token(shape, precision)
    checkpointed = min(max(0, checkpointed), shape.n_layers)
    if not checkpointed:
        return full
    per_layer = _block_bytes_per_token(shape, precision)
    return full - checkpointed * per_layer + checkpointed * 4 * shape.d_model + per_layer


def estimate_memory(
    shape: ModelShape, seq_len: int, micro_batch: int, precision: str = "bf16", *, attention_matrix: bool = False,
    shards: int = 1, checkpointed: int = 0,
) -> MemoryEstimate:
    """Training memory for one micro-batch on one device. ``shards`` = 1: every device holds the whole
    model and AdamW (DDP). ``shards`` = W > 1 (``train.parallel: fsdp`` over W processes): the fp32
    weights, gradients and AdamW's moments are split W ways; on top, the weights of the block running and
    the one prefetched, and the embedding, gathered whole (in bf16/fp16, fp32 under fp32), and those two
    blocks' fp32 gradients before their reduce-scatter. ``checkpointed``: blocks whose activations are
    recomputed (:func:`checkpointed_activation_bytes_per_token`). ``attention_matrix``: the math SDPA path
    (no fused kernel) also keeps each layer's T×T scores and probabilities per head, 2·a·H·T bytes per token."""
    if precision not in ACT_BYTES:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(ACT_BYTES)}")
    p = shape.params_total
    matmul = shape.params_non_embedding + shape.vocab_size * shape.d_model
    if shards > 1:
        gathered_blocks = 2 * shape.params_non_embedding / max(1, shape.n_layers)
        gathered = gathered_blocks + shape.vocab_size * shape.d_model
        weights = 4 * p / shards + ACT_BYTES[precision] * gathered
        gradients, optimizer = 4 * p / shards + 4 * gathered_blocks, 8 * p / shards
    else:
        weights = 4 * p + (2 * matmul if precision != "fp32" else 0)
        gradients, optimizer = 4 * p, 8 * p
    tokens = micro_batch * seq_len
    act = checkpointed_activation_bytes_per_token(shape, precision, checkpointed) * tokens
    if attention_matrix:
        kept = shape.n_layers - min(checkpointed, shape.n_layers) + (1 if checkpointed else 0)
        act += 2 * ACT_BYTES[precision] * shape.n_heads * seq_len * tokens * kept
    return MemoryEstimate(
        micro_batch=micro_batch, seq_len=seq_len, precision=precision,
        weights=int(weights), gradients=int(gradients), optimizer=int(optimizer), activations=int(act),
    )


def fits(estimate: MemoryEstimate, device_memory: int) -> bool:
    """Whether the estimate stays within :data:`HEADROOM` of the device memory."""
    return estimate.total <= HEADROOM * device_memory


def largest_fitting_micro_batch(
    shape: ModelShape, seq_len: int, batch: int, device_memory: int, precision: str = "bf16", *, shards: int = 1,
    checkpointed: int = 0,
) -> int | None:
    """The largest micro-batch dividing ``batch`` (so accumulation steps are equal) whose estimate fits
    (``shards``, ``checkpointed``: see :func:`estimate_memory`); None when not even one sequence fits."""
    for m in sorted((m for m in range(1, batch + 1) if batch % m == 0), reverse=True):
        if fits(estimate_memory(shape, seq_len, m, precision, shards=shards, checkpointed=checkpointed),
                device_memory):
            return m
    return None
