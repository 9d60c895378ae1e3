"""The compute-optimal worksheet: from a budget (FLOPs, hardware × days, a model size or a data size) to
N, D, a model shape, tokens per step, steps, wall-clock, the LR schedule and stages A–D.

Why this module is short: it only composes the steps of the worksheet, in the order the lesson fills it
in — check the inputs (:mod:`.inputs`), choose N and D (:mod:`.scaling`), pick tokens per step and a
model shape near N (:func:`gradus.sizes.shape_for_params`), write the config of stages A–C and read its
schedule back (:mod:`.stages`) — and holds the result, :class:`Plan`; printing it is
:mod:`.worksheet_text`.

Pure Python: no torch. The stage table is checked by building the config it writes and scheduling it
with :func:`gradus.curriculum.resolve_schedule`, so what the worksheet prints is what ``gradus train`` runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from gradus.config import from_dict
from gradus.curriculum import resolve_schedule
from gradus.errors import ConfigError
from gradus.plan.hardware import format_flops
from gradus.plan.inputs import MAX_PARAMS, MAX_TOKENS, PlanInputs, check_inputs
from gradus.plan.scaling import (
    LADDER,
    TOKENS_PER_STEP_RANGE,
    choose_n_and_d,
    peak_lr_for_params,
    step_flops,
    tokens_per_step_for,
)
from gradus.plan.stages import STAGE_TEMPLATES, PlanStage, fill_stages, written_config
from gradus.plan.switches import choose_switches
from gradus.sizes import ModelShape, shape_for_params
from gradus.units import format_count, format_duration

BATCH_MULTIPLE = 8
"""``batch_multiple`` of the stages the worksheet writes (the schema's default): derived batches are multiples of it."""


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
    switches: list[str] = field(default_factory=list)
    """The memory switches the written config turns on, one line each with why (:mod:`.switches`)."""

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
            "switches": list(self.switches),
        }


def make_plan(inp: PlanInputs) -> Plan:
    """Fill the worksheet. Bad or impossible input is a one-line ConfigError."""
    check_inputs(inp)
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
    regime, n, d, explanation, warnings = choose_n_and_d(inp, budget)
    if n > MAX_PARAMS:
        raise ConfigError(f"the budget gives N = {n:.3g} parameters, beyond the {MAX_PARAMS:.0e} (1T) gradus plans; "
                          "give a smaller budget, or --params to fix the model size")
    if d > MAX_TOKENS:
        raise ConfigError(f"the budget gives D = {d:.3g} tokens (N = {format_count(n)}), beyond the {MAX_TOKENS:.0e} "
                          "tokens gradus plans and trains; give a smaller budget or a larger --params")

    base = inp.seq_len
    long = inp.long_seq_len or 4 * base
    short = max(64, base // 2)
    tps = inp.tokens_per_step or tokens_per_step_for(n, long)
    if hw is not None and tps % (unit := math.lcm(hw.gpus, BATCH_MULTIPLE) * long):
        # Every stage's batch must split over the GPUs (gradus train refuses it otherwise) and stay a whole
        # multiple of batch_multiple (else resolve rounds it off that split): the nearest multiple of
        # lcm(GPUs, batch_multiple) × stage C's length (ties down: more steps); shorter stages divide it too.
        if inp.tokens_per_step is not None:
            raise ConfigError(f"--tokens-per-step {tps}: stage C's batch of {tps / long:g} × {long} does not split "
                              f"over {hw.gpus} GPUs in whole multiples of {BATCH_MULTIPLE}; give a multiple of "
                              f"{unit:,} ({unit // long} × {long}), or leave it out to have one chosen")
        wanted, tps = tps, unit * max(1, math.floor(tps / unit + 0.5 - 1e-9))
        explanation.append(f"tokens per step {wanted:,} → {tps:,}: a multiple of {unit // long} × {long} "
                           f"(lcm of {hw.gpus} GPU(s) and batch_multiple {BATCH_MULTIPLE}), so every "
                           "stage's batch splits evenly over the GPUs")
    if tps < long:
        raise ConfigError(f"--tokens-per-step {tps}: less than one sequence of stage C's length {long}; raise it")
    lo, hi = TOKENS_PER_STEP_RANGE
    if not lo <= tps <= hi:
        warnings.append(f"tokens per step {tps:,} is outside the usual {lo:,}–{hi:,}")
    if d < tps or step_flops(inp.kappa, n, tps) > (budget or math.inf):
        raise ConfigError(
            f"the budget gives D = {format_count(d)} tokens, less than one optimizer step of {tps:,} tokens "
            f"(κ·N·tokens_per_step = {format_flops(step_flops(inp.kappa, n, tps))} FLOPs); "
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
    cfg_dict = written_config(inp, shape, peak, tps, lengths, stage_tokens, n, d, regime)
    cfg = from_dict(cfg_dict, origin="gradus plan --write")
    cur = resolve_schedule(cfg)
    warnings.extend(f"schedule: {w}" for w in cur.warnings)

    switches: list[str] = []
    if hw is not None:  # on the planned GPUs: shard and recompute as far as memory needs (.switches)
        train, switches = choose_switches(shape, [(st.seq_len, st.batch_size) for st in cur.stages], hw.gpus,
                                          hw.gpu.memory_bytes)
        if train:
            cfg_dict["train"] = train
            from_dict(cfg_dict, origin="gradus plan --write")

    warmup = max(1, math.ceil(inp.warmup_fraction * cur.total_steps))  # as the schedule's global warmup
    stages = fill_stages(cur, warmup, lengths, stage_tokens, tps, peak)
    if hw is not None:
        # Timed at the FLOPs a token costs the trainer at the stage's length (the head and attention included,
        # ModelShape.flops_per_token: what its MFU counts and `gradus plan --config` times), not κ·N: the
        # model and tokens are sized by κ·N·D, as the lesson does, and the difference is said when it matters.
        stages = [_with_hours(s, s.tokens * shape.flops_per_token(s.seq_len) / hw.flops_per_second / 3600.0)
                  for s in stages]
        total = sum(s.hours or 0.0 for s in stages)
        budget_hours = inp.kappa * n * d / hw.flops_per_second / 3600.0
        if total > 1.02 * budget_hours:
            warnings.append(
                f"stages A–D take {format_duration(total * 3600)} at the trainer's FLOPs count "
                f"({shape.flops_per_token(lengths['base']):.2g} a token at {lengths['base']}, the head and attention "
                f"included, against κ·N = {inp.kappa * n:.2g}), {total / budget_hours - 1:.0%} over the "
                f"{format_duration(budget_hours * 3600)} that κ·N·D gives (N and D are sized by κ·N·D, as the lesson "
                f"does): to fit the budget, plan for {1 - budget_hours / total:.0%} less time")
    if budget is not None and inp.kappa * n * d > budget * (1 + 1e-6):
        raise AssertionError("plan exceeds its budget")  # the rules above never allow it
    return Plan(
        inputs=inp, flops_budget=budget, budget_source=source, regime=regime, explanation=explanation,
        params=n, tokens=d, shape=shape, tokens_per_step=tps, stages=stages, peak_lr=peak,
        warmup_steps=warmup,
        min_lr=peak * inp.min_lr_ratio, config=cfg_dict, warnings=warnings, switches=switches,
    )


def _with_hours(s: PlanStage, hours: float) -> PlanStage:
    return replace(s, hours=hours)
