"""Calibrated seconds: what a token costs at each stage shape (sequence length × tokens per step), so that an
experiment's wall-clock speedups do not depend on what else the machine was doing while each run trained.

Two methods:

* ``measured`` (the default of ``gradus compare`` and ``gradus sweep``): once every run has finished, this
  process builds each arm's model and AdamW through the trainer's own builder
  (:func:`gradus.train.build.build_training_parts`) and times the trainer's own optimizer step
  (:func:`gradus.train.step.optimizer_step`: forward and backward over the micro-batches the runs used,
  clip, AdamW) at every shape the arms train: a few warm-up steps each, then rounds in a rotating order, so
  that the machine's load falls on every shape alike. In a round each shape runs a few steps back to back,
  as training does, timed together (about as long as the slowest shape's one step, so a 30 ms shape is not
  timed on 30 ms alone); the rounds go on while the measurement has spent less than its time budget
  (:func:`time_budget`: 5% of the experiment's training time, at most :data:`MAX_SECONDS`), from
  :data:`MIN_ROUNDS` to :data:`MAX_ROUNDS`. Each shape's seconds per token is the lower decile
  (:data:`QUANTILE`) of its rounds / its tokens per step. Seven single steps per shape and their median, the
  first method, moved a shape's figure by up to 25% between quiet measurements of the same runs on a shared
  box; with the budget, the back-to-back steps and the decile, six measurements of the same shapes over 40
  minutes priced the same runs within 3.0% (BENCHMARKS.md, "Calibrated seconds: stability"). A low quantile,
  not the median or a mean, because interference only ever slows a step, and the box slows in spells of
  minutes that do not slow every shape alike (short shapes 18%, long ones 8%): the same six measurements
  spread 8.6% by the median and 7.5% by the quartile. As ``timeit`` takes the best of its repeats, each an
  average of loops; the decile rather than the minimum, so that one lucky round does not decide. Nothing of a run's history (a resume, a neighbour that finished early, a
  cold data pipeline) enters it, and it is cached in the experiment's folder (:data:`CACHE`), keyed by the
  shapes, the model, the device and :data:`MEASUREMENT`, so a rerun or a resumed experiment reads the same
  figures back instead of measuring again.
* ``windows`` (the old estimate, kept for the benchmark series recorded with it): the inverse of the
  90th-percentile throughput of each shape's logging windows over every run
  (:func:`gradus.experiments.analysis.calibrate`). It depends on the runs' history: a 100k-token demo compare
  logs every step, so a shape has one to a dozen single-step windows, the percentile is then their maximum,
  and the few steps a run trains alone after its neighbour finished (2-3× faster on a 2-core box) or the cold
  first step after a resume decide it (BENCHMARKS.md, "Calibrated seconds: stability").
"""

from __future__ import annotations

import copy
import datetime as dt
import gc
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gradus.errors import ConfigError
from gradus.experiments.analysis import CALIBRATION_PERCENTILE, RunRecord, calibrate, read_records

METHODS = ("measured", "windows")
"""The ways calibrated seconds can be obtained (see the module docstring)."""
CACHE = "calibration.json"
"""The file, in an experiment's folder, that keeps measured calibrations by key."""
WARMUP_STEPS = 3
"""Untimed steps per shape before the rounds (allocations, kernels, torch.compile's graphs)."""
MIN_ROUNDS = 7
"""Timed rounds every measurement makes, whatever its time budget."""
MAX_ROUNDS = 200
"""Timed rounds no measurement exceeds, whatever its time budget."""
MAX_SECONDS = 90.0
"""The most a measurement spends timing steps (its budget is otherwise 5% of the runs' training time)."""
BUDGET_SHARE = 0.05
"""The share of the experiment's training seconds a measurement may spend timing steps."""
MAX_REPEATS = 8
"""The most steps of one shape timed back to back in a round."""
QUANTILE = 0.1
"""Which quantile of a shape's rounds prices it: the lower decile (see the module docstring)."""
MEASUREMENT = "time-budgeted interleaved rounds of back-to-back steps, v2"
"""Names how the rounds are timed, in the cache key: a measurement taken another way (the first method's seven
single steps) is not read back. The statistic (:data:`QUANTILE`) is applied to the cached rounds when they are
priced, so it is not part of the key."""


def shape_label(seq_len: int, tokens_per_step: int) -> str:
    """``256x16``: length 256, 16 rows (the calibration keys of the JSON reports)."""
    return f"{seq_len}x{tokens_per_step // seq_len}"


@dataclass(frozen=True, order=True)
class ShapeSpec:
    """One shape to time: its length, tokens per step and the micro-batch the runs trained it at."""

    seq_len: int
    tokens_per_step: int
    micro_batch: int

    @property
    def batch(self) -> int:
        """Rows per step."""
        return self.tokens_per_step // self.seq_len

    @property
    def key(self) -> tuple[int, int]:
        """(seq_len, tokens per step): how the calibrated clock looks a shape up."""
        return self.seq_len, self.tokens_per_step


@dataclass
class ArmShapes:
    """What one arm needs priced: its run config (any of its runs'; model, device, precision), the stages
    of its table and its finished runs (whose records say the micro-batches they used)."""

    name: str
    config: dict
    stages: list[dict]
    runs: Sequence[RunRecord] = ()


@dataclass
class Calibration:
    """Seconds per token of each shape and how they were obtained."""

    method: str
    """``measured`` or ``windows``."""
    cost: dict[tuple[int, int], float]
    """Seconds per token by (seq_len, tokens per step): what the analysis' ``cost`` arguments take."""
    per_arm: dict[str, dict[tuple[int, int], float]] = field(default_factory=dict)
    """``measured``: each arm's own costs (arms on other models, or micro-batches, are timed apart)."""
    detail: dict = field(default_factory=dict)
    """What the JSON reports add: the windows per shape, or the measurement's settings and step times."""

    def annotate(self, stages_by_arm: dict[str, list[dict]]) -> None:
        """``measured``: write each stage's ``seconds_per_token`` (its arm's) into its stage dict, which
        :func:`gradus.experiments.analysis.calibrated_seconds` prefers to the shared ``cost``."""
        for name, stages in stages_by_arm.items():
            own = self.per_arm.get(name)
            if own is None:
                continue
            for st in stages:
                rate = own.get((st["seq_len"], st["tokens_per_step"]))
                if rate is not None:
                    st["seconds_per_token"] = rate

    def to_json(self) -> dict:
        """``{"method": ..., "seconds_per_token": {"256x16": ...}, ...}`` for the reports."""
        out = {"method": self.method,
               "seconds_per_token": {shape_label(L, tps): v for (L, tps), v in sorted(self.cost.items())}}
        out.update(self.detail)
        return out


def check_method(method: str, flag: str = "--calibration") -> str:
    """``method`` when it is one of :data:`METHODS`, else a one-line ConfigError."""
    if method not in METHODS:
        raise ConfigError(f"{flag} {method}: give {' or '.join(METHODS)}")
    return method


def windows_calibration(runs: Iterable[RunRecord]) -> Calibration:
    """The old estimate: each shape's 90th-percentile window throughput over every run."""
    cost, samples = calibrate(list(runs))
    return Calibration("windows", cost, detail={
        "windows": {shape_label(L, tps): n for (L, tps), n in sorted(samples.items())},
        "percentile": CALIBRATION_PERCENTILE})


def calibrate_arms(method: str, arms: Sequence[ArmShapes], *, out: Path | None, threads: int = 1,
                   log: Callable[[str], None] = print, seconds: float | None = None,
                   warmup: int = WARMUP_STEPS) -> Calibration:
    """The calibration of an experiment's arms by ``method``. ``measured`` reads ``out/calibration.json``
    back when it holds a measurement of the same shapes, model, device and method, else measures (one model
    per distinct model setup, its shapes interleaved) and adds it there; ``threads``: the torch threads each
    run had on CPU (``train.threads`` of the config wins, as in the run); ``seconds``: the measurement's time
    budget (default :func:`time_budget` of the arms' runs)."""
    check_method(method)
    runs = [r for a in arms for r in a.runs]
    if method == "windows":
        return windows_calibration(runs)
    groups: dict[str, tuple[dict, list[ArmShapes], set[ShapeSpec]]] = {}
    for arm in arms:
        setup = measurement_setup(arm.config, threads)
        specs = arm_specs(arm)
        key = json.dumps(setup, sort_keys=True)
        if key not in groups:
            groups[key] = (setup, [], set())
        groups[key][1].append(arm)
        groups[key][2].update(specs)
    cache = read_cache(out / CACHE) if out is not None else {}
    budget = time_budget(runs) if seconds is None else seconds
    per_arm: dict[str, dict[tuple[int, int], float]] = {}
    measurements = []
    for setup, members, specs in groups.values():
        entry_key = {**setup, "shapes": [list(asdict(s).values()) for s in sorted(specs)],
                     "warmup": warmup, "measurement": MEASUREMENT}
        digest = hashlib.sha256(json.dumps(entry_key, sort_keys=True).encode()).hexdigest()[:16]
        entry = cache.get(digest)
        labels = ", ".join(f"{shape_label(s.seq_len, s.tokens_per_step)} (micro {s.micro_batch})" for s in sorted(specs))
        if entry is not None:
            log(f"calibration: read back from {out / CACHE} (measured {entry['date']}): {labels}")
        else:
            log(f"calibration: timing the optimizer step at {labels}: {warmup} warm-up step(s) each, then "
                f"interleaved rounds for up to {budget:.0f} s ({MIN_ROUNDS} to {MAX_ROUNDS}; each shape's "
                f"lower decile)")
            cfg = members[0].config
            t0 = time.perf_counter()
            times = measure_step_seconds(cfg, sorted(specs), threads=setup["threads"], warmup=warmup,
                                         seconds=budget)
            entry = {"key": entry_key, "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "seconds": time.perf_counter() - t0, "load_average": _load(),
                     "step_seconds": {_spec_label(s): ts for s, ts in times.items()}}
            cache[digest] = entry
            if out is not None:
                write_cache(out / CACHE, cache)
        busy = busy_note(entry.get("load_average"), setup.get("threads"))
        if busy:
            log(f"calibration: {busy}; delete {out / CACHE if out is not None else 'the cached measurement'} "
                "and rerun on a quieter machine for figures to rely on")
        step_seconds = entry["step_seconds"]
        for arm in members:  # each shape's seconds per token, over the micro-batches its steps ran at
            per_arm[arm.name] = {key: sum(w * low_quantile(step_seconds[_spec_label(s)]) / s.tokens_per_step
                                          for s, w in mix)
                                 for key, mix in arm_mix(arm).items()}
        measurements.append({"id": digest, "date": entry["date"], "seconds": entry["seconds"],
                             "load_average": entry["load_average"], "arms": [a.name for a in members],
                             "setup": setup, "step_seconds": step_seconds})
    cost: dict[tuple[int, int], float] = {}
    for arm in arms:  # the shared table: the first arm's figure of a shape (they agree unless the models differ)
        for shape, rate in per_arm[arm.name].items():
            cost.setdefault(shape, rate)
    return Calibration("measured", cost, per_arm, detail={
        "statistic": f"quantile {QUANTILE:g} of {MEASUREMENT}, after {warmup} warm-up step(s) per shape",
        "cache": str(out / CACHE) if out is not None else None, "measurements": measurements})


def busy_note(load_average: float | None, threads: int | None) -> str | None:
    """Why a measurement may not be the machine's own cost, or None: while it ran, the 1-minute load average
    exceeded the CPUs minus the measuring process's threads, i.e. other work competed for its cores. Each
    shape's rounds then carry their noise (on the 2-core box at load 12.8 the same step ranged from
    0.04 to 1.04 s over seven rounds), and calibrated figures move with it."""
    cpus = os.cpu_count() or 1
    if load_average is None or load_average <= cpus:
        return None
    return (f"measured at load {load_average:.1f} on {cpus} CPU(s) (other processes shared the cores "
            f"the measurement's {threads or 1} thread(s) ran on)")


def time_budget(runs: Iterable[RunRecord]) -> float:
    """Seconds a measurement may spend timing steps: :data:`BUDGET_SHARE` of the runs' training seconds, at
    most :data:`MAX_SECONDS` (a demo compare's two-minute runs get a few seconds, i.e. :data:`MIN_ROUNDS`
    rounds; a benchmark point's hours get the whole budget)."""
    return min(MAX_SECONDS, BUDGET_SHARE * sum(r.train_seconds for r in runs))


def low_quantile(values: Sequence[float], q: float = QUANTILE) -> float:
    """The ``q`` quantile of ``values``, interpolated linearly between the two nearest of them (the
    definition of numpy's default; ``statistics.quantiles`` needs two values and excludes the ends)."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * q
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def _spec_label(spec: ShapeSpec) -> str:
    return f"{shape_label(spec.seq_len, spec.tokens_per_step)}/micro{spec.micro_batch}"


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def measurement_setup(raw: dict, threads: int) -> dict:
    """What a step's cost depends on besides its shape: the model (resolved with the tokenizer's vocabulary),
    device, precision, compile, the noise-scale hooks, AdamW's kernel, the torch threads, torch itself."""
    import torch

    from gradus.config import from_dict
    from gradus.data import load_tokenizer
    from gradus.model import resolve_shape
    from gradus.train.runtime import setup_runtime

    cfg = from_dict(copy.deepcopy(raw), origin="calibration")
    shape = resolve_shape(cfg.model, load_tokenizer(cfg.data).vocab_size)
    rt = setup_runtime(cfg.train)
    if rt.device.type == "cuda":
        where = torch.cuda.get_device_name(rt.device)
    else:
        from gradus.experiments.common import machine  # (here: common is heavier than this module needs)

        where = machine()["cpu"] or "cpu"
    return {"model": asdict(shape), "device": f"{rt.device.type}: {where}", "precision": rt.precision,
            "compile": cfg.train.compile, "noise_scale": cfg.train.noise_scale.enabled, "fused": cfg.optim.fused,
            "threads": (cfg.train.threads or threads) if rt.device.type == "cpu" else None,
            "torch": torch.__version__}


def arm_specs(arm: ArmShapes) -> set[ShapeSpec]:
    """Every (shape, micro-batch) an arm trains at: the specs of :func:`arm_mix`."""
    return {spec for mix in arm_mix(arm).values() for spec, _ in mix}


def arm_mix(arm: ArmShapes) -> dict[tuple[int, int], list[tuple[ShapeSpec, float]]]:
    """Every shape an arm trains (its table's and any its runs logged, e.g. an adaptive run's doubled
    batches) -> the micro-batches its steps run at there, each with its share of the steps. One, the
    micro-batch its runs used (:func:`micro_batches_seen`; a shape no run recorded gets the one the trainer
    would plan, :func:`planned_micro_batch`); with ``train.noise_scale.every`` = k and its ``micro_batches``,
    the split one on 1 step in k (those that measure) and the unsplit one on the others, so the calibrated
    clock charges the measurement what it costs."""
    shapes = {(st["seq_len"], st["tokens_per_step"]) for st in arm.stages}
    shapes |= {(L, tps) for r in arm.runs for L, tps, _ in r.windows}
    seen = micro_batches_seen(arm.runs)
    every, splits = _noise_every(arm.config)
    out: dict[tuple[int, int], list[tuple[ShapeSpec, float]]] = {}
    for L, tps in shapes:
        got = seen.get((L, tps), set())
        if every > 1 and splits > 1:
            # Both micro-batches from the records only when they name two: a run logs every log_every-th step,
            # which may be only ever measured steps or only ever unmeasured ones (log_every even, every 2).
            if len(got) > 1:
                split, plain = min(got), max(got)
            else:
                split = planned_micro_batch(arm.config, L, tps)
                plain = planned_micro_batch(arm.config, L, tps, split=False)
            mix = ([(ShapeSpec(L, tps, split), 1.0 / every), (ShapeSpec(L, tps, plain), 1.0 - 1.0 / every)]
                   if plain != split else [(ShapeSpec(L, tps, split), 1.0)])
        else:
            mix = [(ShapeSpec(L, tps, min(got) if got else planned_micro_batch(arm.config, L, tps)), 1.0)]
        out[(L, tps)] = mix
    return out


def _noise_every(raw: dict) -> tuple[int, int]:
    """(``train.noise_scale.every``, the micro-batches its split asks for on one process) of a run config."""
    from gradus.config import from_dict
    from gradus.train.micro_batch import noise_splits

    cfg = from_dict(copy.deepcopy(raw), origin="calibration")
    return (cfg.train.noise_scale.every if cfg.train.noise_scale.enabled else 1), noise_splits(cfg.train, 1)


def micro_batches_seen(runs: Iterable[RunRecord]) -> dict[tuple[int, int], set[int]]:
    """(seq_len, tokens per step) -> every micro-batch the runs' step records name: the record's own list
    (:attr:`RunRecord.micro_batches`), else read from its run directory's metrics.jsonl (a record written
    before the list was kept)."""
    from gradus.train.storage.run_dir import RunDir

    out: dict[tuple[int, int], set[int]] = {}
    for run in runs:
        if run.micro_batches:
            for L, tps, micro in run.micro_batches:
                out.setdefault((L, tps), set()).add(micro)
            continue
        if not run.run_dir:
            continue
        path = RunDir(Path(run.run_dir)).metrics
        if not path.is_file():
            continue
        for r in read_records(path):
            if "curriculum/micro_batch_size" in r and "event" not in r:
                key = (int(r["curriculum/current_seq_len"]), int(r["curriculum/tokens_per_step"]))
                out.setdefault(key, set()).add(int(r["curriculum/micro_batch_size"]))
    return out


def planned_micro_batch(raw: dict, seq_len: int, tokens_per_step: int, *, split: bool = True) -> int:
    """The micro-batch the trainer starts a shape from (``train.micro_batch_size``, ``train.noise_scale``'s
    micro-batches unless ``split`` is False, or the whole batch; on CPU, the largest that fits the host's
    memory, :func:`gradus.train.micro_batch.host_micro_batch`). On a
    GPU the trainer may halve it further on out-of-memory; runs that trained say what they used instead."""
    from gradus.config import from_dict
    from gradus.data import load_tokenizer
    from gradus.model import resolve_shape
    from gradus.train.micro_batch import configured_micro_batch, host_micro_batch, noise_splits
    from gradus.train.runtime import host_memory_budget

    cfg = from_dict(copy.deepcopy(raw), origin="calibration")
    micro = configured_micro_batch(tokens_per_step // seq_len, cfg.train.micro_batch_size,
                                   noise_splits(cfg.train, 1) if split else 1)
    if str(cfg.train.device).startswith("cuda"):
        return micro
    shape = resolve_shape(cfg.model, load_tokenizer(cfg.data).vocab_size)
    precision = "fp32" if cfg.train.precision == "auto" else cfg.train.precision
    return host_micro_batch(shape, seq_len, micro, precision, host_memory_budget()) or 1


def measure_step_seconds(raw: dict, specs: Sequence[ShapeSpec], *, threads: int | None, warmup: int = WARMUP_STEPS,
                         rounds: int = MIN_ROUNDS, seconds: float = 0.0,
                         max_rounds: int = MAX_ROUNDS) -> dict[ShapeSpec, list[float]]:
    """Seconds per optimizer step of each shape, one figure per round, in this process: the model and AdamW
    of the run config ``raw`` built by the trainer's builder, the trainer's step function at each shape's
    micro-batch on random tokens (LR 0, so every round steps the same weights). ``warmup`` untimed steps per
    shape first; then rounds, the shapes' order rotated each round, in which each shape runs a few steps back
    to back (about the slowest shape's warm-up step over its own, at most :data:`MAX_REPEATS`) timed together:
    at least ``rounds`` rounds, and more while the timed seconds are below ``seconds``, at most
    ``max_rounds``. ``threads``: torch's intra-op threads meanwhile (restored after)."""
    import torch

    from gradus.config import from_dict
    from gradus.data import load_tokenizer
    from gradus.model import resolve_shape
    from gradus.train.build import build_training_parts, wrap_for_training
    from gradus.train.noise_scale import MicroBatchNorms
    from gradus.train.runtime import set_threads, setup_runtime
    from gradus.train.step import optimizer_step

    if rounds < 1 or warmup < 0 or max_rounds < rounds or not specs:
        raise ValueError("1 ≤ rounds ≤ max_rounds, warmup ≥ 0 and at least one shape are required")
    cfg = from_dict(copy.deepcopy(raw), origin="calibration")
    shape = resolve_shape(cfg.model, load_tokenizer(cfg.data).vocab_size)
    rt = setup_runtime(cfg.train)
    before = set_threads(threads)
    try:
        parts = build_training_parts(shape, cfg.optim, rt.device, rt.precision, cfg.train.seed)
        parts.model.train()
        net, _ = wrap_for_training(parts.model, rt, cfg.train.compile)
        gen = torch.Generator().manual_seed(cfg.train.seed)
        batches = {}
        for s in specs:
            tokens = torch.randint(0, shape.vocab_size, (s.batch, s.seq_len + 1), generator=gen)
            batches[s] = (tokens[:, :-1].contiguous().to(rt.device), tokens[:, 1:].contiguous().to(rt.device))
        # The run's noise-scale hooks, built once as build_run builds them (registered at the first step).
        hooks = MicroBatchNorms(parts.model.parameters()) if cfg.train.noise_scale.enabled else None

        def steps(s: ShapeSpec, n: int = 1) -> float:
            """Seconds of ``n`` back-to-back steps at ``s``."""
            inputs, labels = batches[s]
            if rt.device.type == "cuda":
                torch.cuda.synchronize(rt.device)
            t0 = time.perf_counter()
            for _ in range(n):
                optimizer_step(net, parts.model, parts.optimizer, parts.scaler, inputs, labels, lr=0.0, clip=1.0,
                               micro=s.micro_batch, rt=rt, noise_hooks=hooks)
            if rt.device.type == "cuda":
                torch.cuda.synchronize(rt.device)
            return time.perf_counter() - t0

        last = {s: min(steps(s) for _ in range(warmup)) if warmup else 0.0 for s in specs}
        slowest = max(last.values())
        # A fast shape's step is a few tens of ms on a CPU, where the box's own jitter is ±30% per step;
        # timing several together makes each shape's figure span about as long as the slowest shape's.
        repeats = {s: min(MAX_REPEATS, max(1, round(slowest / last[s]))) if last[s] > 0 else 1 for s in specs}
        times: dict[ShapeSpec, list[float]] = {s: [] for s in specs}
        timed = 0.0
        r = 0
        while r < rounds or (timed < seconds and r < max_rounds):
            for i in range(len(specs)):
                s = specs[(r + i) % len(specs)]
                took = steps(s, repeats[s])
                timed += took
                times[s].append(took / repeats[s])
            r += 1
        return times
    finally:
        set_threads(before)
        parts = net = batches = hooks = None  # noqa: F841 (freed before the caller goes on)
        gc.collect()
        if rt.device.type == "cuda":
            torch.cuda.empty_cache()


def read_cache(path: Path) -> dict:
    """The measurements kept in ``path`` by key ({} when there is none or it cannot be read)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data.get("measurements", {}) if isinstance(data, dict) else {}


def write_cache(path: Path, measurements: dict) -> None:
    """Write the measurements (atomically: a kill meanwhile leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"about": "gradus calibrated seconds: optimizer-step times per shape, by key "
                                        "(gradus.experiments.calibration)", "measurements": measurements},
                              indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
