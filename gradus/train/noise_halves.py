"""The noise scale's two batch sizes from one micro-batch: each gradient taken as the sum of its two halves.

Why: the two-batch estimator (:mod:`gradus.train.noise_scale`) needs a gradient at a smaller batch than the
step's. Under accumulation or data parallelism the micro-batches or ranks give it for free; a step of one
micro-batch on one process has none. Splitting that step into two micro-batches gives it, but a half-size
micro-batch runs every layer at half the width, and on a CPU at short lengths that cost 15–47% of the
measured step (BENCHMARKS.md, "rho 8 and the noise scale measured every second step").

This module takes the halves inside the one backward pass instead. Every parameter's gradient is a sum over
the batch's tokens, so it can be computed as the sum of two partial sums, one over the first half of the
rows (A) and one over the rest (B), with the same arithmetic as the single sum: a Linear layer's weight
gradient as two matmuls over half the rows each (``gᵀx = g_Aᵀx_A + g_Bᵀx_B``), an embedding's as two
scatter-adds, an RMSNorm gain's as two reductions. Same FLOPs, no second forward, no extra micro-batch; the
gradient handed to autograd is ``A + B``, which equals the usual one up to float rounding (the order of the
additions differs), so a measured step is deterministic but not bit-identical to an unmeasured one.

How: while a step measures, :class:`BackwardHalves` replaces the ``forward`` of each covered module (an
instance attribute, removed when the step ends, so outside a measured step the model is untouched and
``copy.deepcopy`` or a checkpoint never sees it) with one that runs a custom ``autograd.Function``. Its
backward adds half A's gradient into a per-parameter buffer (a parameter used twice, like the tied
embedding and output head, gets both uses' A), and :class:`~gradus.train.noise_scale.MicroBatchNorms`'
per-parameter hook, which sees the whole gradient after every use has contributed, reads |A|² and
|G − A|² from it. Written by hand because no library offers per-half gradients (Opacus and torch.func give
per-example ones, at a cost per example this avoids).

Where it applies (:meth:`BackwardHalves.for_model`): eager mode on one process, a model whose every
trainable parameter belongs to a plain ``nn.Linear``, ``nn.Embedding`` (no padding index, max norm, sparse
or frequency-scaled gradient) or ``nn.RMSNorm`` with a gain, which is every gradus GPT. Not under
``torch.compile`` (a swapped forward would be traced and recompiled) or FP8 (torchao's float8 layers are not
plain Linear layers): there ``train.noise_scale.micro_batches`` splits the step as before.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _first_tokens(x: torch.Tensor, rows: int) -> int:
    """The number of positions of half A in ``x`` flattened to [tokens, ...]: its first ``rows`` rows of
    dim 0 (the batch), times the positions per row (every dim but the batch and the last, the features)."""
    per_row = math.prod(x.shape[1:-1]) if x.dim() > 2 else 1
    return rows * per_row


class _LinearHalves(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` whose backward computes the weight's (and bias's) gradient as the sum of
    the two halves' and hands half A to the :class:`BackwardHalves`."""

    @staticmethod
    def forward(ctx, x, weight, bias, halves, keys):
        out = F.linear(x, weight, bias)  # under autocast as the plain layer (the dtype it computes in: out's)
        ctx.save_for_backward(x, weight)
        ctx.halves, ctx.keys, ctx.rows, ctx.dtype = halves, keys, halves.rows, out.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        cd = ctx.dtype  # autocast's compute dtype in the forward (bf16/fp16), else the weight's
        g = g.to(cd)
        grad_x = (g @ weight.to(cd)).to(x.dtype) if ctx.needs_input_grad[0] else None
        h = _first_tokens(x, ctx.rows)
        g2, x2 = g.reshape(-1, g.shape[-1]), x.to(cd).reshape(-1, x.shape[-1])
        w_a = g2[:h].T @ x2[:h]
        grad_w = (w_a + g2[h:].T @ x2[h:]).to(weight.dtype)
        ctx.halves.add(ctx.keys[0], w_a.to(weight.dtype))
        grad_b = None
        if ctx.bias_dtype is not None:
            b_a = g2[:h].sum(0).to(ctx.bias_dtype)
            grad_b = b_a + g2[h:].sum(0).to(ctx.bias_dtype)
            ctx.halves.add(ctx.keys[1], b_a)
        return grad_x, grad_w, grad_b, None, None


class _EmbeddingHalves(torch.autograd.Function):
    """``F.embedding(idx, weight)`` whose backward scatters the two halves' gradients apart."""

    @staticmethod
    def forward(ctx, idx, weight, halves, key):
        ctx.save_for_backward(idx)
        ctx.halves, ctx.key, ctx.rows, ctx.shape = halves, key, halves.rows, weight.shape
        ctx.dtype = weight.dtype
        return F.embedding(idx, weight)

    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved_tensors
        h = ctx.rows * (math.prod(idx.shape[1:]) if idx.dim() > 1 else 1)
        flat, g2 = idx.reshape(-1), g.reshape(-1, g.shape[-1]).to(ctx.dtype)
        a = g2.new_zeros(ctx.shape).index_add_(0, flat[:h], g2[:h])
        grad = a.clone().index_add_(0, flat[h:], g2[h:])
        ctx.halves.add(ctx.key, a)
        return None, grad, None, None


class _GainHalves(torch.autograd.Function):
    """``normed * weight`` (an RMSNorm's gain) whose backward reduces the two halves apart."""

    @staticmethod
    def forward(ctx, normed, weight, halves, key):
        ctx.save_for_backward(normed, weight)
        ctx.halves, ctx.key, ctx.rows = halves, key, halves.rows
        return normed * weight

    @staticmethod
    def backward(ctx, g):
        normed, weight = ctx.saved_tensors
        grad_n = (g * weight).to(normed.dtype)
        h = _first_tokens(normed, ctx.rows)
        prod = (g * normed).reshape(-1, normed.shape[-1])
        a = prod[:h].sum(0).to(weight.dtype)
        grad_w = a + prod[h:].sum(0).to(weight.dtype)
        ctx.halves.add(ctx.key, a)
        return grad_n, grad_w, None, None


def _covers(module: nn.Module) -> bool:
    """Whether ``module``'s own parameters get their halves from this module's functions."""
    kind = type(module)
    if kind is nn.Linear:
        return True
    if kind is nn.Embedding:
        m: Any = module
        return m.padding_idx is None and m.max_norm is None and not m.sparse and not m.scale_grad_by_freq
    if kind is nn.RMSNorm:
        return module.weight is not None
    return False


class BackwardHalves:
    """Per-parameter gradients of the first half of a micro-batch's rows, taken in its one backward pass.

    Built once per run (:meth:`for_model`, None where the model has a parameter it cannot cover) and handed to
    :class:`~gradus.train.noise_scale.MicroBatchNorms`, which arms it (:meth:`arm`) for a measured step of one
    micro-batch on one process and reads each parameter's half A (:meth:`take`) in its gradient hook."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        self.rows = 0
        """Rows of half A in the armed micro-batch (the first ``rows`` of its batch dimension)."""
        self._a: dict[int, torch.Tensor] = {}
        self._armed = False

    @classmethod
    def for_model(cls, model: nn.Module) -> BackwardHalves | None:
        """The halves of ``model``'s covered modules, or None when a trainable parameter belongs to a module
        this cannot take halves from (then the step is split into micro-batches instead)."""
        modules = [m for m in model.modules() if _covers(m)]
        covered = {id(p) for m in modules for p in m.parameters(recurse=False)}
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable or any(id(p) not in covered for p in trainable):
            return None
        return cls(modules)

    @property
    def armed(self) -> bool:
        """Whether the covered modules run the halving functions (between :meth:`arm` and :meth:`disarm`)."""
        return self._armed

    def arm(self, rows: int) -> None:
        """Take the next forward/backward's halves at ``rows`` rows: swap in the halving forwards."""
        if not 0 < rows:
            raise ValueError(f"backward halves: half A needs at least one row, got {rows}")
        self.rows, self._a, self._armed = rows, {}, True
        for m in self.modules:
            m.forward = self._forward_of(m)  # an instance attribute: shadows the class's forward until disarm

    def disarm(self) -> None:
        """Restore every module's own forward and drop any half not taken (also after a failed step)."""
        for m in self.modules:
            m.__dict__.pop("forward", None)
        self._a, self._armed = {}, False

    def add(self, param: torch.Tensor, half_a: torch.Tensor) -> None:
        """Add one use's half-A gradient of ``param`` (called by the functions' backward)."""
        key = id(param)
        self._a[key] = half_a if key not in self._a else self._a[key] + half_a

    def take(self, param: torch.Tensor) -> torch.Tensor | None:
        """Half A's gradient of ``param``, summed over its uses, and forget it; None when no use recorded one
        (the parameter was not reached through a covered module: the sample is then not usable)."""
        return self._a.pop(id(param), None)

    def _forward_of(self, m: nn.Module):
        """The halving forward of one covered module (same signature and result as its own)."""
        kind = type(m)
        if kind is nn.Linear:
            return lambda x: _LinearHalves.apply(x, m.weight, m.bias, self, (m.weight, m.bias))
        if kind is nn.Embedding:
            return lambda idx: _EmbeddingHalves.apply(idx, m.weight, self, m.weight)
        norm: Any = m  # nn.RMSNorm with a gain
        return lambda x: _GainHalves.apply(F.rms_norm(x, norm.normalized_shape, None, norm.eps), norm.weight,
                                           self, norm.weight)
