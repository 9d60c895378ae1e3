"""The gradient noise scale, measured in every run from what the optimizer step already has (issue 30 §1).

Why: the noise scale B_simple = tr(Σ) / |G|² (McCandlish et al. 2018, arXiv 1812.06162) approximates the
critical batch: below it, doubling the batch halves the steps; above it, extra batch buys little. It is the
signal an adaptive curriculum reads to propose a larger batch, so it must be cheap, unbiased and exactly
resumable. Background and pitfalls: ``../shared/research/adaptive-stages.md``.

Where the two batches come from (their App. A.1): a step that accumulates k micro-batches on each of W
ranks already computes k·W *small-batch* gradients (one per micro-batch, on one rank: B_small tokens) and one
*big-batch* gradient (the accumulated, all-reduced one: B_big tokens). With S = |g|² at batch B,
E[S] = |G|² + tr(Σ)/B, and two batch sizes give unbiased estimates of both terms:

    |G|²  ≈ (B_big·S_big − B_small·S_small) / (B_big − B_small)
    tr(Σ) ≈ (S_small − S_big) / (1/B_small − 1/B_big)

Batch sizes are in **tokens** (each label token's loss is one "example"; sequence lengths change between
stages, so a count of rows would not compare), Σ is the per-token gradient covariance, and so B_simple is in
tokens too, comparable with the stage's tokens per step.

Two parts, kept apart so the math can be tested on floats:

* :class:`GradientNoiseScale`: pure Python, fed one :class:`GradientSample` (four floats) per step. It keeps
  an exponential moving average of each estimate *separately* (bias-corrected) and reads B_simple as the
  ratio of the two averages: an average of per-step ratios is badly biased, because a per-step |G|²
  estimate is noisy and often near zero (pitfall 1). It is a Stateful part (plain floats and ints), so a
  resumed run continues the same averages bit for bit; :meth:`GradientNoiseScale.reset` restarts them at a
  stage change (the per-token covariance depends on the sequence length).
* the torch side, used by :func:`gradus.train.step.optimizer_step` when handed the hooks (``noise_hooks``):
  :class:`MicroBatchNorms` (per-parameter hooks, registered once and armed during a measured step, that take
  each micro-batch's gradient squared norm as it arrives) and :func:`noise_sample`, which undoes the accumulation weights, the loss multiplier and the
  GradScaler's scale, averages all micro-batches (not only the first: pitfall 2) and, under DDP, all ranks
  with one all-reduce of a 3-vector. Nothing in it reads the device: the result is a :class:`NoiseSample`
  still on the device, read when the step's other figures are (``train.host_sync: lagged`` keeps its
  one-step-late reads). Under FSDP2 no hook sees a rank's own gradient: :class:`ShardedMicroBatchNorms` reads
  each micro-batch's gradient over every rank from the sharded ``.grad`` by differencing instead.

How a training loop uses it (names as in :mod:`gradus.train.trainer`)::

    gns = GradientNoiseScale(beta, every)               # once; a Stateful part: parts["gns"] = gns
    hooks = MicroBatchNorms(model.parameters())         # once (RunParts.gns_hooks); registered at the first use
    # each step, before it runs (``rows``: this rank's rows, ``micro``: the stage's micro-batch):
    gns.enter_stage(state.stage_index)                  # the averages restart at a stage change
    reason = unmeasured_reason(ceil(rows / micro), rt.world_size, is_sharded(model))
    if reason and state.stage_index not in said: ...    # say it once (per stage whose shape cannot measure)
    # only on the steps it measures (train.noise_scale.every), the hooks armed and the split micro-batch:
    out, sample = optimizer_step(..., noise_hooks=hooks)    # sample None exactly when reason is not None
    # when that step's figures are read (at once, or one step late under host_sync: lagged), in step order,
    # for the measured steps only (the others are not samples, not even skipped ones):
    gns.update(sample.read() if sample is not None else None)
    # in the step record:
    record.update(gns.metrics(state.tokens_per_step))  # gns/b_simple, gns/grad_sq, gns/trace_cov, ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_BETA = 0.99
"""The EMAs' decay: an effective window of about 100 steps (the research note's 0.99–0.995)."""


# ============================================================================================ pure math
@dataclass(frozen=True)
class GradientSample:
    """One step's measurement, as floats: the two batches' squared gradient norms and sizes in tokens.

    ``small_sq`` is the *mean* over every micro-batch (of every rank) of |g_micro|², with the accumulation
    weight and loss scale undone, so each term is the squared norm of a mean-loss gradient over that
    micro-batch's tokens. ``small_tokens`` is their effective size: the harmonic mean of the micro-batches'
    label-token counts (E[mean_j S_j] = |G|² + tr(Σ)·mean_j(1/b_j), so 1/mean_j(1/b_j) is the B to use; it is
    the common size when every micro-batch has the same number of label tokens). ``big_sq`` is |g|² of the
    accumulated, all-reduced gradient before clipping, ``big_tokens`` its size (the tokens of the whole step
    over all ranks, the same harmonic rule across ranks)."""

    small_sq: float
    small_tokens: float
    big_sq: float
    big_tokens: float

    def usable(self) -> bool:
        """Whether the estimators are defined: finite norms (a skipped fp16 overflow or NaN step is not) and
        two distinct batch sizes, the small one the smaller (one micro-batch on one rank gives none)."""
        values = (self.small_sq, self.small_tokens, self.big_sq, self.big_tokens)
        return all(math.isfinite(v) for v in values) and 0 < self.small_tokens < self.big_tokens


def two_batch_estimates(sample: GradientSample) -> tuple[float, float]:
    """The unbiased two-batch estimates (|G|², tr(Σ)) of one sample (McCandlish et al. App. A.1), not clamped:
    either may be negative on a noisy step, and clamping here would bias their averages upwards."""
    bs, bb = sample.small_tokens, sample.big_tokens
    g2 = (bb * sample.big_sq - bs * sample.small_sq) / (bb - bs)
    trace = (sample.small_sq - sample.big_sq) / (1.0 / bs - 1.0 / bb)
    return g2, trace


class GradientNoiseScale:
    """B_simple = EMA(tr Σ) / EMA(|G|²) in tokens, from one :class:`GradientSample` per step.

    The EMAs average the *unclamped* unbiased per-step estimates (their mean stays unbiased); the values read
    out are clamped: |G|² and tr(Σ) at 0 (pitfall 3; a negative average means the signal is still below its
    noise). B_simple is then tr(Σ)/|G|², ``inf`` where |G|² reads 0 and tr(Σ) does not (noise dominates: any
    batch is below the noise scale), ``nan`` before the first sample. Bias correction divides each EMA by
    1 − β^n; it cancels in the ratio but matters for the two values logged on their own.

    A Stateful part: :meth:`state_dict` is plain floats and ints, so a resumed run continues the same EMAs bit
    for bit. β comes from the config and is not overwritten by a checkpoint."""

    def __init__(self, beta: float = DEFAULT_BETA, every: int = 1) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"gradient noise scale: beta must be in [0, 1), got {beta}")
        if every < 1:
            raise ValueError(f"gradient noise scale: every must be at least 1, got {every}")
        self.beta = beta
        self.every = every
        """Measure on the steps whose index is a multiple of this (``train.noise_scale.every``): :meth:`measures`."""
        self.stage: int | None = None
        """The stage the averages belong to (:meth:`enter_stage`), None before the first."""
        self.reset()

    def measures(self, step: int) -> bool:
        """Whether the step with index ``step`` (0-based, the count of steps before it) is measured. A function
        of the index alone, so a resumed run, a rollback and every rank agree on it."""
        return step % self.every == 0

    def enter_stage(self, stage_index: int) -> bool:
        """Call before each step with its stage: the averages restart when the stage changes (True then).
        The stage is part of the state, so a run resumed at a stage boundary restarts them too, whether or not
        the trainer prints a banner there."""
        if stage_index == self.stage:
            return False
        self.stage = stage_index
        self.reset()
        return True

    def reset(self) -> None:
        """Forget every sample (at a stage change: the per-token covariance depends on the sequence length)."""
        self.count = 0
        """Samples averaged since the last reset."""
        self.skipped = 0
        """Samples not usable since the last reset (non-finite, or no two batch sizes)."""
        self._ema_g2 = 0.0
        self._ema_trace = 0.0
        self.last: tuple[float, float] | None = None
        """The last usable sample's own (|G|², tr(Σ)) estimates, unclamped (noisy: for plots)."""

    def update(self, sample: GradientSample | None) -> bool:
        """Add one step's sample; False (and counted in :attr:`skipped`) when it is None or not usable."""
        if sample is None or not sample.usable():
            self.skipped += 1
            return False
        g2, trace = two_batch_estimates(sample)
        b = self.beta
        self._ema_g2 = b * self._ema_g2 + (1.0 - b) * g2
        self._ema_trace = b * self._ema_trace + (1.0 - b) * trace
        self.count += 1
        self.last = (g2, trace)
        return True

    def _corrected(self, ema: float) -> float:
        """An EMA divided by its bias 1 − β^n (the weight the zero start still holds); nan before any sample."""
        if self.count == 0:
            return math.nan
        return ema / (1.0 - self.beta**self.count)

    @property
    def grad_sq(self) -> float:
        """The smoothed |G|² (squared norm of the true gradient of the mean per-token loss), clamped at 0."""
        return max(self._corrected(self._ema_g2), 0.0) if self.count else math.nan

    @property
    def trace(self) -> float:
        """The smoothed tr(Σ) (trace of the per-token gradient covariance), clamped at 0."""
        return max(self._corrected(self._ema_trace), 0.0) if self.count else math.nan

    @property
    def b_simple(self) -> float:
        """The noise scale in tokens: smoothed tr(Σ) / smoothed |G|² (nan before any sample; inf while |G|²
        reads 0 and tr(Σ) does not)."""
        g2, trace = self.grad_sq, self.trace
        if self.count == 0:
            return math.nan
        if g2 > 0.0:
            return trace / g2
        return math.inf if trace > 0.0 else math.nan

    def metrics(self, tokens_per_step: int | None = None) -> dict[str, float]:
        """The ``gns/...`` figures of a step record (empty before the first sample): ``gns/b_simple`` (tokens),
        ``gns/grad_sq`` and ``gns/trace_cov`` (the two smoothed terms), ``gns/samples`` (since the stage
        began) and, given the stage's tokens per step, ``gns/b_simple_over_batch`` (above 1: the batch is
        below the noise scale)."""
        if self.count == 0:
            return {}
        out = {"gns/b_simple": self.b_simple, "gns/grad_sq": self.grad_sq, "gns/trace_cov": self.trace,
               "gns/samples": self.count}
        if tokens_per_step:
            out["gns/b_simple_over_batch"] = self.b_simple / tokens_per_step
        return out

    def state_dict(self) -> dict[str, Any]:
        """The averages and counters as plain floats and ints (β included, for the record)."""
        return {"beta": self.beta, "stage": self.stage, "count": self.count, "skipped": self.skipped, "ema_g2": self._ema_g2,
                "ema_trace": self._ema_trace, "last": None if self.last is None else list(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s averages and counters (β stays the configured one)."""
        self.stage = None if state.get("stage") is None else int(state["stage"])
        self.count = int(state["count"])
        self.skipped = int(state.get("skipped", 0))
        self._ema_g2 = float(state["ema_g2"])
        self._ema_trace = float(state["ema_trace"])
        last = state.get("last")
        self.last = None if last is None else (float(last[0]), float(last[1]))


# ============================================================================================ measurement
def unmeasured_reason(micro_batches: int, world_size: int, sharded: bool = False) -> str | None:
    """Why a step of ``micro_batches`` micro-batches per rank on ``world_size`` ranks gives no noise-scale
    sample, or None when it does. A run says it once (per stage whose shape changes the answer). Under FSDP a
    rank never holds its own gradient, only its shard of every rank's average, so the small batch is one
    micro-batch over every rank (:class:`ShardedMicroBatchNorms`): it needs 2+ micro-batches per step."""
    if sharded:
        if micro_batches < 2:
            return ("gradient noise scale not measured under FSDP with one micro-batch per step: a rank only holds "
                    "its shard of the ranks' averaged gradient, so the smaller batch is one micro-batch over every "
                    "rank (needs 2+ micro-batches per step)")
        return None
    if micro_batches * world_size < 2:
        return ("gradient noise scale not measured: one micro-batch on one process has no smaller batch to "
                "compare with (needs 2+ micro-batches per step or 2+ processes)")
    return None


def unmeasured_note(reason: str, rows: int, micro: int, stage_index: int) -> str:
    """The console note of a stage whose steps (``rows`` per rank in micro-batches of ``micro``) cannot measure
    the noise scale: the :func:`unmeasured_reason` and the fix."""
    fix = ("train.noise_scale.micro_batches: 2 splits each step in two" if rows >= 2 else
           "one row cannot be split: a larger batch or 2+ processes measure it")
    return f"note: {reason}; stage {stage_index} runs {rows} rows per step in micro-batches of {micro} ({fix})"


class MicroBatchNorms:
    """Each micro-batch's gradient squared norm, taken by per-parameter hooks as the gradient arrives.

    Why hooks: a hook registered on a leaf parameter (``Tensor.register_hook``) runs on the gradient the
    backward pass computed for it *before* autograd adds it into ``.grad`` (a parameter used twice, like the
    tied embedding, gets the sum of both uses), so under accumulation it sees the micro-batch's own gradient
    with no copy of the accumulated one. The alternative, differencing ``.grad`` after each backward, needs
    a gradient-sized buffer and three passes over it per micro-batch; a hook reads each gradient once while
    it is fresh. Under DDP the hook runs before DDP's reducer (a post-accumulation hook), so it sees the
    local gradient. The hooks return None: the gradients, and so the step, are untouched.

    Built once per run (:func:`gradus.train.run.build_run`, ``RunParts.gns_hooks``); the hooks are registered
    at the first measured step (:meth:`start`, so the start-up compilation and probes run without them) and
    stay for the run, armed only between :meth:`start` and :meth:`stop`: a step that does not measure pays one
    Python call per parameter and nothing else. :meth:`close` removes them. While armed, each hook queues one
    norm reduction on the device (no host sync); :meth:`end_micro_batch` adds them up. The hooks live outside
    the compiled forward (torch.compile's backward hands each parameter's gradient to autograd's
    accumulation, where they run), so compiled graphs are neither changed nor rebuilt."""

    def __init__(self, params) -> None:
        self._params = [p for p in params if p.requires_grad]
        self._device = self._params[0].device if self._params else torch.device("cpu")
        self._handles: list[Any] = []
        self._armed = False
        self._norms: list[torch.Tensor] = []
        self.per_micro: list[torch.Tensor] = []
        """This step's raw squared norm of each micro-batch (the scaled, weighted loss's gradient), as 0-d
        float32 tensors."""
        self.weights: list[float] = []
        """This step's accumulation weight of each micro-batch (its share of the step's label tokens on this rank)."""
        self.tokens: list[int] = []
        """This step's label-token count of each micro-batch."""

    @property
    def registered(self) -> bool:
        """Whether the hooks are on the parameters (from :meth:`register` or the first :meth:`start` until
        :meth:`close`)."""
        return bool(self._handles)

    @property
    def armed(self) -> bool:
        """Whether the hooks record (between :meth:`start` and :meth:`stop`)."""
        return self._armed

    def register(self) -> None:
        """Put the hooks on the parameters, disarmed (once: a second call does nothing)."""
        if not self._handles:
            self._handles = [p.register_hook(self._hook) for p in self._params]

    def start(self) -> None:
        """Begin measuring a step: register the hooks if they are not yet, forget the last step's figures, arm."""
        self.register()
        self._norms, self.per_micro, self.weights, self.tokens = [], [], [], []
        self._armed = True

    def stop(self) -> None:
        """End the step's measurement (also when it failed): the hooks stay, and record nothing until :meth:`start`.
        The step's figures (:attr:`per_micro`, :attr:`weights`, :attr:`tokens`) stay readable."""
        self._armed = False
        self._norms = []

    def _hook(self, grad: torch.Tensor) -> None:
        """One parameter's micro-batch gradient: queue its norm (float32, without a squared copy of it)."""
        if self._armed:
            self._norms.append(torch.linalg.vector_norm(grad, dtype=torch.float32))

    def end_micro_batch(self, weight: float, tokens: int, last: bool = False) -> None:
        """Close a micro-batch (after its backward returned, so every hook has run): its squared norm, with
        the accumulation ``weight`` its loss was multiplied by and its label-token count (``last``: whether it
        is the step's last micro-batch, which :class:`ShardedMicroBatchNorms` uses)."""
        self.weights.append(weight)
        self.tokens.append(tokens)
        self.per_micro.append(_total_sq(self._norms, self._device))
        self._norms = []

    def close(self) -> None:
        """Remove the hooks (the module is left as it was)."""
        self.stop()
        for h in self._handles:
            h.remove()
        self._handles = []

    def sample(self, grad_norm: torch.Tensor, scale: torch.Tensor | None, loss_multiplier: float,
               rt, token_weighted: bool = False) -> NoiseSample:
        """The step's :class:`NoiseSample` (:func:`noise_sample`)."""
        return noise_sample(self, grad_norm, scale, loss_multiplier, rt, token_weighted)


class ShardedMicroBatchNorms:
    """Under FSDP2: each micro-batch's gradient over every rank, read from the sharded gradients by differencing.

    Why not hooks: FSDP2 reduce-scatters each parameter's gradient as soon as the backward pass has it and adds
    the result into the sharded parameter's ``.grad`` itself, so no hook sees a rank's own gradient, and the
    local-against-global comparison DDP gives for free does not exist. What a rank does hold, after micro-batch
    j's backward, is its shard of the running sum of the ranks' averaged micro-batch gradients. The difference
    from the sum after micro-batch j − 1 is its shard of micro-batch j *over every rank*: the small batch (one
    micro-batch on each of the W ranks), against the big one (the whole step). Each rank keeps a copy of its
    shard of the sum between micro-batches (1/W of the gradients, never the whole model), takes the squared
    norm of its shard of each difference, and one all-reduce of a short vector per step (those norms with
    the micro-batches' weights and token counts) makes them global. (nanoGNS's DDP communication hook, the
    research note's source, has no FSDP2 counterpart: FSDP2 offers no communication hook.)

    The same interface as :class:`MicroBatchNorms` for :func:`gradus.train.step.optimizer_step`: armed between
    :meth:`start` and :meth:`stop`, one :meth:`end_micro_batch` per micro-batch, then :meth:`sample`."""

    def __init__(self, params) -> None:
        self._params = [p for p in params if p.requires_grad]
        self._device = self._params[0].device if self._params else torch.device("cpu")
        self._armed = False
        self._prev: list[torch.Tensor | None] | None = None
        self.per_micro: list[torch.Tensor] = []
        """This step's squared norm of this rank's shard of each micro-batch's summed gradient (raw: weights,
        the 1/W average, the loss multiplier and the loss scale still in it), 0-d float32 tensors."""
        self.weights: list[float] = []
        """This rank's accumulation weight of each micro-batch (its share of the rank's label tokens)."""
        self.tokens: list[int] = []
        """This rank's label-token count of each micro-batch."""

    registered = True
    """Nothing to register (the interface of :class:`MicroBatchNorms`)."""

    @property
    def armed(self) -> bool:
        """Whether :meth:`end_micro_batch` records (between :meth:`start` and :meth:`stop`)."""
        return self._armed

    def register(self) -> None:
        """Nothing to register: the gradients are read where FSDP2 leaves them."""

    def start(self) -> None:
        """Begin measuring a step (its gradients start from none: the optimizer step zeroes them)."""
        self.per_micro, self.weights, self.tokens, self._prev = [], [], [], None
        self._armed = True

    def stop(self) -> None:
        """End the step's measurement (also when it failed); drops the copy of the shard."""
        self._armed = False
        self._prev = None

    def close(self) -> None:
        """Nothing to remove (the interface of :class:`MicroBatchNorms`)."""
        self.stop()

    def end_micro_batch(self, weight: float, tokens: int, last: bool = False) -> None:
        """Close a micro-batch (its backward has returned and FSDP2 has reduce-scattered its gradients): the
        squared norm of this rank's shard of its difference, its weight and tokens; the sum so far is copied
        for the next one unless this is the step's ``last``."""
        if not self._armed:
            return
        now = [_local_grad(p) for p in self._params]
        prev = self._prev or [None] * len(now)
        parts = [torch.linalg.vector_norm(g if q is None else g - q, dtype=torch.float32)
                 for g, q in zip(now, prev, strict=True) if g is not None]
        self.per_micro.append(_total_sq(parts, self._device))
        self.weights.append(weight)
        self.tokens.append(tokens)
        self._prev = None if last else [None if g is None else g.detach().clone() for g in now]

    def sample(self, grad_norm: torch.Tensor, scale: torch.Tensor | None, loss_multiplier: float,
               rt, token_weighted: bool = False) -> NoiseSample:
        """The step's :class:`NoiseSample`, every figure global (one all-reduce of 3k + 2 numbers).

        With x_r = w_jr / W (rank r's weight of micro-batch j over the ranks' average), micro-batch j's summed
        gradient is D_j = Σ_r x_r·g_jr (times the loss multiplier m and scale s), so E|D_j|² = a²|G|² +
        Σ_r x_r² tr(Σ)/T_jr with a = Σ_r x_r. S_j = |D_j|² / (a·m·s)² is then an unbiased reading at batch
        B_j = a² / Σ_r (x_r²/T_jr) tokens (every rank's micro-batch j: W·T_j when they are alike). The big
        batch is the whole step's gradient, as under DDP (``token_weighted``: 1/ΣT_r, as there). Micro-batches
        with no label tokens anywhere (a = 0) are left out."""
        import torch.distributed as dist

        world = rt.world_size
        dtype = torch.float32 if grad_norm.device.type == "mps" else torch.float64
        k = len(self.per_micro)
        sq = torch.stack(self.per_micro).to(dtype)
        new = sq.new_full
        x = [w / world for w in self.weights]
        x2t = [(xi * xi / t) if t > 0 else 0.0 for xi, t in zip(x, self.tokens, strict=True)]
        rank_tokens = sum(self.tokens)
        host = [*x, *x2t, 1.0 / rank_tokens if rank_tokens > 0 else math.nan, float(rank_tokens)]
        # Host numbers enter by fill kernels, not a copy (a copy from the host would sync on CUDA).
        vec = torch.cat([sq, torch.stack([new((), v) for v in host])])
        if rt.distributed:
            dist.all_reduce(vec)  # sums: the norms over the shards, the weights and counts over the ranks
        sq, a, b, inv_rank, all_tokens = vec[:k], vec[k:2 * k], vec[2 * k:3 * k], vec[3 * k], vec[3 * k + 1]
        m = _undoable(loss_multiplier)
        used = a > 0
        safe_a = torch.where(used, a, torch.ones_like(a))
        micro = torch.where(used, sq / (m * safe_a) ** 2, torch.zeros_like(sq))
        if scale is not None:
            micro = micro / scale.to(dtype).square()
        n_used = used.to(dtype).sum()
        small = micro.sum() / n_used
        inv_small = torch.where(used, b / safe_a**2, torch.zeros_like(b)).sum() / n_used
        # The mean over ranks of 1/T_r, over W; a token-weighted step's gradient is the mean over ΣT_r tokens.
        inv_big = 1.0 / all_tokens if token_weighted else inv_rank / world / world
        big = grad_norm.detach().to(dtype).square() / m**2
        return NoiseSample(values=torch.stack([small, inv_small, big, inv_big]), micro=micro)


def _total_sq(norms: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The squared norm of a whole gradient from its parameters' norms; a zero where no parameter received a
    gradient (not in a real model: it keeps the micro-batches' indices aligned)."""
    if norms:
        return torch.stack(norms).square().sum()
    return torch.zeros((), dtype=torch.float32, device=device)


def _undoable(loss_multiplier: float) -> float:
    """The loss multiplier a sample divides out, NaN where it cannot be (under fault injection NaN, Inf or 0:
    the sample is then not finite and the estimator skips it)."""
    return loss_multiplier if math.isfinite(loss_multiplier) and loss_multiplier != 0 else math.nan


def _local_grad(p: torch.Tensor) -> torch.Tensor | None:
    """A parameter's gradient as this rank holds it: the local shard of a DTensor (FSDP2), else itself."""
    g = p.grad
    if g is None:
        return None
    return g.to_local() if hasattr(g, "to_local") else g


@dataclass
class NoiseSample:
    """A step's :class:`GradientSample`, still on the device (read it when the step's figures are read)."""

    values: torch.Tensor
    """[small_sq, 1/small_tokens, big_sq, 1/big_tokens], float64 (float32 on MPS)."""
    micro: torch.Tensor
    """This rank's per-micro-batch squared norms, weights and loss scale undone (for tests and diagnostics)."""

    def read(self) -> GradientSample:
        """The floats, in one device-to-host transfer. Under ``lagged`` the trainer calls it just after the
        step's :class:`~gradus.train.lag.DeviceValues` are read: the device has then passed these values
        (they were computed before the step's "applied" flag), so the copy waits for nothing."""
        s_small, inv_small, s_big, inv_big = self.values.tolist()
        return GradientSample(small_sq=s_small, small_tokens=1.0 / inv_small if inv_small > 0 else math.nan,
                              big_sq=s_big, big_tokens=1.0 / inv_big if inv_big > 0 else math.nan)


def noise_sample(norms: MicroBatchNorms, grad_norm: torch.Tensor, scale: torch.Tensor | None,
                 loss_multiplier: float, rt, token_weighted: bool = False) -> NoiseSample:
    """Turn a step's raw micro-batch norms and its total gradient norm into a :class:`NoiseSample`.

    ``norms`` holds each micro-batch's squared norm, accumulation weight (its share of the label tokens) and
    label-token count; ``grad_norm`` is clip_grad_norm_'s total norm before clipping (after the scaler's
    unscale_); ``scale`` the GradScaler's scale tensor (None without one). Micro-batch j's hook saw the
    gradient of ``loss_j × loss_multiplier × weight_j × scale``: dividing its squared norm by the square of
    that factor gives |∇ mean loss over its tokens|². A micro-batch with no label tokens (weight 0, a fully
    masked SFT row) has no gradient and is left out. Under DDP one all-reduce (mean) of [S_small, mean 1/b_j,
    1/T_rank] makes every rank's figures global (the big-batch norm already is); nothing waits for the
    device (the host-known numbers enter by a fill kernel, not a copy)."""
    weights, tokens = norms.weights, norms.tokens
    dtype = torch.float32 if grad_norm.device.type == "mps" else torch.float64
    m = _undoable(loss_multiplier)
    micro = torch.stack([sq.to(dtype) * (1.0 / (m * w) ** 2 if w > 0 else 0.0)
                         for sq, w in zip(norms.per_micro, weights, strict=True)])
    if scale is not None:
        micro = micro / scale.to(dtype).square()
    used = [j for j, w in enumerate(weights) if w > 0]
    local_tokens = sum(tokens)
    # A left-out micro-batch's entry is 0 (its factor is): the sum over all / the count used is their mean,
    # with no index tensor (indexing by a host list would copy it to the device, a host sync on CUDA).
    small = micro.sum() * (1.0 / len(used)) if used else micro.new_full((), math.nan)
    inv_small = sum(1.0 / tokens[j] for j in used) / len(used) if used else math.nan
    inv_total = 1.0 / local_tokens if local_tokens > 0 else math.nan
    local = torch.stack([small, small.new_full((), inv_small), small.new_full((), inv_total),
                         small.new_full((), float(local_tokens))])
    if rt.distributed:
        # The one collective the measurement adds: a 4-element all-reduce, queued like the loss's mean.
        import torch.distributed as dist

        dist.all_reduce(local)
        local = local / rt.world_size
    # DDP averages the ranks' gradients with equal weights: Var = tr(Σ)·(1/W²)·Σ_r 1/T_r, so 1/B_big is the
    # mean over ranks of 1/T_r divided by W (alone: 1/T). A step weighted by tokens over the ranks
    # (optimizer_step's uneven_tokens, ``token_weighted``) is the mean over all ΣT_r tokens: 1/ΣT_r.
    inv_big = 1.0 / (local[3] * rt.world_size) if token_weighted else local[2] / rt.world_size
    big = grad_norm.detach().to(dtype).square() / m**2
    return NoiseSample(values=torch.stack([local[0], local[1], big, inv_big]), micro=micro)


def loss_scale(scaler) -> torch.Tensor | None:
    """The GradScaler's current scale as a device tensor (no host sync, unlike ``get_scale()``), or None
    without an enabled scaler. Read after the step's first ``scaler.scale`` (which creates it)."""
    if scaler is None or not scaler.is_enabled():
        return None
    return scaler._get_scale_async()
