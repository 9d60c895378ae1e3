"""The compute-optimal worksheet: from a budget (FLOPs, hardware × days, a model size or a data size) to
N, D, a model shape, tokens per step, steps, wall-clock, the LR schedule and stages A–D.

The arithmetic of the scaling-law lesson (Kaplan et al. 2020; Hoffmann et al. 2022, "Chinchilla"):

* training compute C ≈ κ·N·D, with N the non-embedding parameters, D the training tokens and κ = 6
  (2 FLOPs per weight per token forward, 4 backward; up to 8 with activation recomputation);
* compute-optimal data D ≈ ratio·N with ratio ≈ 20, so N = sqrt(C / (κ·ratio)) and D = ratio·N.

Worked example (a test): with C = 2e22 FLOPs, N = 1B → D = 20B → 6·1e9·20e9 = 1.2e20 FLOPs, and N = 7B →
D = 140B → 5.9e21 FLOPs, both within budget; the budget's own optimum is N ≈ 12.9B, D ≈ 258B.

Pure Python: no torch. The stage table is checked by building the config it writes and scheduling it
with :func:`gradus.curriculum.resolve_schedule`, so what the worksheet prints is what ``gradus train`` runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from gradus.config import from_dict
from gradus.curriculum import lr_at, resolve_schedule
from gradus.errors import ConfigError
from gradus.plan.hardware import GPUSpec, format_flops
from gradus.sizes import GPT2_VOCAB_SIZE, ModelShape, shape_for_params
from gradus.units import format_count, format_duration

# ------------------------------------------------------------------------------------ constants
DEFAULT_RATIO = 20.0
"""Tokens per non-embedding parameter at the compute optimum (Chinchilla)."""
RATIO_RANGE = (10.0, 30.0)
DEFAULT_KAPPA = 6.0
"""FLOPs per parameter per token: 6 for forward + backward."""
KAPPA_RANGE = (6.0, 8.0)
TOKENS_PER_STEP_RANGE = (30_000, 200_000)
"""Global tokens per optimizer step the worksheet chooses from."""
WARMUP_RANGE = (0.01, 0.02)
"""Warmup as a fraction of all steps."""
MIN_LR_RANGE = (0.10, 0.20)
"""Cosine floor as a fraction of the peak LR."""

LR_GRID: tuple[tuple[float, float], ...] = ((1e9, 3e-4), (3e9, 2e-4), (7e9, 1.5e-4), (13e9, 1e-4))
"""The lesson's peak learning rates by non-embedding parameter count."""
LR_CEILING = 3e-3
"""Highest peak LR suggested for the tiniest models (beyond it small models diverge easily)."""
LR_FLOOR = 2e-5
"""Lowest peak LR suggested for the largest models."""

LADDER = (1e9, 3e9, 7e9, 13e9, 30e9, 70e9)
"""Model sizes tabulated against a budget (the lesson's worked example uses 1B and 7B)."""


def peak_lr_for_params(n: float) -> float:
    """Peak LR for N non-embedding parameters from :data:`LR_GRID`, interpolated linearly in
    (log N, log LR).

    Below 1B the 1B→3B segment is extrapolated (LR ∝ N^-0.37): it gives 6.5e-4 at 124M, close to GPT-3's
    6e-4 for 125M and nanoGPT's 6e-4, and 1.1e-3 at 30M; it is capped at :data:`LR_CEILING` because the
    tiniest models gain nothing from larger rates and diverge. Above 13B the fit over the whole grid
    (1B→13B, LR ∝ N^-0.43) is extrapolated, gentler than the last segment, floored at :data:`LR_FLOOR`
    (4.9e-5 at 70B; GPT-3 175B used 6e-5).
    """
    if not n > 0:
        raise ConfigError(f"params={n}: must be positive")
    pts = [(math.log(x), math.log(y)) for x, y in LR_GRID]
    x = math.log(n)

    def line(a: tuple[float, float], b: tuple[float, float]) -> float:
        return a[1] + (b[1] - a[1]) * (x - a[0]) / (b[0] - a[0])

    if x <= pts[0][0]:
        return min(LR_CEILING, math.exp(line(pts[0], pts[1])))
    if x >= pts[-1][0]:
        slope = (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])  # the whole grid's fit
        return max(LR_FLOOR, math.exp(pts[-1][1] + slope * (x - pts[-1][0])))
    for a, b in zip(pts, pts[1:], strict=False):
        if a[0] <= x <= b[0]:
            return math.exp(line(a, b))
    raise AssertionError("unreachable")


def tokens_per_step_for(n: float, long_seq_len: int) -> int:
    """Global tokens per step: 128K (2¹⁷) at 1B, ∝ sqrt(N) (larger models tolerate larger batches: the
    critical batch grows as the loss falls), rounded to a multiple of 32,768 and kept in 30K–200K
    (32,768 … 196,608). Also a multiple of the longest stage's seq_len, so every stage's batch is whole."""
    raw = 131072 * math.sqrt(n / 1e9)
    tps = 32768 * min(6, max(1, round(raw / 32768)))
    if tps % long_seq_len:
        tps = long_seq_len * math.ceil(tps / long_seq_len)
    return tps


# ---------------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class StageTemplate:
    """A row of the lesson's stage plan; the worksheet fills tokens, seq_len and LR from the budget."""

    key: str
    """A, B, C or D."""
    title: str
    """What the stage is for."""
    fraction: float
    """Share of the training tokens D."""
    length: str
    """``short`` (half the base context), ``base`` or ``long`` (the long-context length)."""
    mix: dict[str, float]
    """Weights of the web / math / code sources."""
    note: str
    """One line on why, printed in the table."""


STAGE_TEMPLATES: tuple[StageTemplate, ...] = (
    StageTemplate("A", "foundations", 0.72, "short", {"web": 0.90, "math": 0.05, "code": 0.05},
                  "broad web text at half the context: cheaper steps while the basics form"),
    StageTemplate("B", "domain infusion", 0.18, "base", {"web": 0.50, "math": 0.25, "code": 0.25},
                  "full context; the mix shifts toward math and code"),
    StageTemplate("C", "long-context adaptation", 0.08, "long", {"web": 0.70, "math": 0.15, "code": 0.15},
                  "long sequences, RoPE position interpolation, the small LR at the end of the cosine"),
    StageTemplate("D", "behaviour tuning", 0.02, "base", {},
                  "instruction/chat data in a separate run at a small constant LR; not in --write"),
)
D_LR_FACTOR = 0.05
"""Stage D's constant LR as a fraction of the peak (e.g. 1.5e-5 for a 1B model, a usual SFT rate)."""

SOURCES: dict[str, dict[str, str]] = {
    "web": {"dataset": "HuggingFaceFW/fineweb-edu"},
    "math": {"dataset": "Yxanul/cc-math-finest"},
    "code": {"dataset": "Yxanul/python-finest-pretrain"},
}
"""Streaming sources of the written config (Hugging Face hub ids)."""

FINEWEB_EDU_SAMPLES = ((10e9, "sample-10BT"), (100e9, "sample-100BT"), (350e9, "sample-350BT"))
"""FineWeb-Edu subsets by size; the smallest that holds the web tokens of the plan is chosen."""


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


@dataclass(frozen=True)
class PlanStage:
    """One filled row of the stage table."""

    key: str
    """A–D."""
    name: str
    """Stage name in the written config, e.g. ``A-foundations``."""
    title: str
    """What it is for."""
    tokens: int
    """Training tokens (a whole number of steps)."""
    seq_len: int
    """Sequence length."""
    batch_size: int
    """Sequences per step (tokens_per_step / seq_len)."""
    steps: int
    """Optimizer steps."""
    peak_lr: float
    """Highest LR the stage trains at (under the one warmup + cosine schedule)."""
    end_lr: float
    """LR at the stage's last step."""
    rope_scaling: float
    """RoPE position-interpolation factor the stage should train with."""
    mix: dict[str, float]
    """Source weights (empty for D: its data is instruction data, not in the config)."""
    in_config: bool
    """Whether ``--write`` includes it (A–C)."""
    note: str
    """Why."""
    hours: float | None = None
    """Wall-clock at the given hardware (None without hardware)."""


@dataclass
class Plan:
    """The filled worksheet (``gradus plan`` prints it; ``--json`` dumps :meth:`to_json`)."""

    inputs: PlanInputs
    """What was asked."""
    flops_budget: float | None
    """Effective FLOPs C available (None when no budget was given: then C is what the plan needs)."""
    budget_source: str
    """Where C comes from: '--flops', the hardware, or 'derived from N and D'."""
    regime: str
    """compute-optimal, data-limited, compute-limited, fixed-params, fixed-tokens or fixed-params-and-tokens."""
    explanation: list[str]
    """How N and D were chosen, in words."""
    params: float
    """Non-embedding parameters N of the worksheet."""
    tokens: float
    """Training tokens D."""
    shape: ModelShape
    """A concrete shape near N."""
    tokens_per_step: int
    """Global tokens per optimizer step."""
    stages: list[PlanStage]
    """A–D."""
    peak_lr: float
    """Peak LR from the grid."""
    warmup_steps: int
    """Linear warmup steps at the start of stage A."""
    min_lr: float
    """End of the cosine."""
    config: dict[str, Any]
    """The config ``--write`` emits (stages A–C), already validated."""
    warnings: list[str] = field(default_factory=list)
    """Things to look at."""

    @property
    def kappa(self) -> float:
        """FLOPs per parameter per token."""
        return self.inputs.kappa

    @property
    def train_flops(self) -> float:
        """κ·N·D."""
        return self.inputs.kappa * self.params * self.tokens

    @property
    def steps(self) -> int:
        """Optimizer steps over all four stages."""
        return sum(s.steps for s in self.stages)

    @property
    def wallclock_hours(self) -> float | None:
        """κ·N·D / (gpus × peak × MFU), in hours (None without hardware)."""
        hw = self.inputs.hardware
        return None if hw is None else self.train_flops / hw.flops_per_second / 3600.0

    def ladder(self) -> list[dict[str, Any]]:
        """The lesson's check of sizes against the budget: D = ratio·N and κ·N·D for 1B, 3B, 7B, ..."""
        rows = []
        for n in LADDER:
            d = self.inputs.ratio * n
            c = self.inputs.kappa * n * d
            rows.append({"params": n, "tokens": d, "train_flops": c,
                         "budget_share": None if self.flops_budget is None else c / self.flops_budget,
                         "fits": None if self.flops_budget is None else c <= self.flops_budget * (1 + 1e-9)})
        return rows

    def to_json(self) -> dict[str, Any]:
        """The worksheet as data (``gradus plan --json``)."""
        hw = self.inputs.hardware
        return {
            "flops_budget": self.flops_budget,
            "budget_source": self.budget_source,
            "kappa": self.kappa,
            "ratio": self.inputs.ratio,
            "regime": self.regime,
            "params": self.params,
            "tokens": self.tokens,
            "train_flops": self.train_flops,
            "tokens_per_param": self.tokens / self.params,
            "shape": {**self.shape.to_dict(), "head_dim": self.shape.head_dim,
                      "params_non_embedding": self.shape.params_non_embedding,
                      "params_total": self.shape.params_total,
                      "flops_per_token": self.shape.flops_per_token(self.inputs.seq_len)},
            "tokens_per_step": self.tokens_per_step,
            "steps": self.steps,
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "warmup_fraction": self.inputs.warmup_fraction,
            "min_lr": self.min_lr,
            "min_lr_ratio": self.inputs.min_lr_ratio,
            "stages": [
                {"name": s.name, "key": s.key, "title": s.title, "tokens": s.tokens, "seq_len": s.seq_len,
                 "batch_size": s.batch_size, "steps": s.steps, "peak_lr": s.peak_lr, "end_lr": s.end_lr,
                 "rope_scaling": s.rope_scaling, "mix": s.mix, "in_config": s.in_config, "hours": s.hours}
                for s in self.stages
            ],
            **({"wallclock_hours": self.wallclock_hours,
                "hardware": {"gpu": hw.gpu.name, "gpus": hw.gpus, "mfu": hw.mfu, "days": hw.days,
                             "peak_flops_per_gpu": hw.gpu.peak_bf16_flops}} if hw is not None else {}),
            "ladder": self.ladder(),
            "explanation": list(self.explanation),
            "warnings": list(self.warnings),
        }


# ------------------------------------------------------------------------------------- planning
def _check_inputs(inp: PlanInputs) -> None:
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
    if problems:
        raise ConfigError(*problems)


def _choose_n_and_d(inp: PlanInputs, budget: float | None) -> tuple[str, float, float, list[str], list[str]]:
    """(regime, N, D, explanation lines, warnings) as the lesson's worksheet decides them."""
    r, k = inp.ratio, inp.kappa
    notes: list[str] = []
    warnings: list[str] = []
    if inp.params is not None and inp.tokens is not None:
        n, d = inp.params, inp.tokens
        need = k * n * d
        if budget is not None and need > budget * (1 + 1e-9):
            raise ConfigError(
                f"--params {format_count(n)} and --tokens {format_count(d)} need κ·N·D = {format_flops(need)} FLOPs, "
                f"more than the budget {format_flops(budget)}; drop one of them or raise the budget"
            )
        notes.append(f"N and D given: {d / n:.1f} tokens per parameter (compute-optimal: {r:g})")
        if not RATIO_RANGE[0] <= d / n <= RATIO_RANGE[1]:
            warnings.append(f"D/N = {d / n:.1f} is outside {RATIO_RANGE[0]:g}–{RATIO_RANGE[1]:g}: "
                            f"{'undertrained' if d / n < RATIO_RANGE[0] else 'past the compute optimum'}")
        return "fixed-params-and-tokens", n, d, notes, warnings
    if inp.params is not None:
        n = inp.params
        d = r * n
        if budget is not None and k * n * d > budget * (1 + 1e-9):
            d = budget / (k * n)
            n_opt = math.sqrt(budget / (k * r))
            notes.append(f"compute-limited: N = {format_count(n)} at {r:g} tokens/parameter needs "
                         f"{format_flops(k * n * r * n)} FLOPs > C; D is capped at C/(κ·N) = {format_count(d)}")
            warnings.append(f"only {d / n:.1f} tokens per parameter (< {r:g}): the model is undertrained; "
                            f"the compute-optimal size for this budget is N ≈ {format_count(n_opt)}")
            return "compute-limited", n, d, notes, warnings
        notes.append(f"N fixed: D = {r:g}·N = {format_count(d)}")
        if budget is not None:
            notes.append(f"uses {k * n * d / budget:.1%} of C; C would train N up to "
                         f"{format_count(math.sqrt(budget / (k * r)))} compute-optimally")
        return "fixed-params", n, d, notes, warnings
    if inp.tokens is not None and budget is None:
        d = inp.tokens
        n = d / r
        notes.append(f"D fixed: N = D/{r:g} = {format_count(n)}")
        return "fixed-tokens", n, d, notes, warnings
    assert budget is not None
    n_opt = math.sqrt(budget / (k * r))
    d_opt = r * n_opt
    notes.append(f"compute-optimal: N = sqrt(C / (κ·{r:g})) = {format_count(n_opt)}, D = {r:g}·N = {format_count(d_opt)}")
    if inp.tokens is not None and inp.tokens < d_opt:
        unique = inp.tokens
        n = unique / r
        notes.append(
            f"data-limited: only {format_count(unique)} tokens available, the optimum needs {format_count(d_opt)}; "
            f"N shrinks to D/{r:g} = {format_count(n)} to keep D ≈ {r:g}·N ({k * n * unique / budget:.1%} of C used)"
        )
        notes.append(
            f"alternatives: keep N ≈ {format_count(n_opt)} and cap D at {format_count(unique)} "
            f"({unique / n_opt:.1f} tokens/parameter), or repeat the data (up to ~4 epochs cost little: "
            f"Muennighoff et al. 2023)"
        )
        return "data-limited", n, unique, notes, warnings
    if inp.tokens is not None:
        notes.append(f"compute-limited: {format_count(inp.tokens)} tokens available, {format_count(d_opt)} used")
    return "compute-optimal", n_opt, d_opt, notes, warnings


def make_plan(inp: PlanInputs) -> Plan:
    """Fill the worksheet. Bad or impossible input is a one-line ConfigError."""
    _check_inputs(inp)
    hw = inp.hardware
    if inp.flops is not None:
        budget, source = inp.flops, "--flops"
    elif hw is not None and hw.budget is not None:
        budget, source = hw.budget, hw.describe()
    else:
        budget, source = None, "derived from N and D"
    if budget is None and inp.params is None and inp.tokens is None:
        raise ConfigError(
            "no budget: give --flops C, or --gpus K --gpu NAME --days T [--mfu U], or --params N, or --tokens D"
        )
    regime, n, d, explanation, warnings = _choose_n_and_d(inp, budget)

    base = inp.seq_len
    long = inp.long_seq_len or 4 * base
    short = max(64, base // 2)
    tps = inp.tokens_per_step or tokens_per_step_for(n, long)
    if tps < long:
        raise ConfigError(f"--tokens-per-step {tps}: less than one sequence of stage C's length {long}; raise it")
    lo, hi = TOKENS_PER_STEP_RANGE
    if not lo <= tps <= hi:
        warnings.append(f"tokens per step {tps:,} is outside the usual {lo:,}–{hi:,}")
    if d < tps or _step_flops(inp.kappa, n, tps) > (budget or math.inf):
        raise ConfigError(
            f"the budget gives D = {format_count(d)} tokens, less than one optimizer step of {tps:,} tokens "
            f"(κ·N·tokens_per_step = {format_flops(_step_flops(inp.kappa, n, tps))} FLOPs); "
            f"raise the budget or lower --tokens-per-step"
        )
    shape = shape_for_params(n, vocab_size=inp.vocab_size, max_seq_len=long)
    off = shape.params_non_embedding / n - 1
    if abs(off) > 0.1:
        warnings.append(f"the nearest model shape has N = {format_count(shape.params_non_embedding)} "
                        f"({off:+.0%} from {format_count(n)}): too small a budget for a sensible transformer")
    peak = float(f"{peak_lr_for_params(n):.3g}")  # three digits: what the config carries and people read

    # Stage tokens: whole steps, at least one each.
    lengths = {"short": short, "base": base, "long": long}
    stage_tokens = [max(1, round(t.fraction * d / tps)) * tps for t in STAGE_TEMPLATES]
    cfg_dict = _config_dict(inp, shape, peak, tps, lengths, stage_tokens, n, d, regime)
    cfg = from_dict(cfg_dict, origin="gradus plan --write")
    cur = resolve_schedule(cfg)
    warnings.extend(f"schedule: {w}" for w in cur.warnings)

    rope_long = long / base
    warmup = max(1, math.ceil(inp.warmup_fraction * cur.total_steps))  # as the schedule's global warmup
    stages: list[PlanStage] = []
    for i, t in enumerate(STAGE_TEMPLATES):
        seq = lengths[t.length]
        if i < len(cur.stages):
            sp = cur.stages[i]
            # The LR rises during the warmup and falls after it: a stage's highest LR is at its first
            # step, or at the warmup's last step when that falls inside the stage.
            candidates = [sp.start_step] + ([warmup - 1] if sp.start_step <= warmup - 1 < sp.end_step else [])
            top = max(lr_at(cur, step, i) for step in candidates)
            stages.append(PlanStage(t.key, sp.name, t.title, sp.tokens, sp.seq_len, sp.batch_size, sp.steps,
                                    top, lr_at(cur, sp.end_step - 1, i),
                                    rope_long if t.length == "long" else 1.0, dict(sp.mix), True, t.note))
        else:
            lr = D_LR_FACTOR * peak
            stages.append(PlanStage(t.key, f"{t.key}-{t.title.replace(' ', '-')}", t.title, stage_tokens[i], seq,
                                    tps // seq, stage_tokens[i] // tps, lr, lr, rope_long, {}, False, t.note))
    if hw is not None:
        per_token = inp.kappa * n / hw.flops_per_second / 3600.0
        stages = [_with_hours(s, s.tokens * per_token) for s in stages]
    if budget is not None and inp.kappa * n * d > budget * (1 + 1e-6):
        raise AssertionError("plan exceeds its budget")  # the rules above never allow it
    return Plan(
        inputs=inp, flops_budget=budget, budget_source=source, regime=regime, explanation=explanation,
        params=n, tokens=d, shape=shape, tokens_per_step=tps, stages=stages, peak_lr=peak,
        warmup_steps=warmup,
        min_lr=peak * inp.min_lr_ratio, config=cfg_dict, warnings=warnings,
    )


def _step_flops(kappa: float, n: float, tps: int) -> float:
    """FLOPs of one optimizer step: κ·N·tokens_per_step."""
    return kappa * n * tps


def _with_hours(s: PlanStage, hours: float) -> PlanStage:
    return replace(s, hours=hours)


def _config_dict(inp: PlanInputs, shape: ModelShape, peak: float, tps: int, lengths: dict[str, int],
                 stage_tokens: list[int], n: float, d: float, regime: str) -> dict[str, Any]:
    """The curriculum config of stages A–C: one warmup + cosine over the run (``schedule: global``), each
    stage's peak the grid LR, so stage C trains at the small LR at the cosine's end."""
    web_tokens = sum(tok * t.mix.get("web", 0.0) for tok, t in zip(stage_tokens, STAGE_TEMPLATES, strict=True))
    web_config = next((name for size, name in FINEWEB_EDU_SAMPLES if web_tokens <= size), None)
    sources = []
    for name, spec in SOURCES.items():
        src: dict[str, Any] = {"name": name, **spec}
        if name == "web" and web_config:
            src["dataset_config"] = web_config
        sources.append(src)
    stages = []
    for tok, t in zip(stage_tokens, STAGE_TEMPLATES, strict=True):
        if t.key == "D":
            continue
        stages.append({
            "name": f"{t.key}-{t.title.replace(' ', '-')}",
            "tokens": tok,
            "seq_len": lengths[t.length],
            "tokens_per_batch": tps,
            "peak_lr": peak,
            "mix": dict(t.mix),
            # Long-context adaptation interpolates RoPE positions by long/base from this stage on.
            **({"rope_scaling": lengths["long"] / lengths["base"]} if t.length == "long" else {}),
        })
    return {
        "name": f"plan-{format_count(n)}-{format_count(d)}tok",
        "model": {
            "preset": None,
            "n_layers": shape.n_layers,
            "d_model": shape.d_model,
            "n_heads": shape.n_heads,
            "ffn_hidden": shape.ffn_hidden,
            "max_seq_len": lengths["long"],
            "tie_embeddings": shape.tie_embeddings,
        },
        "data": {
            "sources": sources,
            "tokenizer": {"name_or_path": "gpt2"},
        },
        "curriculum": {
            "schedule": "global",
            "global_warmup_fraction": inp.warmup_fraction,
            "min_lr_ratio": inp.min_lr_ratio,
            "decay": "cosine",
            "grad_clip": 1.0,
            "target_tokens": sum(stage["tokens"] for stage in stages),
            "stages": stages,
        },
        "optim": {"base_lr": peak, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1},
    }


# -------------------------------------------------------------------------------------- output
def _pct(x: float) -> str:
    if x >= 1000:
        return f"{x:.0e}×".replace("e+0", "e").replace("e+", "e")
    if x >= 10:
        return f"{x:.0f}×"
    return f"{x:.1%}" if x < 0.1 else f"{x:.0%}"


def render_plan(plan: Plan) -> str:
    """The worksheet as the console prints it."""
    inp = plan.inputs
    out: list[str] = []
    add = out.append
    add(f"gradus plan: compute-optimal worksheet (D ≈ {inp.ratio:g}·N, C ≈ {inp.kappa:g}·N·D)")
    add("")
    budget = plan.flops_budget
    if budget is not None:
        add(f"  effective compute C     {format_flops(budget)} FLOPs  ({plan.budget_source})")
    if inp.hardware is not None:
        add(f"  hardware                {inp.hardware.describe()} = "
            f"{format_flops(inp.hardware.flops_per_second)} FLOP/s effective")
    add(f"  κ                       {inp.kappa:g} FLOPs per parameter per token (6 = fwd+bwd; 8 with recomputation)")
    for line in plan.explanation:
        add(f"  {line}")
    add(f"  N (non-embedding)       {format_count(plan.params)}")
    add(f"  D (tokens)              {format_count(plan.tokens)}  ({plan.tokens / plan.params:.1f} per parameter)")
    share = f"  ({plan.train_flops / budget:.1%} of C)" if budget else ""
    add(f"  κ·N·D                   {format_flops(plan.train_flops)} FLOPs{share}")
    if budget is not None:
        add("")
        add(f"  sizes against C = {format_flops(budget)} (D = {inp.ratio:g}·N):")
        for row in plan.ladder():
            verdict = "fits" if row["fits"] else "exceeds C"
            add(f"    N = {format_count(row['params']):>4} → D = {format_count(row['tokens']):>5} → "
                f"{format_flops(row['train_flops']):>7} FLOPs  {_pct(row['budget_share']):>6} of C  {verdict}")
    s = plan.shape
    add("")
    add(f"  model                   {s.n_layers} layers × {s.d_model} wide, {s.n_heads} heads of {s.head_dim}, "
        f"SwiGLU {s.ffn_hidden}")
    add(f"                          N = {format_count(s.params_non_embedding)} non-embedding "
        f"({s.params_non_embedding / plan.params - 1:+.1%}), {format_count(s.params_total)} total at vocab {s.vocab_size}; "
        f"{format_flops(s.flops_per_token(inp.seq_len))} FLOPs/token at {inp.seq_len}")
    add(f"  tokens per step         {plan.tokens_per_step:,}")
    add(f"  steps                   {plan.steps:,}")
    add(f"  peak LR                 {plan.peak_lr:.2e}  (grid 1B 3e-4, 3B 2e-4, 7B 1.5e-4, 13B 1e-4; log-space)")
    add(f"  schedule                warmup {plan.warmup_steps:,} step{'s' if plan.warmup_steps != 1 else ''} ({inp.warmup_fraction:.0%}), cosine to "
        f"{plan.min_lr:.2e} ({inp.min_lr_ratio:.0%}) over stages A–C")
    hours = plan.wallclock_hours
    if hours is not None:
        add(f"  wall-clock              {hours:,.1f} h = {format_duration(hours * 3600)} "
            f"at {format_flops(inp.hardware.flops_per_second if inp.hardware else 0)} FLOP/s")
    add("")
    add("  stage                        tokens  share  seq_len  batch      steps  LR start → end         notes")
    for st in plan.stages:
        rope = f", RoPE ×{st.rope_scaling:g}" if st.rope_scaling != 1 else ""
        mix = " ".join(f"{k} {v:.0%}" for k, v in st.mix.items() if v > 0)
        when = f", {format_duration(st.hours * 3600)}" if st.hours is not None else ""
        add(f"  {st.key} {st.title:<26} {format_count(st.tokens):>6}  {_pct(st.tokens / plan.tokens):>5}  "
            f"{st.seq_len:>7}  {st.batch_size:>5}  {st.steps:>9,}  {st.peak_lr:.1e} → {st.end_lr:.1e}      "
            f"{mix or 'instruction data'}{rope}{when}")
    for st in plan.stages:
        add(f"    {st.key}: {st.note}")
    if plan.warnings:
        add("")
        for w in plan.warnings:
            add(f"  warning: {w}")
    return "\n".join(out)


def plan_config_yaml(plan: Plan, command: str = "gradus plan") -> str:
    """The YAML ``--write`` emits: a header with the worksheet, then the config of stages A–C."""
    c = plan.stages[2]
    lines = [
        f"# Written by `{command}`.",
        f"# N = {format_count(plan.params)} non-embedding parameters, D = {format_count(plan.tokens)} tokens, "
        f"κ·N·D = {format_flops(plan.train_flops)} FLOPs; peak LR {plan.peak_lr:.2e}, "
        f"{plan.tokens_per_step:,} tokens per step.",
        "# Stages A–C as a sequence-length curriculum, one warmup + cosine over the run.",
        f"# Stage C trains with RoPE position interpolation ×{c.rope_scaling:g} (its rope_scaling).",
        f"# Stage D ({plan.stages[3].title}, {format_count(plan.stages[3].tokens)} tokens at "
        f"{plan.stages[3].peak_lr:.1e}) is a separate run on instruction data.",
    ]
    return "\n".join(lines) + "\n" + yaml.safe_dump(plan.config, sort_keys=False, allow_unicode=True)
