"""What the user asks the worksheet for, and the ranges it accepts, checked before any arithmetic.

``gradus plan`` takes a budget in several forms (FLOPs, hardware × days, a model size, a data size) and
a few knobs of the scaling-law lesson; every one of them has a range outside which the lesson's
arithmetic no longer holds (a tokens-per-parameter ratio of 40, a warmup of 5%). Checking them all in one
place, before planning, gives one error listing every bad flag instead of a failure deep in the
arithmetic. :class:`Hardware` is also the timeline's description of the machine (:mod:`.timeline`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gradus.errors import ConfigError
from gradus.plan.hardware import GPUSpec
from gradus.sizes import GPT2_VOCAB_SIZE

DEFAULT_RATIO = 20.0
"""Tokens per non-embedding parameter at the compute optimum (Chinchilla)."""
RATIO_RANGE = (10.0, 30.0)
"""Tokens per parameter the worksheet accepts (``--ratio``)."""
DEFAULT_KAPPA = 6.0
"""FLOPs per parameter per token: 6 for forward + backward."""
KAPPA_RANGE = (6.0, 8.0)
"""FLOPs per parameter per token the worksheet accepts (``--kappa``): 6, up to 8 with recomputation."""
WARMUP_RANGE = (0.01, 0.02)
"""Warmup as a fraction of all steps."""
MIN_LR_RANGE = (0.10, 0.20)
"""Cosine floor as a fraction of the peak LR."""
MAX_FLOPS = 1e29
"""The largest compute budget planned (``--flops``, or the hardware's over ``--days``): some 200× the largest
training runs (~5e26), and at any ratio the planned tokens stay within :data:`MAX_TOKENS`; far above it the
shape search's arithmetic means nothing (1e60 planned a 50K model)."""
MAX_PARAMS = 1e12
"""The largest model planned (``--params``, or the one a budget gives): 1T non-embedding parameters, about the
largest dense models trained and within the shapes :func:`gradus.sizes.shape_for_params` searches (to ~1.6T)."""
MAX_TOKENS = 1e15
"""The largest data budget planned (``--tokens``): 1,000T, gradus's bound on every token count."""


@dataclass(frozen=True)
class Hardware:
    """A hardware budget: ``gpus`` × ``gpu`` at ``mfu`` for ``days`` (days may be None when the budget is
    given as FLOPs and the hardware only sets the wall-clock)."""

    gpu: GPUSpec
    """The accelerator."""
    gpus: int
    """How many."""
    mfu: float
    """Model FLOPs utilisation: the share of peak the training run achieves (0.3–0.5 is typical)."""
    days: float | None = None
    """Days of training, when the budget is hardware time."""

    @property
    def flops_per_second(self) -> float:
        """Effective training FLOP/s: gpus × peak × MFU."""
        return self.gpus * self.gpu.peak_bf16_flops * self.mfu

    @property
    def budget(self) -> float | None:
        """Effective FLOPs over ``days`` (None without days)."""
        return None if self.days is None else self.flops_per_second * self.days * 86400.0

    def describe(self) -> str:
        """'8 × h100 (989 TFLOP/s bf16) at MFU 0.4 for 14 days'."""
        days = f" for {self.days:g} days" if self.days is not None else ""
        return (f"{self.gpus} × {self.gpu.name} ({self.gpu.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16) "
                f"at MFU {self.mfu:g}{days}")


@dataclass(frozen=True)
class PlanInputs:
    """What the user asked: any of a FLOPs budget, hardware, a model size, a data size; and the knobs."""

    flops: float | None = None
    """Budget in FLOPs (``--flops``)."""
    hardware: Hardware | None = None
    """Hardware (``--gpus --gpu --days --mfu``): the budget when it has days, else only the wall-clock."""
    params: float | None = None
    """Fixed non-embedding parameter count N (``--params``)."""
    tokens: float | None = None
    """Data budget D: the unique tokens available (``--tokens``)."""
    ratio: float = DEFAULT_RATIO
    """Tokens per parameter, 10–30."""
    kappa: float = DEFAULT_KAPPA
    """FLOPs per parameter per token, 6–8."""
    seq_len: int = 2048
    """Base context length (stages B and D); stage A uses half, stage C ``long_seq_len``."""
    long_seq_len: int | None = None
    """Stage C's length; default 4 × seq_len."""
    tokens_per_step: int | None = None
    """Global tokens per step; default from :func:`tokens_per_step_for`."""
    warmup_fraction: float = 0.01
    """Warmup as a fraction of all steps, 1–2%."""
    min_lr_ratio: float = 0.1
    """Cosine floor as a fraction of the peak, 10–20%."""
    vocab_size: int = GPT2_VOCAB_SIZE
    """Vocabulary of the planned model (the written config uses the GPT-2 tokenizer)."""


def check_inputs(inp: PlanInputs) -> None:
    """Every out-of-range knob of ``inp``, as one ConfigError listing them all."""
    problems = []
    lo, hi = RATIO_RANGE
    if not lo <= inp.ratio <= hi:
        problems.append(f"--ratio {inp.ratio:g}: tokens per parameter must be in {lo:g}–{hi:g} (Chinchilla: 20)")
    lo, hi = KAPPA_RANGE
    if not lo <= inp.kappa <= hi:
        problems.append(f"--kappa {inp.kappa:g}: FLOPs per parameter·token must be in {lo:g}–{hi:g} "
                        f"(6 = forward+backward, 8 with activation recomputation)")
    lo, hi = WARMUP_RANGE
    if not lo - 1e-12 <= inp.warmup_fraction <= hi + 1e-12:
        problems.append(f"--warmup {inp.warmup_fraction:g}: warmup must be {lo:g}–{hi:g} of the steps (1–2%)")
    lo, hi = MIN_LR_RANGE
    if not lo - 1e-12 <= inp.min_lr_ratio <= hi + 1e-12:
        problems.append(f"--min-lr-ratio {inp.min_lr_ratio:g}: the cosine floor must be {lo:g}–{hi:g} of the peak")
    if inp.seq_len < 64:
        problems.append(f"--seq-len {inp.seq_len}: the base context must be at least 64")
    if inp.long_seq_len is not None and inp.long_seq_len < inp.seq_len:
        problems.append(f"--long-seq-len {inp.long_seq_len}: must be ≥ --seq-len {inp.seq_len}")
    if inp.hardware is not None and inp.hardware.days is not None and inp.flops is not None:
        problems.append("--flops and --days both set the budget; give one of them (--gpu/--gpus/--mfu with "
                        "--flops only set the wall-clock)")
    budget = inp.flops if inp.flops is not None else (inp.hardware.budget if inp.hardware is not None else None)
    if budget is not None and budget > MAX_FLOPS:
        flag = "--flops" if inp.flops is not None else "--gpus × --days"
        problems.append(f"{flag}: a budget of {budget:.3g} FLOPs is beyond any training run; the planner takes up "
                        f"to {MAX_FLOPS:.0e} (the largest runs so far used ~5e26)")
    if inp.params is not None and inp.params > MAX_PARAMS:
        problems.append(f"--params {inp.params:.3g}: the planner takes models up to {MAX_PARAMS:.0e} parameters")
    if inp.tokens is not None and inp.tokens > MAX_TOKENS:
        problems.append(f"--tokens {inp.tokens:.3g}: the planner takes up to {MAX_TOKENS:.0e} tokens (1,000T)")
    if problems:
        raise ConfigError(*problems)
