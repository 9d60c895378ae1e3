"""Adaptive stages as data: a run's decisions are edits of its stage table, and its schedule is a pure
function of (config, edits).

An adaptive run (``curriculum.adaptive``) starts from the table its stages describe: the ladder of lengths
and the fallback switch points. The controller (:mod:`gradus.train.controller`) may decide, from what the
run measures, to

* double the tokens per step from token count T on (``Edit("batch", T, 2)``): the stage running at T is split
  there and runs at twice its tokens per step from T on, and no later stage runs at fewer (a stage whose
  table gives more keeps its own); a stage run at f × its table's tokens per step has its peak LR × f^alpha;
* switch to the next, longer stage at T, before the table's boundary (``Edit("length", T)``): the stage
  running at T ends there and the next one begins, keeping the boundary after it where it was.

:func:`edited_config` turns (config, edits) into an ordinary config of token-budget stages, with the LR
curve's warmup and cooldown written in tokens (so the curve stays where it was in tokens when a batch
doubles); :func:`adapted_schedule` resolves it. Nothing here keeps state: the trainer, the data pipeline's
thread, a resumed run and ``gradus schedule --from-run`` all rebuild the same table from the same edits, and
the edited config *is* the fixed table that replays the run.

Layer 1: no torch, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gradus.config import GradusConfig
from gradus.curriculum.resolve import resolve_schedule
from gradus.curriculum.rules import derive_batch
from gradus.curriculum.schedule import Schedule, StagePlan
from gradus.curriculum.state import tokens_at_step
from gradus.units import format_count as _count


def student_t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``dof`` ≥ 1 degrees of freedom: the CDF by
    Simpson's rule over the density (smooth, one-dimensional: 400 panels give 5 digits), inverted by bisection.
    Written here rather than taken from scipy, which the project does not depend on, for the one use below."""
    if not 0.5 < p < 1 or dof < 1:
        raise ValueError("student_t_quantile needs 0.5 < p < 1 and dof ≥ 1")
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def density(t: float) -> float:
        return math.exp(log_norm - (dof + 1) / 2 * math.log1p(t * t / dof))

    def cdf(x: float, panels: int = 400) -> float:
        h = x / panels
        inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, panels))
        return 0.5 + h / 3 * (density(0.0) + inner + density(x))

    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, 2 * high
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def length_critical_value(z: float, window: int, interval: str) -> float:
    """How many standard errors the length rule adds to a gain fitted over ``window`` evaluations
    (``curriculum.adaptive.length``): ``z`` itself when ``interval`` is ``normal`` or the fit has no residual
    degrees of freedom, else the Student's t quantile, for window − 2 degrees of freedom, of the confidence
    that z has under the normal curve."""
    if interval == "normal" or z <= 0 or window <= 2:
        return z
    return student_t_quantile(statistics.NormalDist().cdf(z), window - 2)


KINDS = ("batch", "length")
"""What an edit changes: the tokens per step, or the sequence length (the next stage begins)."""


@dataclass(frozen=True)
class Edit:
    """One accepted decision: from the token counter ``tokens`` on, the table changes."""

    kind: str
    """``batch`` (tokens per step × ``factor``) or ``length`` (the next, longer stage begins)."""
    tokens: int
    """The token counter at which the change takes effect (the first step after it runs changed)."""
    factor: int = 1
    """batch: the tokens-per-step multiplier (2); 1 for length."""

    def to_json(self) -> dict:
        """The edit as plain data (checkpoints, decisions.jsonl)."""
        return {"kind": self.kind, "tokens": self.tokens, "factor": self.factor}

    @classmethod
    def from_json(cls, data: dict) -> Edit:
        """Read :meth:`to_json`'s shape back."""
        kind = str(data["kind"])
        if kind not in KINDS:
            raise ValueError(f"unknown adaptive edit kind {kind!r}; expected one of {', '.join(KINDS)}")
        return cls(kind, int(data["tokens"]), int(data.get("factor", 1)))


@dataclass
class _Row:
    """A stage of the edited table while the edits are applied."""

    base: int  # index of the config stage it comes from
    name: str
    budget: int  # token budget
    tps: int  # the table's tokens per step for this stage
    seq_len: int
    peak: float  # the table's resolved peak LR
    table_batch: int  # the table's sequences per step
    multiple: int  # the stage's batch_multiple: a doubled batch is rounded to it, as the table's own are
    run_tps: int = 0  # the tokens per step it runs at: max(the table's, the run's after its batch decisions)
    split: bool = False  # the tail of a stage split by a batch edit: no warmup of its own

    def __post_init__(self) -> None:
        self.run_tps = self.run_tps or self.tps

    @property
    def batch(self) -> int:
        """Sequences per step at :attr:`run_tps`."""
        return grown_batch(self.table_batch, self.tps, self.run_tps, self.seq_len, self.multiple)


def grown_batch(batch: int, tps: int, floor: int, seq_len: int, multiple: int) -> int:
    """The sequences per step of a stage whose table gives ``batch`` (``tps`` tokens per step) once the run takes
    at least ``floor`` tokens per step: the table's own where it is not fewer, else ``floor`` in sequences rounded
    as the table rounds a derived batch (the nearest multiple of ``batch_multiple``; below it, the nearest whole
    number), so a batch that an earlier, shorter stage doubled stays a batch the table could have written."""
    if floor <= tps:
        return batch
    return derive_batch(floor, seq_len, multiple)


def token_curve(base: Schedule) -> tuple[int | None, int | None]:
    """(global warmup, wsd cooldown) of a resolved schedule in tokens: the LR curve's segments as token
    counts, so that an edited table with other tokens per step keeps them where they were in tokens."""
    warmup = tokens_at_step(base, base.global_warmup_steps) if base.global_warmup_steps else None
    cooldown = None
    if base.mode == "wsd" and base.cooldown_steps:
        cooldown = base.total_tokens - tokens_at_step(base, base.total_steps - base.cooldown_steps)
    return warmup, cooldown


def stable_phase(schedule: Schedule) -> tuple[int, int]:
    """(first, last) token counts of the wsd schedule's stable phase, where the LR sits at its peak: after
    the global warmup, before the cooldown. Batch decisions are taken only inside it (Seesaw: a larger batch
    and a lower LR substitute for each other, so a batch change during the decay would count it twice)."""
    start = tokens_at_step(schedule, schedule.global_warmup_steps)
    if schedule.mode != "wsd":
        return start, start
    return start, tokens_at_step(schedule, schedule.total_steps - schedule.cooldown_steps)


def _rows(cfg: GradusConfig, base: Schedule) -> list[_Row]:
    return [_Row(i, s.name, int(st.tokens or 0), s.tokens_per_step, s.seq_len, s.peak_lr, s.batch_size,
                 st.batch_multiple)
            for i, (st, s) in enumerate(zip(cfg.curriculum.stages, base.stages, strict=True))]


def _row_at(rows: list[_Row], tokens: int) -> int:
    """The row that runs at the token counter ``tokens`` (its budget threshold ≤ tokens < the next one's)."""
    threshold = 0
    for i, row in enumerate(rows):
        if i == len(rows) - 1 or tokens < threshold + row.budget:
            return i
        threshold += row.budget
    return len(rows) - 1


def _threshold(rows: list[_Row], i: int) -> int:
    return sum(r.budget for r in rows[:i])


def apply_edits(cfg: GradusConfig, base: Schedule, edits: Iterable[Edit]) -> list[_Row]:
    """The edited rows, edits applied in token order; an edit that cannot apply raises ValueError."""
    rows = _rows(cfg, base)
    for edit in sorted(edits, key=lambda e: e.tokens):
        i = _row_at(rows, edit.tokens)
        row, cut = rows[i], edit.tokens - _threshold(rows, i)
        if edit.kind == "batch":
            if edit.factor < 2:
                raise ValueError(f"a batch edit multiplies the tokens per step by 2 or more, not {edit.factor}")
            # The stage that ran up to T is the one measured and doubled; at a stage's first token (a batch
            # decision the controller refuses at a stage's end) it is the stage before, not the one starting.
            measured = rows[i - 1] if cut == 0 and i > 0 else row
            floor = measured.batch * measured.seq_len * edit.factor  # from T on, never fewer tokens per step
            if cut > 0:  # split the stage at T: its head keeps the old batch
                tail = dataclasses.replace(row, budget=max(1, row.budget - cut), split=True)
                row.budget = cut
                rows.insert(i + 1, tail)
                i += 1
            for later in rows[i:]:  # a stage whose table has more keeps its own
                later.run_tps = max(later.run_tps, floor)
        else:
            if i == len(rows) - 1 or cut <= 0:
                raise ValueError(f"a length edit at {edit.tokens:,} tokens has no stage to end there "
                                 f"(stage {row.name} starts at {_threshold(rows, i):,})")
            rows[i + 1].budget += row.budget - cut  # the next stage starts at T and ends where it did
            row.budget = cut
    return rows


def edited_config(cfg: GradusConfig, edits: Iterable[Edit], base: Schedule | None = None) -> GradusConfig:
    """``cfg`` as the fixed table its edits describe: token-budget stages with explicit batches and peak LRs,
    the warmup and cooldown in tokens, ``adaptive`` removed. Resolving it gives the adaptive run's schedule,
    and training it replays the run (``gradus schedule --from-run``)."""
    base = resolve_schedule(cfg) if base is None else base
    cur = cfg.curriculum
    alpha = cur.adaptive.batch.alpha if cur.adaptive is not None else 0.5
    stages = []
    for row in apply_edits(cfg, base, edits):
        st = cur.stages[row.base]
        factor = row.batch * row.seq_len / row.tps  # the batch against the table's, for the LR and the name
        update = {"step": None, "tokens": row.budget, "tokens_per_batch": None, "batch_size": row.batch,
                  "peak_lr": row.peak * factor ** alpha, "lr_multiplier": None, "lr_rule": None, "name": row.name}
        if row.split:
            update.update(warmup_steps=0, warmup_tokens=None)
        if row.split or factor != 1:
            update["name"] = f"{row.name}×{factor:g}"
        stages.append(st.model_copy(update=update))
    warmup, cooldown = token_curve(base)
    curriculum = cur.model_copy(update={"stages": stages, "adaptive": None, "target_tokens": base.target_tokens,
                                        "global_warmup_tokens": warmup, "cooldown_tokens": cooldown})
    return cfg.model_copy(update={"curriculum": curriculum})


def adapted_schedule(cfg: GradusConfig, edits: Iterable[Edit], base: Schedule | None = None) -> Schedule:
    """The schedule of an adaptive run after ``edits`` (none: the table as written, its LR curve in tokens)."""
    schedule = resolve_schedule(edited_config(cfg, edits, base))
    base = resolve_schedule(cfg) if base is None else base
    return dataclasses.replace(schedule, warnings=base.warnings)  # what resolving the config said, once


def accepted_edits(records: Iterable[dict]) -> list[Edit]:
    """The edits a run made, from its decision records (decisions.jsonl): the accepted ones carry theirs."""
    return [Edit.from_json(r["edit"]) for r in records if r.get("edit")]


def batch_rule_on(cfg: GradusConfig, world_size: int | None) -> bool | None:
    """Whether the batch rule runs in a run over ``world_size`` data-parallel processes:
    ``adaptive.batch.enabled`` when it is true or false; for ``auto``, on with two processes or more and off on
    one (one device's time follows its tokens, and a doubled batch saves steps, not tokens), or None when the
    processes are not known (``gradus schedule``: it depends on how the run is launched)."""
    adaptive = cfg.curriculum.adaptive
    if adaptive is None:
        return False
    enabled = adaptive.batch.enabled
    if enabled != "auto":
        return bool(enabled)
    return None if world_size is None else world_size > 1


def max_tokens_per_step(cfg: GradusConfig, base: Schedule) -> int:
    """The batch rule's upper bound: ``adaptive.batch.max_tokens_per_step``, else 8× the first stage's."""
    adaptive = cfg.curriculum.adaptive
    given = adaptive.batch.max_tokens_per_step if adaptive is not None else None
    return int(given) if given is not None else 8 * base.stages[0].tokens_per_step


def envelope(cfg: GradusConfig, base: Schedule, world_size: int | None = None) -> list[StagePlan]:
    """Every stage shape an adaptive run over ``world_size`` processes can reach (any number when None), as
    stage plans with their own indices: what set-up fits micro-batches to and compiles before the first step,
    so a decision never meets an unprepared shape. ``base``: the config's own table (``resolve_schedule(cfg)``),
    stage for stage.

    A batch decision doubles the tokens per step the stage running then takes, and from there every stage
    runs at least that many (:func:`apply_edits`, rounded to its batch multiple by :func:`grown_batch`): the
    floors a run can reach are closed under "double what some stage runs at a floor", within the bound."""
    grow = batch_rule_on(cfg, world_size) is not False
    bound = max_tokens_per_step(cfg, base)
    out: list[StagePlan] = []
    seen: set[tuple[int, int]] = set()
    floors: set[int] = set()  # tokens-per-step floors that decisions up to this stage can leave behind
    for k, s in enumerate(base.stages):
        multiple = cfg.curriculum.stages[k].batch_multiple

        def batch_at(floor: int, s: StagePlan = s, multiple: int = multiple) -> int:
            return grown_batch(s.batch_size, s.tokens_per_step, floor, s.seq_len, multiple)

        if grow:
            todo = [s.tokens_per_step, *floors]
            while todo:  # a doubling here, at any floor reached, and again from the batch that gives
                doubled = 2 * batch_at(todo.pop()) * s.seq_len
                if doubled <= bound and doubled not in floors:
                    floors.add(doubled)
                    todo.append(doubled)
        for floor in sorted({s.tokens_per_step, *floors}):
            batch = batch_at(floor)
            if (s.seq_len, batch) not in seen:
                seen.add((s.seq_len, batch))
                out.append(dataclasses.replace(s, index=len(out), batch_size=batch, tokens_per_step=batch * s.seq_len))
    return out


def compute_at(schedule: Schedule, tokens: int, cost: Callable[[int], float]) -> float:
    """Compute spent up to the token counter ``tokens``, in reference-token equivalents: each stage's tokens
    × ``cost(seq_len)`` (the FLOPs of a token at that length relative to the reference length). A pure
    function of the table, so the length rule's rate is the same in a resumed run."""
    total = 0.0
    for s in schedule.stages:
        if s.steps and tokens > s.start_tokens:
            total += (min(tokens, s.end_tokens) - s.start_tokens) * cost(s.seq_len)
    if schedule.stages and tokens > schedule.total_tokens:  # past the table's end the last shape continues
        total += (tokens - schedule.total_tokens) * cost(schedule.stages[-1].seq_len)
    return total


def next_longer(schedule: Schedule, stage_index: int) -> StagePlan | None:
    """The stage after ``stage_index`` when it runs a longer sequence (the length rule's only move), else None."""
    if stage_index + 1 >= len(schedule.stages):
        return None
    here, after = schedule.stages[stage_index], schedule.stages[stage_index + 1]
    return after if after.seq_len > here.seq_len and after.steps else None


def envelope_lines(cfg: GradusConfig, schedule: Schedule, world_size: int | None = None) -> list[str]:
    """An adaptive config's envelope below its table: the ladder, the bounds and the rules (the table above is
    the fallback a run follows when no signal fires), for a run over ``world_size`` processes (None: not known,
    as in ``gradus schedule``; ``batch.enabled: auto`` is then said as such)."""
    a = cfg.curriculum.adaptive
    if a is None:
        return []
    ladder = " → ".join(dict.fromkeys(str(s.seq_len) for s in schedule.stages))
    target = schedule.target_tokens or schedule.total_tokens
    lines = ["", f"adaptive: the stage table is the fallback; the run may change it from its own signals "
                 f"(checks every {_count(a.check_every_tokens or max(1, target // 64))} tokens)"]
    batch_on = batch_rule_on(cfg, world_size)
    if batch_on is False and a.batch.enabled == "auto":
        lines.append("  batch: off on one process (enabled: auto): a doubled batch saves optimizer steps, not "
                     "tokens, and one device's time follows its tokens; set curriculum.adaptive.batch.enabled: "
                     "true to probe anyway")
    if batch_on is not False:
        start, end = stable_phase(schedule)
        shapes = envelope(cfg, schedule, world_size)
        within = (f"within {a.batch.verify.z:g} standard errors of the main run" if a.batch.verify.z
                  else "when no worse than the main run") + " on held-out rows at the window's end"
        verify = (f"each proposal verified by a branch of {a.batch.verify.fraction:g} of the run, accepted {within} "
                  f"(a rejection raises rho to twice the noise scale's reading there)" if a.batch.verify.enabled
                  else "accepted without a branch")
        lines.append(
            f"  batch: tokens/step × 2 when B_simple > {a.batch.rho:g} × tokens/step for {a.batch.patience} checks "
            f"in a row, LR × 2^{a.batch.alpha:g}, up to {max_tokens_per_step(cfg, schedule):,} tokens/step, only "
            f"between {_count(start)} and {_count(end)} tokens (the stable phase); {verify}; "
            f"{len(shapes)} shapes prepared at start-up"
            + ("; auto: in a run over two or more data-parallel processes, not on one" if batch_on is None else ""))
    if a.length.enabled:
        crit = length_critical_value(a.length.z, a.length.window, a.length.interval)
        noise = f" by {crit:.3g} standard errors" if a.length.z else ""
        if a.length.z and crit != a.length.z:
            noise += f" (z {a.length.z:g} for the fit's {a.length.window - 2} degrees of freedom)"
        lines.append(
            f"  length: ladder {ladder}; the next length begins early when the validation loss gained per "
            f"compute doubling (fitted over {a.length.window} evaluations) stays below {a.length.threshold:g} of the "
            f"stage's first{noise} for {a.length.patience} evaluations in a row; never later than the table, never "
            f"shorter")
    return lines
