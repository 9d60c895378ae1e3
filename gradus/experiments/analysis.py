"""Measuring finished runs: validation curves, the crossing analysis (tokens and seconds at which a curve
first reaches a target loss), the calibrated clock, medians and spread over seeds, and the verdict in words.

Pure Python (no torch): it reads ``metrics.jsonl`` records, which are plain JSON.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

CALIBRATION_PERCENTILE = 0.9
"""The throughput percentile of a shape's logging windows that the calibrated clock reads."""


@dataclass
class RunRecord:
    """One finished training run (one arm, one LR, one seed) and its validation curve."""

    arm: str
    """Name of the arm the run belongs to."""
    lr: float
    """``optim.base_lr`` of the run."""
    seed: int
    """``train.seed`` of the run."""
    tokens: list[int] = field(default_factory=list)
    """Training tokens at each evaluation."""
    seconds: list[float] = field(default_factory=list)
    """Training seconds (evaluation and checkpoints excluded) at each evaluation."""
    val_loss: list[float] = field(default_factory=list)
    """Validation loss at the reference length at each evaluation (inf where it was not finite)."""
    final_val_loss: float = math.inf
    """The last evaluation's loss when the run finished its budget, else inf."""
    best_val_loss: float = math.inf
    """The lowest evaluation loss of the run."""
    train_seconds: float = 0.0
    """Training seconds of the whole run."""
    wall_seconds: float = 0.0
    """Wall-clock seconds of the whole process (start-up, tokenizer, evaluation included)."""
    tokens_trained: int = 0
    """Tokens the run trained on."""
    guard_events: int = 0
    """Loss-spike / NaN guard events."""
    diverged: str | None = None
    """Why the run did not finish its budget, None when it did."""
    load_before: float = 0.0
    """The machine's 1-minute load average when the run started."""
    load_after: float = 0.0
    """... and when it ended."""
    reused: bool = False
    """Read back from an earlier invocation (its seconds are from then)."""
    windows: list[tuple[int, int, float]] = field(default_factory=list)
    """(seq_len, tokens per step, tokens/s) of every logging window inside one stage (for the calibrated clock)."""
    run_dir: str = ""
    """The run's directory."""
    branch_tokens: int = 0
    """An adaptive run's tokens trained in verification branches and thrown away (``adaptive/branch_tokens``):
    counted in :attr:`tokens`, since the run paid for them."""
    micro_batches: list[tuple[int, int, int]] = field(default_factory=list)
    """(seq_len, tokens per step, micro-batch rows) of every shape the run's step records name, sorted: what the
    measured calibration prices each shape at (kept in the record, so a run read back without its
    metrics.jsonl, from an archive, is priced the same)."""

    @property
    def tokens_per_sec(self) -> float:
        """Training throughput (evaluation excluded)."""
        return self.tokens_trained / self.train_seconds if self.train_seconds else 0.0

    def to_json(self) -> dict:
        """JSON-safe data (inf as None) that :meth:`from_json` reads back."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["final_val_loss"] = finite(self.final_val_loss)
        out["best_val_loss"] = finite(self.best_val_loss)
        out["val_loss"] = [finite(x) for x in self.val_loss]
        out["windows"] = [list(w) for w in self.windows]
        if not self.branch_tokens:  # only adaptive runs have branches: the other records keep their shape
            del out["branch_tokens"]
        out["micro_batches"] = [list(m) for m in self.micro_batches]
        return out

    @classmethod
    def from_json(cls, data: dict) -> RunRecord:
        """Inverse of :meth:`to_json`."""
        data = dict(data)
        for key in ("final_val_loss", "best_val_loss"):
            data[key] = math.inf if data.get(key) is None else data[key]
        data["val_loss"] = [math.inf if x is None else x for x in data["val_loss"]]
        data["windows"] = [tuple(w) for w in data.get("windows", [])]
        data["micro_batches"] = [tuple(m) for m in data.get("micro_batches", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def finite(x: float | None) -> float | None:
    """``x`` when it is a finite number, else None (for JSON)."""
    return x if x is not None and math.isfinite(x) else None


def read_records(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line))
    return out


def record_from_metrics(run: RunRecord, records: Sequence[dict], budget: int) -> RunRecord:
    """Fill a run's curve, throughput and outcome from its metrics.jsonl records. After a resume the later
    record of an evaluation step wins (a resumed run repeats the steps after its last checkpoint)."""
    evals: dict[int, dict] = {}
    branch: dict[int, int] = {}  # an adaptive run's branch tokens so far, by step
    for r in records:
        if "val/loss" in r:
            evals[int(r["step"])] = r
        elif str(r.get("event", "")).startswith("guard/"):
            run.guard_events += 1
        elif "time/train_seconds" in r:
            run.train_seconds = max(run.train_seconds, float(r["time/train_seconds"]))
            run.tokens_trained = max(run.tokens_trained, int(r["tokens"]))
            if "adaptive/branch_tokens" in r:
                branch[int(r["step"])] = int(r["adaptive/branch_tokens"])
    run.branch_tokens = max(branch.values(), default=0)
    for step in sorted(evals):
        r = evals[step]
        loss = r["val/loss"]
        # The tokens a run paid for at this point: an adaptive run's branches included.
        run.tokens.append(int(r["tokens"]) + max((b for s, b in branch.items() if s <= step), default=0))
        run.seconds.append(float(r["time/train_seconds"]))
        run.val_loss.append(math.inf if loss is None or not math.isfinite(loss) else float(loss))
    run.windows = stage_windows(records)
    run.micro_batches = sorted({(int(r["curriculum/current_seq_len"]), int(r["curriculum/tokens_per_step"]),
                                 int(r["curriculum/micro_batch_size"]))
                                for r in records if "curriculum/micro_batch_size" in r and "event" not in r})
    if run.seconds:
        run.train_seconds = max(run.train_seconds, run.seconds[-1])
        run.tokens_trained = max(run.tokens_trained, run.tokens[-1])
    complete = run.diverged is None and bool(run.tokens) and run.tokens[-1] >= budget
    run.final_val_loss = run.val_loss[-1] if complete else math.inf
    run.best_val_loss = min(run.val_loss, default=math.inf)
    if run.diverged is None and not complete:
        run.diverged = "stopped before the end of the budget"
    return run


def stage_windows(records: Sequence[dict]) -> list[tuple[int, int, float]]:
    """(seq_len, tokens per step, tokens/s) of each logging window wholly inside one stage: the previous step
    record is in the same stage (so neither a run's start-up nor a switch is inside it)."""
    out, prev = [], None
    for r in records:
        if "tokens_per_sec" not in r or "event" in r:
            continue
        if prev is not None and prev["curriculum/stage"] == r["curriculum/stage"] and r["tokens_per_sec"] > 0:
            out.append((int(r["curriculum/current_seq_len"]), int(r["curriculum/tokens_per_step"]),
                        float(r["tokens_per_sec"])))
        prev = r
    return out


def calibrate(runs: Sequence[RunRecord]) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], int]]:
    """Seconds per token of each stage shape: the inverse of the 90th-percentile throughput of its logging
    windows over every run. Load only ever slows a window down, and every shape's windows are spread over
    the whole experiment, so a high percentile reads each shape at the same quiet moments: their ratio is
    the machine's, not the load's. Returns (cost, samples per shape)."""
    by_shape: dict[tuple[int, int], list[float]] = {}
    for run in runs:
        for seq_len, tps, rate in run.windows:
            by_shape.setdefault((seq_len, tps), []).append(rate)
    cost, count = {}, {}
    for shape, rates in by_shape.items():
        rates.sort()
        cost[shape] = 1.0 / rates[min(len(rates) - 1, int(CALIBRATION_PERCENTILE * len(rates)))]
        count[shape] = len(rates)
    return cost, count


def calibrated_seconds(stages: Sequence[dict], cost: dict[tuple[int, int], float], tokens: float) -> float:
    """Seconds to train ``tokens`` through these stages at the calibrated seconds per token of each shape: a
    stage's own ``seconds_per_token`` when it has one (a measured calibration writes each arm's into its
    stages: :meth:`gradus.experiments.calibration.Calibration.annotate`), else ``cost``'s for its shape."""
    total = 0.0
    for st in stages:
        span = min(max(0.0, tokens - st["start_tokens"]), st["end_tokens"] - st["start_tokens"])
        rate = st.get("seconds_per_token")
        if span <= 0 or (rate is None and not cost):
            continue
        if rate is None:
            # A shape with no logging window (a stage too short to log) gets the slowest measured rate:
            # conservative, so it can only lower a curriculum's calibrated speedup.
            rate = cost.get((st["seq_len"], st["tokens_per_step"]), max(cost.values()))
        total += span * rate
    return total


def steps_to(stages: Sequence[dict], tokens: float) -> float:
    """Optimizer steps to train ``tokens`` through these stages (each stage's tokens / its tokens per step; past
    the last stage at the last stage's rate). Serial steps are what a larger batch saves: on data-parallel
    hardware a step's time barely grows with its batch, so at equal tokens fewer steps is less wall-clock, a
    saving that the tokens axis and a one-device calibrated clock do not see. An adaptive run's branch tokens,
    counted in its tokens axis, are priced here at the stage's own tokens per step although a branch runs at
    twice that: it overcounts the branch's steps, never undercounts them."""
    total, last = 0.0, None
    for st in stages:
        span = min(max(0.0, tokens - st["start_tokens"]), st["end_tokens"] - st["start_tokens"])
        total += span / st["tokens_per_step"]
        last = st
    if last is not None and tokens > last["end_tokens"]:
        total += (tokens - last["end_tokens"]) / last["tokens_per_step"]
    return total


def median_curve(runs: Sequence[RunRecord]) -> tuple[list[int], list[float], list[float]]:
    """Pointwise median over seeds of (seconds, loss) at each evaluation (every run shares the cadence; a run
    that stopped early counts as infinite loss from there on)."""
    longest = max(runs, key=lambda r: len(r.tokens))
    tokens = list(longest.tokens)
    secs, losses = [], []
    for i in range(len(tokens)):
        secs.append(statistics.median(r.seconds[i] if i < len(r.seconds) else math.inf for r in runs))
        losses.append(statistics.median(r.val_loss[i] if i < len(r.val_loss) else math.inf for r in runs))
    return tokens, secs, losses


def to_target(tokens: Sequence[float], seconds: Sequence[float], losses: Sequence[float],
              target: float) -> tuple[float | None, float | None]:
    """(tokens, seconds) where the curve first reaches ``target``: interpolated linearly between the two
    evaluations around the crossing; the first evaluation as is when it is already at or below the target;
    (None, None) when the curve never gets there."""
    eps = 1e-9  # so the baseline's own median curve reaches its own final value despite rounding
    for i, loss in enumerate(losses):
        if loss <= target + eps:
            if i == 0 or not math.isfinite(losses[i - 1]):
                return float(tokens[i]), float(seconds[i])
            hi, lo = losses[i - 1], loss
            frac = 1.0 if hi == lo else min(1.0, max(0.0, (hi - target) / (hi - lo)))
            return (tokens[i - 1] + frac * (tokens[i] - tokens[i - 1]),
                    seconds[i - 1] + frac * (seconds[i] - seconds[i - 1]))
    return None, None


def curve_to_target(curve: dict, target: float) -> tuple[float | None, float | None]:
    """:func:`to_target` on a record's JSON ``curve`` (``tokens``, ``seconds``, ``val_loss`` with None for inf)."""
    return to_target(curve["tokens"], curve["seconds"], clean(curve["val_loss"]), target)


def seconds_at(curve: dict, tokens: float) -> float | None:
    """Training seconds at a token count, interpolated on a curve (for marking stage switches on the time axis)."""
    xs, ys = curve["tokens"], curve["seconds"]
    if not xs:
        return None
    if tokens <= xs[0]:
        return ys[0] * tokens / xs[0] if xs[0] else 0.0
    for i in range(1, len(xs)):
        if tokens <= xs[i]:
            f = (tokens - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + f * (ys[i] - ys[i - 1])
    return ys[-1]


def clean(values: Sequence[float | None]) -> list[float]:
    """JSON curve values back to floats (None -> inf)."""
    return [math.inf if x is None else x for x in values]


def add_speedups(rec: dict, ref: dict, cost: dict[tuple[int, int], float], suffix: str = "") -> None:
    """Speedups of record ``rec`` against a reference record ``ref``, to ``ref``'s final loss, in tokens,
    measured seconds, calibrated seconds and optimizer steps (:func:`steps_to`; records hold ``curve``,
    ``stages`` and ``train_seconds_calibrated``).

    When ``rec`` reaches that loss: ref's cost to it / rec's. When it does not, the slowdown the other way
    round: ref's cost to reach *rec's* final loss / rec's whole run (below 1). ``speedup_kind`` says which."""
    rc, fc = rec["curve"], ref["curve"]
    target = clean(fc["val_loss"])[-1]
    names = [k + suffix for k in ("speedup_tokens", "speedup_wallclock", "speedup_wallclock_calibrated")]
    if not math.isfinite(target):
        rec.update(dict.fromkeys([*names, "speedup_steps" + suffix]))
        rec["speedup_kind" + suffix] = "the reference diverged"
        return
    r_tok, r_sec = curve_to_target(rc, target)
    if r_tok is not None and r_sec is not None:
        f_tok, f_sec = curve_to_target(fc, target)
        assert f_tok is not None and f_sec is not None
        cal = calibrated_seconds(rec["stages"], cost, r_tok)
        values = (f_tok / r_tok, f_sec / r_sec if r_sec else None,
                  calibrated_seconds(ref["stages"], cost, f_tok) / cal if cal else None)
        rec.update(zip(names, values, strict=True))
        r_steps = steps_to(rec["stages"], r_tok)
        rec["speedup_steps" + suffix] = steps_to(ref["stages"], f_tok) / r_steps if r_steps else None
        rec["speedup_kind" + suffix] = "to the reference's final loss: reference's cost / this arm's"
        return
    final = clean(rc["val_loss"])[-1]
    f_tok, f_sec = curve_to_target(fc, final)
    if f_tok is None or f_sec is None or not math.isfinite(final):
        rec.update(dict.fromkeys([*names, "speedup_steps" + suffix]))
        rec["speedup_kind" + suffix] = "reference's final loss not reached; the reference was never as bad"
        return
    whole = rec.get("train_seconds_calibrated")
    values = (f_tok / rc["tokens"][-1], f_sec / rc["seconds"][-1] if rc["seconds"][-1] else None,
              calibrated_seconds(ref["stages"], cost, f_tok) / whole if whole else None)
    rec.update(zip(names, values, strict=True))
    whole_steps = steps_to(rec["stages"], rc["tokens"][-1])
    rec["speedup_steps" + suffix] = steps_to(ref["stages"], f_tok) / whole_steps if whole_steps else None
    rec["speedup_kind" + suffix] = ("reference's final loss not reached: reference's cost to this arm's final "
                                    "loss / this arm's whole run")


def seed_shift(finals: Sequence[float | None]) -> float:
    """Half the range of the finite final losses over seeds (0.0 with fewer than two): how far the target
    could sit from where it does on seed noise alone, the shift :func:`shifted_speedups` tries."""
    have = [x for x in finals if x is not None and math.isfinite(x)]
    return (max(have) - min(have)) / 2 if len(have) > 1 else 0.0


def shifted_speedups(rec: dict, ref: dict, cost: dict[tuple[int, int], float], shift: float) -> dict:
    """How far ``rec``'s speedup against ``ref`` (records as for :func:`add_speedups`) moves if ``rec``'s
    median curve sat ``shift`` higher or lower: its first crossing of ref's final loss - shift and + shift,
    against ref's own cost to the unshifted target. Returns ``target_shift`` and the ``[low, high]`` bands
    ``speedup_tokens_band`` and ``speedup_wallclock_calibrated_band`` (an end is None where the shifted target
    is never reached; both bands are None where the arm never reaches the target itself).

    Why: a first crossing is ill-conditioned where a curve runs flat at the target's level. Two from-scratch
    runs of the WikiText-2 2048 benchmark gave 2.18x and 1.61x from curves 0.009 apart there (BENCHMARKS.md);
    a wide band says that the point figure rests on noise, a narrow one that it does not."""
    out: dict = {"target_shift": shift, "speedup_tokens_band": None, "speedup_wallclock_calibrated_band": None}
    rc, fc = rec["curve"], ref["curve"]
    target = clean(fc["val_loss"])[-1]
    if not math.isfinite(target):
        return out
    f_tok, _ = curve_to_target(fc, target)
    r_tok, _ = curve_to_target(rc, target)
    if f_tok is None or r_tok is None:
        return out
    f_cal = calibrated_seconds(ref["stages"], cost, f_tok)
    tokens, calibrated = [], []
    for level in (target - shift, target + shift):  # the curve sat higher (a slower arm), then lower
        tok, _ = curve_to_target(rc, level)
        cal = calibrated_seconds(rec["stages"], cost, tok) if tok else None
        tokens.append(f_tok / tok if tok else None)
        calibrated.append(f_cal / cal if cal else None)
    out["speedup_tokens_band"], out["speedup_wallclock_calibrated_band"] = tokens, calibrated
    return out


def band_text(rec: dict) -> str | None:
    """The bands of :func:`shifted_speedups` in words, e.g. "x1.85-2.46 calibrated, x1.59-2.03 tokens if its
    curve sat 0.026 higher / lower"; None when the record has none (or a shift of zero)."""
    cal, tok, shift = rec.get("speedup_wallclock_calibrated_band"), rec.get("speedup_tokens_band"), rec.get("target_shift")
    if not tok or not shift:
        return None

    def pair(band: list) -> str:
        return "–".join("not reached" if x is None else f"{x:.2f}" for x in band)

    return (f"×{pair(cal)} calibrated, " if cal else "") + f"×{pair(tok)} tokens if its curve sat {shift:.3f} " \
        "higher / lower"


def summarise_runs(name: str, runs: Sequence[RunRecord], target: float, stages: list[dict],
                   cost: dict[tuple[int, int], float]) -> dict:
    """The JSON record of one arm over its seeds: median curve, tokens and seconds (measured and calibrated)
    to ``target`` on it, final and best losses per seed and their median and spread."""
    tokens, secs, losses = median_curve(runs)
    tok, sec = to_target(tokens, secs, losses, target)
    per_seed = []
    for r in runs:
        st, ss = to_target(r.tokens, r.seconds, r.val_loss, target)
        per_seed.append({"seed": r.seed, "tokens_to_target": st, "seconds_to_target": ss,
                         "final_val_loss": finite(r.final_val_loss), "best_val_loss": finite(r.best_val_loss),
                         "train_seconds": r.train_seconds, "tokens_per_sec": r.tokens_per_sec,
                         "guard_events": r.guard_events, "diverged": r.diverged, "load_before": r.load_before,
                         "load_after": r.load_after, "reused": r.reused, "run_dir": r.run_dir})
    finals = [r.final_val_loss for r in runs]
    return {
        "name": name,
        "tokens_per_step": stages[0]["tokens_per_step"] if stages else None,
        "tokens_to_target": tok,
        "seconds_to_target": sec,
        "seconds_to_target_calibrated": calibrated_seconds(stages, cost, tok) if tok else None,
        "final_val_loss": finite(statistics.median(finals)),
        "final_val_loss_seeds": [finite(f) for f in finals],
        "final_val_loss_spread": finite(max(finals) - min(finals)),
        "best_val_loss": finite(statistics.median(r.best_val_loss for r in runs)),
        "tokens_to_target_seeds": [p["tokens_to_target"] for p in per_seed],
        "train_seconds_median": statistics.median(r.train_seconds for r in runs),
        "train_seconds_calibrated": calibrated_seconds(stages, cost, stages[-1]["end_tokens"]) if stages else None,
        "tokens_per_sec_median": statistics.median(r.tokens_per_sec for r in runs),
        "per_seed": per_seed,
        "curve": {"tokens": tokens, "seconds": secs, "val_loss": [finite(x) for x in losses]},
        "seed_curves": [{"seed": r.seed, "tokens": r.tokens, "seconds": r.seconds,
                         "val_loss": [finite(x) for x in r.val_loss]} for r in runs],
        "stages": stages,
    }


@dataclass
class SeedComparison:
    """The curriculum against the baseline at one seed: where it first reaches that seed's baseline final loss."""

    seed: int
    """The seed both runs used."""
    target: float | None
    """The baseline's final loss at this seed."""
    tokens_fraction: float | None
    """The curriculum's tokens to the target / the baseline's to it (its first crossing; None: not reached)."""
    speedup_tokens: float | None
    """1 / tokens_fraction."""
    speedup_calibrated: float | None
    """The baseline's calibrated seconds to the target / the curriculum's."""
    final_gap: float | None
    """The curriculum's final loss minus the baseline's (negative: the curriculum ended lower)."""


def at_evaluations(run: RunRecord, keep: Sequence[int]) -> RunRecord:
    """``run``'s curve at the evaluations of indices ``keep`` only."""
    return replace(run, tokens=[run.tokens[i] for i in keep], seconds=[run.seconds[i] for i in keep],
                   val_loss=[run.val_loss[i] for i in keep])


def at_tokens(run: RunRecord, tokens: set[float]) -> RunRecord:
    """``run``'s curve at the evaluations whose token counts are in ``tokens``, and its last one."""
    return at_evaluations(run, [i for i, t in enumerate(run.tokens) if t in tokens or i == len(run.tokens) - 1])


def compare_seeds(base_runs: Sequence[RunRecord], cur_runs: Sequence[RunRecord], base_stages: list[dict],
                  cur_stages: list[dict], cost: dict[tuple[int, int], float]) -> list[SeedComparison]:
    """Seed-paired comparisons (seeds both arms ran)."""
    by_seed = {r.seed: r for r in cur_runs}
    out = []
    for b in base_runs:
        c = by_seed.get(b.seed)
        if c is None:
            continue
        target = b.final_val_loss
        if not math.isfinite(target):
            out.append(SeedComparison(b.seed, None, None, None, None, None))
            continue
        tok, _ = to_target(c.tokens, c.seconds, c.val_loss, target)
        # The baseline's cost to its own final loss, read as the median curve's figures read it (its first
        # crossing: its whole run unless an earlier evaluation already touched that loss).
        base_tokens = to_target(b.tokens, b.seconds, b.val_loss, target)[0] or b.tokens[-1]
        cal_c = calibrated_seconds(cur_stages, cost, tok) if tok else None
        cal_b = calibrated_seconds(base_stages, cost, base_tokens)
        gap = c.final_val_loss - target if math.isfinite(c.final_val_loss) else None
        out.append(SeedComparison(b.seed, target, tok / base_tokens if tok else None,
                                  base_tokens / tok if tok else None,
                                  cal_b / cal_c if cal_c else None, gap))
    return out


def spread(values: Sequence[float | None]) -> dict:
    """Median, min and max of the values that exist, and how many exist."""
    have = [v for v in values if v is not None]
    if not have:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(have), "min": min(have), "max": max(have), "n": len(have)}


def verdict(seeds: Sequence[SeedComparison]) -> str:
    """The comparison in plain words, e.g. "the curriculum reached the baseline's loss after 71% of the
    tokens in 2 of 2 seeds (1.41x fewer tokens, 1.62x less calibrated time)"."""
    n = len(seeds)
    reached = [s for s in seeds if s.tokens_fraction is not None]
    if not n:
        return "no seed has both a curriculum and a baseline run"
    if not reached:
        gaps = [s.final_gap for s in seeds if s.final_gap is not None]
        gap = statistics.median(gaps) if gaps else None
        end = "" if gap is None else (f"; it ended {gap:.3f} above it (median over seeds)" if gap > 0 else
                                      f"; it ended {-gap:.3f} below it only at its very end (median over seeds)")
        return f"the curriculum did not reach the baseline's final loss in any of {n} seed(s){end}"
    frac = statistics.median(s.tokens_fraction for s in reached if s.tokens_fraction is not None)
    fewer = statistics.median(s.speedup_tokens for s in reached if s.speedup_tokens is not None)
    cal = [s.speedup_calibrated for s in reached if s.speedup_calibrated is not None]
    time = f", {statistics.median(cal):.2f}x {'less' if statistics.median(cal) >= 1 else 'MORE'} calibrated " \
           "training time" if cal else ""
    text = (f"the curriculum reached the baseline's final loss after {frac:.0%} of the tokens in {len(reached)} of "
            f"{n} seed(s) ({fewer:.2f}x fewer tokens{time}, median)")
    missed = [s for s in seeds if s.tokens_fraction is None and s.final_gap is not None]
    if missed:
        text += f"; in the other {len(missed)} it ended {statistics.median(s.final_gap for s in missed):.3f} above it"
    return text


def token_lead(curve: dict, reference: dict) -> list[tuple[int, float | None]]:
    """At each evaluation of ``curve`` (a record's JSON curve), how many times fewer tokens it needed than
    ``reference`` to reach the loss it has there: the reference's tokens to that loss (first crossing,
    :func:`curve_to_target`) over the curve's own tokens. None where the reference never reaches that loss in
    its run (the lead is then larger than the reference's whole budget says).

    Read along a run, it shows where a curriculum builds its lead over a baseline and where the baseline wins
    it back: the trend benchmark's question of which stage stops paying as the budget grows (issue 29 §2)."""
    out: list[tuple[int, float | None]] = []
    ref_losses = clean(reference["val_loss"])
    for tokens, loss in zip(curve["tokens"], clean(curve["val_loss"]), strict=True):
        needed, _ = (to_target(reference["tokens"], reference["seconds"], ref_losses, loss) if math.isfinite(loss)
                     else (None, None))
        out.append((int(tokens), None if needed is None or tokens <= 0 else needed / tokens))
    return out
