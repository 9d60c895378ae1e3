"""The arm catalogue of ``benchmarks/curriculum_speedup.py``: its settings and the regime A/B arms.

Each arm is a curriculum (or a baseline) over the same model, data and token budget, built from
:class:`Settings`: the baseline at the final length, the textbook and shorter sequence warmups, the presets'
per-stage LR rules and their ablations, the LR-finder arm, and the same at ``big_factor`` times the tokens per
step (regime B). The script and the tests pick arms from :data:`ARMS` by name; :mod:`gradus.experiments.speedup`
turns one into a run's config and runs, tunes and summarises them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


# =================================================================================== settings
@dataclass(frozen=True)
class Settings:
    """Everything that is the same for every arm (the benchmark's fixed conditions)."""

    model: str = "small"
    """Model size preset (gradus.sizes): small = 4 layers × 128."""
    d_model: int | None = None
    """Residual width instead of the preset's (heads and SwiGLU width follow from the preset's rules), to see
    whether the curriculum's gain grows with the model."""
    vocab_size: int = 8192
    """Byte-level BPE trained on the train split."""
    final_len: int = 256
    """The baseline's sequence length, and the reference length of every evaluation."""
    budget: int = 524_288
    """Training tokens of every run."""
    tokens_per_step: int = 2048
    """Regime A: tokens per optimizer step (the baseline's own setting)."""
    big_factor: int = 4
    """Regime B: tokens per step = this × tokens_per_step."""
    eval_points: int = 16
    """Evaluations per run, evenly spaced in tokens (the fixed cadence)."""
    eval_tokens: int = 16_384
    """Validation tokens per evaluation (the same windows of valid.jsonl every time)."""
    warmup_fraction: float = 0.05
    """Linear warmup as a fraction of all steps (global schedules; first stage of per-stage schedules)."""
    min_lr_ratio: float = 0.1
    """Cosine floor as a fraction of the peak."""
    seeds: tuple[int, ...] = (0, 1)
    """Seeds of the tuned setting; the LR grid runs at the first."""
    max_extensions: int = 2
    """Times a grid may grow by ×2 at an edge before giving up (reported when it does)."""
    finalists: int = 1
    """The best LRs of the first seed's grid that run at every seed; the lowest median final loss wins
    (gradus.experiments.tuning). 1: the first seed's best alone."""
    holdout: float = 0.05
    """When the data is one JSONL file (no valid.jsonl beside it): the share of its documents held out for
    validation by a hash of their text (``data.validation.fraction``)."""
    template: str | None = None
    """How a record's fields make its text (the source's ``template``, e.g. ``'{question}\\n{answer}'`` for
    GSM8K); None: the record's ``text`` field."""
    cooldown_fraction: float = 0.2
    """WSD arms: the share of the run in the final cooldown (1 − sqrt shape, to zero)."""
    tokenizer_documents: int = 100_000
    """Train-split documents the BPE is trained on (all of WikiText-2's 600 articles by default)."""
    lr_find: tuple[tuple[int, float], ...] = ()
    """(seq_len, suggested peak LR) from ``gradus lr-find`` on this model and data, filled in by :func:`main`
    when an arm needs it (the ``seqwarm-lrfind`` arm's per-stage multipliers)."""
    lr_find_steps: int = 100
    """Steps of each length's LR sweep (1e-6 → 1)."""
    anchor_budget: int | None = None
    """The ``-abs`` arms keep the short stages' token budgets they have at this budget (fractions × it) and give
    every further token to the final stage: short stages sized in absolute tokens, not as fractions of the run
    (issue 29: does the gain shrink because the short stages grow with the budget?). None: the run's budget."""
    checkpoint_every_tokens: int | None = None
    """Tokens between a run's checkpoints, so a benchmark killed mid-run (a session's end) resumes that run
    where it stopped; None: at stage ends only (the runs of record, whose configs stay as they were)."""
    lanes: int = 256
    """``data.packing.lanes`` of every run (gradus's default): each row of a batch from its own stream, up to
    this many; 1 = a batch is consecutive windows of one stream (attempts 1-3 below, in BENCHMARKS.md)."""

    def tps(self, regime: str) -> int:
        """Tokens per step of a regime."""
        return self.tokens_per_step * (self.big_factor if regime == "B" else 1)

    def steps(self, regime: str) -> int:
        """Optimizer steps of a run in a regime."""
        return self.budget // self.tps(regime)

    def eval_every(self, regime: str) -> int:
        """Steps between evaluations: the same token cadence in both regimes."""
        return max(1, self.steps(regime) // self.eval_points)


# ======================================================================================= arms
def split_steps(total: int, fractions: Sequence[float]) -> list[int]:
    """Whole steps per stage for token fractions (cumulative rounding: the sum is exact, each stage ≥ 1)."""
    acc, bounds = 0.0, []
    for f in fractions:
        acc += f
        bounds.append(round(total * acc / sum(fractions)))
    bounds[-1] = total
    steps, prev = [], 0
    for b in bounds:
        steps.append(max(1, b - prev))
        prev += steps[-1]
    steps[-1] = total - sum(steps[:-1])
    if steps[-1] < 1:
        raise ValueError(f"{total} steps cannot be split into {len(fractions)} stages")
    return steps


def token_stages(s: Settings, regime: str, lengths: Sequence[int], fractions: Sequence[float],
                 extra: Sequence[dict] | None = None) -> list[dict]:
    """Token-budget stages at a constant tokens per step, each budget a whole number of steps (so every
    switch lands on a step and every arm spends exactly the same tokens)."""
    tps = s.tps(regime)
    steps = split_steps(s.steps(regime), fractions)
    out = []
    for i, (length, n) in enumerate(zip(lengths, steps, strict=True)):
        stage = {"name": f"s{length}", "tokens": n * tps, "seq_len": length, "tokens_per_batch": tps}
        if extra is not None:
            stage.update(extra[i])
        out.append(stage)
    return out


def ramp_stages(s: Settings, regime: str, lengths: Sequence[int], fractions: Sequence[float],
                divisors: Sequence[int]) -> list[dict]:
    """:func:`token_stages` with a batch ramp: the same token budgets per stage (whole steps of the regime's
    tokens per step, so every switch and evaluation lands on the same token counts as the constant-batch
    arms), but stage i runs at ``tokens_per_step // divisors[i]`` tokens per step (more, smaller steps)."""
    stages = token_stages(s, regime, lengths, fractions)
    for stage, d in zip(stages, divisors, strict=True):
        stage["tokens_per_batch"] = stage["tokens_per_batch"] // d
    return stages


def off_regime_batch(s: Settings, regime: str, curriculum: dict) -> bool:
    """Whether any stage runs at other tokens per step than its regime's (then its evaluations follow tokens:
    a step cadence would put them elsewhere)."""
    return any(st.get("tokens_per_batch") != s.tps(regime) for st in curriculum["stages"])


def global_schedule(s: Settings, stages: list[dict]) -> dict:
    """One warmup + cosine over the run; each stage's peak = base LR × its multiplier (1 by default)."""
    return {"schedule": "global", "global_warmup_fraction": s.warmup_fraction, "decay": "cosine",
            "min_lr_ratio": s.min_lr_ratio, "grad_clip": 1.0, "stages": stages}


def per_stage_schedule(s: Settings, stages: list[dict]) -> dict:
    """Each stage warms up (from where the previous one ended) and decays on its own."""
    return {"schedule": "per_stage", "global_warmup_fraction": s.warmup_fraction, "decay": "cosine",
            "min_lr_ratio": s.min_lr_ratio, "grad_clip": 1.0, "stages": stages}


def wsd_schedule(s: Settings, stages: list[dict]) -> dict:
    """Warmup, a stable peak, then a 1 − sqrt cooldown to zero over the last ``cooldown_fraction`` of the run
    (one global schedule: stage switches do not restart it)."""
    return {"schedule": "wsd", "global_warmup_fraction": s.warmup_fraction, "cooldown_fraction": s.cooldown_fraction,
            "cooldown_shape": "1-sqrt", "decay_to": "zero", "min_lr_ratio": s.min_lr_ratio, "grad_clip": 1.0,
            "stages": stages}


def linear_schedule(s: Settings, stages: list[dict]) -> dict:
    """Warmup, then a straight line from the peak to zero at the end of the run (D2Z; one global schedule)."""
    return {"schedule": "linear", "global_warmup_fraction": s.warmup_fraction, "grad_clip": 1.0, "stages": stages}


@dataclass(frozen=True)
class Arm:
    """One way to train: a regime, a curriculum built from the settings, and the LR grid its tuning starts from."""

    name: str
    regime: str
    description: str
    lr_grid: tuple[float, ...]
    build: Callable[[Settings], dict]
    """Settings -> the ``curriculum`` section (stages and schedule); the LR grid sets ``optim.base_lr``."""
    baseline: bool = False
    train: tuple[tuple[str, object], ...] = ()
    """Fields the arm adds to the run's ``train`` section (an adaptive arm's two micro-batches per step, so that
    one process measures the gradient noise scale: 2-row micro-batches, which the arm used before 2026-12-06,
    cost up to 1.7× per token at the short lengths on a CPU)."""

    @property
    def adaptive(self) -> bool:
        """Whether the arm's stages adapt to the run (``curriculum.adaptive``): each run follows its own table."""
        return self.name.endswith("-adaptive-wsd")


def _baseline(regime: str, schedule: Callable[[Settings, list[dict]], dict] = global_schedule
              ) -> Callable[[Settings], dict]:
    def build(s: Settings) -> dict:
        return schedule(s, token_stages(s, regime, [s.final_len], [1.0]))
    return build


def _textbook(regime: str) -> Callable[[Settings], dict]:
    # ARCHITECTURE.md's first measurement and the demo preset's shape: 32 → 64 → 128 → 256 over 10/15/20/55% of
    # the tokens, one global warmup + cosine, the same peak in every stage.
    return _ladder(regime, [8, 4, 2, 1], [0.10, 0.15, 0.20, 0.55])


def _presets_rules(regime: str) -> Callable[[Settings], dict]:
    # The 124M presets' rules scaled to this size: aggressive's shape (short stages first, the final length
    # for the last 60%: stage starts at 0 / 5 / 10 / 20 / 40% of the steps), its per-stage schedule (warmup,
    # then cosine to 0.1 × peak inside each stage, a switch ramping from where the previous stage ended), the
    # by_length clip rule, and lr-extreme's tempered multipliers 11.3 / 7 / 3.5 / 1.5 / 0.7, renormalised so the
    # final stage runs at the base LR (the grid then tunes the base as it tunes the baseline's LR).
    def build(s: Settings) -> dict:
        lengths = [s.final_len // 16, s.final_len // 8, s.final_len // 4, s.final_len // 2, s.final_len]
        mult = [11.3 / 0.7, 7.0 / 0.7, 3.5 / 0.7, 1.5 / 0.7, 1.0]
        warm = max(1, round(0.02 * s.steps(regime)))
        extra = [{"lr_multiplier": round(m, 3), "clip_rule": "by_length", **({"warmup_steps": warm} if i else {})}
                 for i, m in enumerate(mult)]
        return per_stage_schedule(s, token_stages(s, regime, lengths, [0.05, 0.05, 0.10, 0.20, 0.60], extra))
    return build


def _presets_ablation(regime: str, schedule: str, multipliers: bool) -> Callable[[Settings], dict]:
    # presets-rules with one ingredient changed, to see which one costs: the per-stage restarts (each stage
    # warms up again and decays to 0.1 × its own peak) or the 16× → 1× multipliers.
    def build(s: Settings) -> dict:
        cur = _presets_rules(regime)(s)
        for st in cur["stages"]:
            if not multipliers:
                st.pop("lr_multiplier", None)
            if schedule == "global":
                st.pop("warmup_steps", None)
        return (global_schedule if schedule == "global" else per_stage_schedule)(s, cur["stages"])
    return build


def _restarts_control(regime: str) -> Callable[[Settings], dict]:
    # The control for presets-flat-lr: the same five stages, the same per-stage schedule (warmups, cosine to
    # 0.1 × inside each stage) and the same clip per stage (by_length's values, given explicitly), but every
    # stage at the final length. It is no curriculum: what presets-flat-lr gains over it is the sequence
    # lengths' doing; what it gains over the baseline is the schedule's.
    def build(s: Settings) -> dict:
        cur = _presets_ablation(regime, "per_stage", multipliers=False)(s)
        from gradus.curriculum import clip_by_length

        for st in cur["stages"]:
            st["grad_clip"] = clip_by_length(st["seq_len"])
            st.pop("clip_rule")
            st["seq_len"] = s.final_len
            st["name"] = f"{st['name']}-at-{s.final_len}"
        return cur
    return build


def _boosted(regime: str) -> Callable[[Settings], dict]:
    # The textbook shape, but the short stages at a higher peak (ARCHITECTURE.md: a curriculum is more stable at a
    # high LR): multipliers 2 / 1.6 / 1.25 / 1 under the one global warmup + cosine.
    def build(s: Settings) -> dict:
        lengths = [s.final_len // 8, s.final_len // 4, s.final_len // 2, s.final_len]
        extra = [{"lr_multiplier": m} for m in (2.0, 1.6, 1.25, 1.0)]
        return global_schedule(s, token_stages(s, regime, lengths, [0.10, 0.15, 0.20, 0.55], extra))
    return build


def _short_warmup(regime: str) -> Callable[[Settings], dict]:
    # Short stages first, the final length for most of the run: 64 → 128 → 256 over 10/15/75%, one global
    # schedule; a switch changes only the shape, never the LR.
    return _ladder(regime, [4, 2, 1], [0.10, 0.15, 0.75])


def _lr_found(regime: str) -> Callable[[Settings], dict]:
    # The textbook shape with each stage's peak from `gradus lr-find` at its length: multiplier = the
    # suggestion at that length / the suggestion at the final length, so the grid tunes the base LR exactly
    # as it tunes the baseline's (lr-find decides the ratios between stages, the grid the level).
    def build(s: Settings) -> dict:
        lengths = [s.final_len // 8, s.final_len // 4, s.final_len // 2, s.final_len]
        found = dict(s.lr_find)
        if not all(L in found for L in lengths):  # only make_config for the smoke test's schema checks
            found = {L: 1.0 for L in lengths}
        extra = [{"lr_multiplier": round(found[L] / found[s.final_len], 4)} for L in lengths]
        return global_schedule(s, token_stages(s, regime, lengths, [0.10, 0.15, 0.20, 0.55], extra))
    return build


LR_FIND_ARMS = ("seqwarm-lrfind",)


def _ladder(regime: str, divisors: Sequence[int], fractions: Sequence[float],
            schedule: Callable[[Settings, list[dict]], dict] = global_schedule) -> Callable[[Settings], dict]:
    # A sequence-length ladder (final_len // divisor per stage) over the given token fractions under one
    # global schedule (warmup + cosine unless told): a switch changes only the shape, never the LR.
    def build(s: Settings) -> dict:
        return schedule(s, token_stages(s, regime, [s.final_len // d for d in divisors], fractions))
    return build


RAMP_LENGTHS = (16, 8, 4, 2, 1)
"""The long ladder of seqwarm-long(-wsd) and the ramp: final_len // each (64 → 1,024 at final length 1,024)."""
RAMP_FRACTIONS = (0.10, 0.10, 0.15, 0.20, 0.45)
"""The long ladder's share of the run's tokens per stage."""
RAMP_BATCH = (4, 4, 2, 1, 1)
"""The ramp's batch: stage i runs at tokens_per_step // each (1/4, 1/4, 1/2, 1, 1 × the baseline's)."""


def _ramp(regime: str, divisors: Sequence[int], alpha: float, lengths: Sequence[int] = RAMP_LENGTHS,
          fractions: Sequence[float] = RAMP_FRACTIONS) -> Callable[[Settings], dict]:
    # seqwarm-long-wsd's ladder and token budgets with a batch ramp (small steps early: the critical batch
    # starts small and grows with the tokens seen), each stage's peak × (its tokens per step / the last
    # stage's)^alpha under the one WSD schedule. lengths/fractions: the ablations of issue 29 §2.
    def build(s: Settings) -> dict:
        stages = ramp_stages(s, regime, [s.final_len // d for d in lengths], fractions, divisors)
        return {**wsd_schedule(s, stages), "batch_ramp": {"direction": "grow", "alpha": alpha}}
    return build


def _ramp_absolute(regime: str, divisors: Sequence[int]) -> Callable[[Settings], dict]:
    # _ramp's stages, but the four short stages take the tokens they take at s.anchor_budget (their fractions
    # of it) whatever the budget; the final length gets the rest. At the anchor budget it is the ramp itself.
    def build(s: Settings) -> dict:
        fractions = RAMP_FRACTIONS
        anchor = min(s.anchor_budget or s.budget, s.budget)
        short = [f * anchor / s.budget for f in fractions[:-1]]
        stages = ramp_stages(s, regime, [s.final_len // d for d in RAMP_LENGTHS], [*short, 1 - sum(short)],
                             divisors)
        return {**wsd_schedule(s, stages), "batch_ramp": {"direction": "grow", "alpha": 0.0}}
    return build


ADAPTIVE = {"batch": {"enabled": "auto", "rho": 8.0, "patience": 3, "alpha": 0.5,
                      "verify": {"fraction": 0.02, "z": 0.0}},
            "length": {"threshold": 0.5, "patience": 2, "window": 4, "z": 2.0, "interval": "t"}}
"""The one adaptive configuration the benchmark runs at every budget and corpus (issue 30 §3): the defaults,
written out, so that a run made under other defaults (the two-point length rule and rho 2 before 2026-12-06,
the batch rule on one process before 2026-12-07) is never read back as this one's. Every benchmark run is one
process, where ``enabled: auto`` leaves the batch rule off: the arm is the table with the length rule, and no
noise-scale split (the length rule does not read it; the split cost 9–15% of a step at 512 tokens per step).
A field added later at its default reads the same in an older run's config (``runner.same_config``), so the
runs made before ``interval`` existed (the normal band) were moved aside by hand when it came, as for any
change of behaviour without a change of config."""


def _ramp_adaptive(regime: str, divisors: Sequence[int]) -> Callable[[Settings], dict]:
    # The ramp's table as the fallback; the run may begin the next length early from the loss rate and, over two
    # or more processes, double its tokens per step (up to 4× the regime's) from the noise scale; 64 checks a run.
    def build(s: Settings) -> dict:
        table = _ramp(regime, divisors, 0.0)(s)
        del table["batch_ramp"]  # the adaptive batch owns the tokens per step (the table still grows)
        return {**table, "adaptive": {"check_every_tokens": max(1, s.budget // 64),
                                      "batch": {**ADAPTIVE["batch"], "max_tokens_per_step": 4 * s.tps(regime)},
                                      "length": dict(ADAPTIVE["length"])}}
    return build


def _baseline_batch(regime: str, divisor: int) -> Callable[[Settings], dict]:
    # The baseline at a smaller constant batch (more steps), so that a batch ramp's gain is not credited to
    # the curriculum when a small batch alone would have given it.
    def build(s: Settings) -> dict:
        return wsd_schedule(s, ramp_stages(s, regime, [s.final_len], [1.0], [divisor]))
    return build


LR_A = (2e-3, 4e-3, 8e-3)
LR_B = LR_A  # a first grid of 4e-3 / 8e-3 / 1.6e-2 put regime B's best at its low edge: start where A does
ARMS: dict[str, Arm] = {a.name: a for a in [
    Arm("baseline", "A", "one stage at the final length, warmup + cosine", LR_A, _baseline("A"), baseline=True),
    Arm("baseline-wsd", "A", "one stage at the final length, warmup + stable + 1-sqrt cooldown to 0 (last 20%)",
        LR_A, _baseline("A", wsd_schedule), baseline=True),
    Arm("baseline-linear", "A", "one stage at the final length, warmup + linear decay to 0 (D2Z)", LR_A,
        _baseline("A", linear_schedule), baseline=True),
    Arm("seqwarm-textbook-wsd", "A", "final/8 → final over 10/15/20/55%, WSD (1-sqrt cooldown to 0, last 20%)",
        LR_A, _ladder("A", [8, 4, 2, 1], [0.10, 0.15, 0.20, 0.55], wsd_schedule)),
    Arm("seqwarm-long-wsd", "A", "final/16 → final over 10/10/15/20/45%, WSD (1-sqrt cooldown to 0, last 20%)",
        LR_A, _ladder("A", RAMP_LENGTHS, RAMP_FRACTIONS, wsd_schedule)),
    Arm("baseline-wsd-half-batch", "A", "baseline-wsd at half the tokens per step (twice the steps)", LR_A,
        _baseline_batch("A", 2), baseline=True),
    Arm("seqwarm-long-ramp-wsd", "A", "seqwarm-long-wsd with a batch ramp: 1/4, 1/4, 1/2, 1, 1 × the tokens per "
        "step, one LR", LR_A, _ramp("A", RAMP_BATCH, 0.0)),
    Arm("seqwarm-long-ramp-abs-wsd", "A", "seqwarm-long-ramp-wsd with the short stages' tokens fixed at their size at "
        "--anchor-budget (the final length takes the rest)", LR_A, _ramp_absolute("A", RAMP_BATCH)),
    Arm("seqwarm-long-ramp-adaptive-wsd", "A", "seqwarm-long-ramp-wsd's table as the fallback, adaptive at gradus's "
        "defaults: the next length early on the loss rate (the batch rule, auto, is off on one process)", LR_A,
        _ramp_adaptive("A", RAMP_BATCH)),
    Arm("seqwarm-long-ramp-early-wsd", "A", "seqwarm-long-ramp-wsd with the final length from 45% of the run: "
        "10/10/10/15/55%", LR_A, _ramp("A", RAMP_BATCH, 0.0, fractions=(0.10, 0.10, 0.10, 0.15, 0.55))),
    Arm("seqwarm-ramp-no128-wsd", "A", "seqwarm-long-ramp-wsd without the final/8 stage: final/16, /4, /2, final "
        "over 20/15/20/45% at 1/4, 1/2, 1, 1 × the tokens per step", LR_A,
        _ramp("A", (4, 2, 1, 1), 0.0, lengths=(16, 4, 2, 1), fractions=(0.20, 0.15, 0.20, 0.45))),
    Arm("seqwarm-long-ramp-sqrt-wsd", "A", "seqwarm-long-ramp-wsd with each stage's peak × sqrt(its tokens per "
        "step / the last's)", LR_A, _ramp("A", RAMP_BATCH, 0.5)),
    Arm("seqwarm-textbook", "A", "final/8 → final (32→256 at 256) over 10/15/20/55%, global cosine", LR_A, _textbook("A")),
    Arm("seqwarm-short", "A", "final/4 → final (64→256 at 256) over 10/15/75%, global cosine", LR_A, _short_warmup("A")),
    Arm("seqwarm-lrfind", "A", "32→256 textbook, each stage's peak × (lr-find at its length / lr-find at 256)",
        LR_A, _lr_found("A")),
    Arm("seqwarm-half", "A", "32→64→128→256 over 15/20/25/40%, global cosine", LR_A,
        _ladder("A", [8, 4, 2, 1], [0.15, 0.20, 0.25, 0.40])),
    Arm("seqwarm-long", "A", "final/16 → final (16→256 at 256) over 10/10/15/20/45%, global cosine", LR_A,
        _ladder("A", RAMP_LENGTHS, RAMP_FRACTIONS)),
    Arm("presets-rules", "A", "16→256 in 5 stages (aggressive's shape), per-stage LR 16×→1× base, by_length clip",
        (5e-4, 1e-3, 2e-3), _presets_rules("A")),
    Arm("seqwarm-boost", "A", "32→256 textbook, short stages at 2/1.6/1.25× the peak, global cosine", LR_A,
        _boosted("A")),
    Arm("presets-flat-lr", "A", "presets-rules with every stage at the base LR (per-stage restarts kept)", LR_A,
        _presets_ablation("A", "per_stage", multipliers=False)),
    Arm("presets-global", "A", "presets-rules' 16×→1× multipliers under one global cosine (no restarts)",
        (5e-4, 1e-3, 2e-3), _presets_ablation("A", "global", multipliers=True)),
    Arm("restarts-control", "A", "no curriculum: presets-flat-lr's five per-stage schedules and clips, all at 256",
        LR_A, _restarts_control("A"), baseline=True),
    Arm("baseline-big", "B", "one stage at 256 at 4× tokens/step, warmup + cosine", LR_B, _baseline("B"),
        baseline=True),
    Arm("seqwarm-textbook-big", "B", "32→256 textbook at 4× tokens/step, global cosine", LR_B, _textbook("B")),
    Arm("presets-rules-big", "B", "presets-rules at 4× tokens/step", (1e-3, 2e-3, 4e-3), _presets_rules("B")),
]}
# The issue's arms: the baseline, curricula scaled from the presets, per-stage LR from the presets' rules and
# from lr-find. Regime B (baseline-big, seqwarm-textbook-big) and the other variants run with --arms.
TARGET_BASELINES = ("baseline", "baseline-wsd", "baseline-linear", "baseline-wsd-half-batch")
"""The baselines that set the target: the best of those run (lowest median final loss) is *the* baseline, so
that a curriculum's gain is not a schedule's alone (the baseline is tuned over the same schedule choices)."""
DEFAULT_ARMS = ("baseline", "seqwarm-textbook", "seqwarm-short", "presets-rules", "seqwarm-lrfind")
QUICK_ARMS = ("baseline", "seqwarm-textbook")
