"""A run's history as plain series, read from ``metrics.jsonl`` (and ``config.yaml`` for stage names).

Pure Python: no torch, no matplotlib. Records are what the trainer writes: step records (``step``,
``tokens``, ``loss``, ``lr``, ``tokens_per_sec``, ``time/train_seconds``, ``curriculum/*``), evaluation
records (``val/loss`` at the reference length, ``val/stage_loss`` at the stage's own length, and any
``val/<source>/loss`` per source) and events (``{"event": "stage", ...}``). A resumed run appends to the
file, so a step can appear twice; the later record wins (it is the one the final weights descend from).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradus.errors import ConfigError
from gradus.train.storage.run_dir import RunDir

_SOURCE_VAL = re.compile(r"^val/(?:source/|sources/|by_source/)?([^/]+)/loss$")
"""Per-source validation keys: ``val/<name>/loss`` (or ``val/source/<name>/loss``)."""
_NOT_SOURCES = {"stage", "ref", "reference"}


@dataclass
class Stage:
    """One stage as it ran: where it started and ended, and its shape."""

    index: int
    name: str
    seq_len: int | None
    batch_size: int | None
    start_step: int
    start_tokens: float
    end_step: int = 0
    end_tokens: float = 0.0
    start_seconds: float = 0.0
    end_seconds: float = 0.0

    @property
    def label(self) -> str:
        """Short label for plots: the name and the sequence length."""
        return f"{self.name} ({self.seq_len})" if self.seq_len and str(self.seq_len) not in self.name else self.name


@dataclass
class History:
    """Everything the report draws."""

    run_dir: Path
    steps: list[dict[str, Any]] = field(default_factory=list)
    """Training step records, by step, one per step."""
    evals: list[dict[str, Any]] = field(default_factory=list)
    """Evaluation records, by step, one per step."""
    stages: list[Stage] = field(default_factory=list)
    """Stages in the order they ran."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """Other events (resume, guard, ...), in file order."""
    name: str = ""
    """The run's name (config ``name``, else the folder's)."""

    def series(self, key: str, x: str = "tokens", records: list[dict] | None = None) -> tuple[list[float], list[float]]:
        """(xs, ys) of the records that have a finite ``key``; ``x`` is tokens, step or seconds."""
        xs, ys = [], []
        for r in self.steps if records is None else records:
            y = r.get(key)
            xv = r.get("time/train_seconds") if x == "seconds" else r.get(x)
            if isinstance(y, (int, float)) and math.isfinite(y) and isinstance(xv, (int, float)):
                xs.append(float(xv))
                ys.append(float(y))
        return xs, ys

    def source_names(self) -> list[str]:
        """Sources with their own validation loss in the evaluation records."""
        names: list[str] = []
        for r in self.evals:
            for k in r:
                m = _SOURCE_VAL.match(k)
                if m and m.group(1) not in _NOT_SOURCES and m.group(1) not in names:
                    names.append(m.group(1))
        return names

    def source_key(self, name: str) -> str:
        """The record key holding source ``name``'s validation loss."""
        for r in self.evals:
            for k in r:
                m = _SOURCE_VAL.match(k)
                if m and m.group(1) == name:
                    return k
        return f"val/{name}/loss"

    def decisions(self) -> list[dict[str, Any]]:
        """An adaptive run's decision records (``{"event": "adaptive", ...}``), in order; empty otherwise."""
        return [e for e in self.events if e.get("event") == "adaptive"]

    def stage_of_step(self, step: int) -> Stage | None:
        """The stage running at ``step``."""
        found = None
        for s in self.stages:
            if s.start_step <= step:
                found = s
        return found


def smooth(values: list[float], weight: float) -> list[float]:
    """A centred moving average whose half-width follows ``weight`` as TensorBoard's EMA weight does
    (half-width ≈ weight / (1 − weight): 0 = no smoothing, 0.6 → 2 points each side, 0.99 → 99), the window
    shrinking symmetrically at both ends. Why not TensorBoard's EMA: an EMA lags a falling curve, so at the end
    of a run, where the loss still falls fastest in tokens, its last value sat well above the losses it
    smoothed (0.6 nats on a short run); a centred window has no lag, and its last point is the last value."""
    if not 0 <= weight < 1:
        raise ConfigError(f"--smooth={weight}: must be in [0, 1)")
    half = round(weight / (1 - weight))
    n = len(values)
    out = []
    for i in range(n):
        h = min(half, i, n - 1 - i)
        window = values[i - h : i + h + 1]
        out.append(sum(window) / len(window))
    return out


def read_history(run_dir: str | Path) -> History:
    """Read ``RUN/metrics.jsonl`` into a :class:`History`. A folder without one is a one-line
    ConfigError; unreadable lines (a crash mid-write) are skipped."""
    run = Path(run_dir)
    path = RunDir(run).metrics
    if not path.is_file():
        what = "not a gradus run" if not RunDir(run).config.is_file() else "the run has logged nothing yet"
        raise ConfigError(f"{run}: no metrics.jsonl ({what}); give a run directory written by gradus train")
    steps: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    stage_events: list[dict] = []
    events: list[dict] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        if "event" in rec:
            (stage_events if rec["event"] == "stage" else events).append(rec)
        elif "val/loss" in rec or any(k.startswith("val/") for k in rec):
            evals[int(rec.get("step", 0))] = rec
        elif "loss" in rec and "step" in rec:
            steps[int(rec["step"])] = rec
    h = History(run_dir=run, steps=[steps[k] for k in sorted(steps)], evals=[evals[k] for k in sorted(evals)],
                events=events, name=_run_name(run))
    if not h.steps and not h.evals:
        raise ConfigError(f"{path}: no training records yet; train longer (records come every logging.log_every steps)")
    h.stages = _stages(h, stage_events)
    return h


def _run_name(run: Path) -> str:
    cfg = RunDir(run).config
    if cfg.is_file():
        try:
            import yaml

            name = (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("name")
            if name:
                return f"{name} ({run.name})" if name != run.name else name
        except Exception:  # noqa: BLE001 - the name is cosmetic
            pass
    return run.name


def _stages(h: History, events: list[dict]) -> list[Stage]:
    """Stages from the stage events (the last event for a stage index wins after a resume), closed at
    the next stage's start or the last record; times interpolated from the step records."""
    by_index: dict[int, dict] = {}
    for e in events:
        by_index[int(e.get("curriculum/stage", e.get("stage", len(by_index))))] = e
    if not by_index and h.steps:  # an old log without events: derive stages from the step records
        for r in h.steps:
            k = int(r.get("curriculum/stage", 0))
            by_index.setdefault(k, {"step": r["step"], "tokens": r.get("tokens", 0),
                                    "seq_len": r.get("curriculum/current_seq_len"),
                                    "batch_size": r.get("curriculum/current_batch_size")})
    stages = [
        Stage(index=k, name=str(e.get("name") or f"stage {k}"), seq_len=e.get("seq_len"),
              batch_size=e.get("batch_size"), start_step=int(e.get("step", 0)), start_tokens=float(e.get("tokens", 0)))
        for k, e in sorted(by_index.items())
    ]
    last = h.steps[-1] if h.steps else h.evals[-1]
    for a, b in zip(stages, stages[1:] + [None], strict=False):
        a.end_step = b.start_step if b else int(last.get("step", a.start_step))
        a.end_tokens = b.start_tokens if b else float(last.get("tokens", a.start_tokens))
    for s in stages:
        s.start_seconds = _seconds_at(h, s.start_step)
        s.end_seconds = _seconds_at(h, s.end_step)
    return stages


def _seconds_at(h: History, step: int) -> float:
    """Training seconds at ``step``, interpolated linearly between step records (0 at step 0)."""
    xs, ys = h.series("time/train_seconds", x="step")
    xs, ys = [0.0] + xs, [0.0] + ys
    if step >= xs[-1]:
        return ys[-1]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True), strict=False):
        if x0 <= step <= x1:
            return y0 + (y1 - y0) * (step - x0) / (x1 - x0 or 1)
    return 0.0


def stage_summary(h: History) -> list[dict[str, Any]]:
    """One row per stage: shape, steps, tokens, seconds, median tokens/s, last smoothed train loss and
    the last validation losses inside the stage."""
    import statistics

    rows = []
    for s in h.stages:
        inside = [r for r in h.steps if s.start_step < r["step"] <= s.end_step]
        tps = [r["tokens_per_sec"] for r in inside if isinstance(r.get("tokens_per_sec"), (int, float))]
        evals = [r for r in h.evals if s.start_step < r.get("step", -1) <= s.end_step]
        last_eval = evals[-1] if evals else {}
        rows.append({
            "stage": s.index, "name": s.name, "seq_len": s.seq_len, "batch_size": s.batch_size,
            "steps": s.end_step - s.start_step, "tokens": s.end_tokens - s.start_tokens,
            "seconds": s.end_seconds - s.start_seconds,
            # The median: a stage's first record carries compile / warm-up time and would skew a mean.
            "tokens_per_sec": statistics.median(tps) if tps else None,
            "train_loss": inside[-1].get("loss_avg", inside[-1].get("loss")) if inside else None,
            "val_loss": last_eval.get("val/loss"), "val_seq_len": last_eval.get("val/seq_len"),
            "val_stage_loss": last_eval.get("val/stage_loss"),
        })
    return rows
