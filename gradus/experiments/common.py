"""What every experiment shares: the arms' run configs prepared and checked (:class:`Prepared`), their
tasks and runner, their tokenizers trained once, each run's stage plan and progress line, the machine and the
time a report records, and the plot.

``gradus sweep`` (:mod:`~gradus.experiments.sweep`), ``gradus compare`` (:mod:`~gradus.experiments.compare`,
:mod:`~gradus.experiments.compare_budgets`), the curriculum-speedup benchmark
(:mod:`~gradus.experiments.speedup`) and ``benchmarks/`` all build on these, so none of them reaches into
another's module for its plumbing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gradus.config import from_dict
from gradus.curriculum import resolve_schedule
from gradus.errors import ConfigError
from gradus.experiments.analysis import RunRecord
from gradus.experiments.arms import Arm, arm_config, check_arm_count
from gradus.experiments.budget import EVAL_POINTS, reference_seq_len, same_evaluation, scale_to_budget
from gradus.experiments.runner import Runner, Task, beside, cuda_devices


@dataclass
class Prepared:
    """The arms of an experiment with their run configs, checked before anything trains."""

    base: dict
    """The user's resolved config as a mapping."""
    arms: list[Arm]
    """The arms, in order."""
    configs: dict[str, dict]
    """Each arm's run config (budget scaled, shared evaluation), by arm name; seeds are set per task."""
    reference_len: int
    """The evaluation length of every arm."""
    budget: int
    """Training tokens of every run (the stages rounded to whole steps may differ by a step's tokens)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds every arm runs."""


def parse_seeds(text: str | None) -> list[int]:
    """``0,1`` -> [0, 1]."""
    if text is None:
        return [0]
    if not text.strip():
        raise ConfigError(f"--seeds {text!r}: give one or more integers, e.g. --seeds 0,1 (or leave --seeds out for 0)")
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text}: expected comma-separated integers, e.g. --seeds 0,1") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text}: give distinct integers, e.g. --seeds 0,1")
    return seeds


def prepare(base: dict, arms: Sequence[Arm], budget: int | None, seeds: Sequence[int], origin: str,
            eval_points: int = EVAL_POINTS) -> Prepared:
    """Every arm's run config, validated; any problem (a value that fails validation, a budget below one
    step of some stage) is a ConfigError before anything trains."""
    check_arm_count(arms)
    ref_len = reference_seq_len(base)
    configs = {}
    for arm in arms:
        raw = arm_config(base, arm, origin)
        try:
            raw = scale_to_budget(raw, budget, origin=f"arm {arm.name}")
        except ConfigError as err:
            raise ConfigError(*[f"arm {arm.name!r}: {p}" for p in err.problems]) from None
        raw = same_evaluation(raw, ref_len, eval_points)
        arm_config(raw, Arm(arm.name), origin)  # validated again as it will run
        configs[arm.name] = raw
    totals = [c["curriculum"]["target_tokens"] for c in configs.values()]
    return Prepared(base, list(arms), configs, ref_len, int(statistics.median(totals)), list(seeds))


def prepare_tokenizers(prepared: Prepared, log: Callable[[str], None]) -> None:
    """Load (and, for a trained BPE, train and cache) each distinct tokenizer once, before the arms start,
    so that parallel runs do not all train the same one (and a data problem shows before anything trains)."""
    from gradus.data import load_tokenizer

    seen = set()
    for raw in prepared.configs.values():
        data = raw["data"]
        key = json.dumps({"sources": data["sources"], "tokenizer": data.get("tokenizer"),
                          "validation": data.get("validation")}, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        # load_tokenizer says so in one line when it trains a BPE (once: later calls read its cache, quietly).
        load_tokenizer(from_dict(raw).data, log=log)


def tasks_for(prepared: Prepared, out: Path, name: str, lr: float | None = None) -> list[Task]:
    """One task per seed of an arm, each in ``out/arms/<arm>/seed<k>``."""
    arm = next(a for a in prepared.arms if a.name == name)
    tasks = []
    for seed in prepared.seeds:
        raw = json.loads(json.dumps(prepared.configs[name]))
        raw.setdefault("train", {})["seed"] = seed
        if lr is not None:
            raw.setdefault("optim", {})["base_lr"] = lr
        lr_tag = f"-lr{lr:g}" if lr is not None else ""
        tasks.append(Task(name, float(raw.get("optim", {}).get("base_lr", 6e-4)), seed, raw,
                          out / "arms" / arm.slug / f"seed{seed}{lr_tag}"))
    return tasks


def stage_plan(raw: dict) -> list[dict]:
    """Each stage's shape and token range, from the pure curriculum: what plots mark and the calibrated
    clock weighs."""
    cfg = from_dict(raw)
    base_lr = cfg.optim.base_lr
    return [{"stage": st.name, "seq_len": st.seq_len, "batch_size": st.batch_size,
             "tokens_per_step": st.tokens_per_step, "start_tokens": st.start_tokens, "end_tokens": st.end_tokens,
             "peak_lr_per_unit_base": st.peak_lr / base_lr} for st in resolve_schedule(cfg).stages]


def make_runner(prepared: Prepared, jobs: int | None, threads: int, log: Callable[[str], None],
                out: Path | None = None) -> Runner:
    """A runner over the GPUs when there are several, else ``jobs`` CPU processes (default: one per core);
    ``out``, the folder of the run directories, is locked while it runs."""
    devices = cuda_devices(next(iter(prepared.configs.values())))
    devices = devices if len(devices) > 1 else []
    if jobs is None:
        jobs = len(devices) if devices else (os.cpu_count() or 1)
    return Runner(jobs=jobs, threads=threads, devices=devices, log=log, folder=out)


def describe_run(run: RunRecord) -> str:
    """One progress line per finished run."""
    final = f"{run.final_val_loss:.4f}" if math.isfinite(run.final_val_loss) else f"no final loss ({run.diverged})"
    extra = f", {run.guard_events} guard events" if run.guard_events else ""
    reused = " (read back)" if run.reused else ""
    return (f"  {run.arm:<24} lr {run.lr:<8g} seed {run.seed}: final val loss {final}, {run.train_seconds:.0f}s "
            f"training ({run.tokens_per_sec:,.0f} tok/s){extra}{reused}")


def runs_key(run_dirs: Sequence[str | Path]) -> str:
    """Which runs a summary was made from: a short hash of each run's folder name and config (``arm.yaml``),
    so a summary written again from the same runs (a rerun, a resumed or re-priced comparison) has the same
    key and one made from other runs (another budget, seeds or setting) has another."""
    digest = hashlib.sha256()
    for run_dir in sorted({str(d) for d in run_dirs}):
        path = Path(run_dir)
        arm_yaml = path / "arm.yaml"
        digest.update(path.name.encode("utf-8") + b"\0")
        digest.update(arm_yaml.read_bytes() if arm_yaml.is_file() else b"")
        digest.update(b"\0")
    return digest.hexdigest()[:8]


def summaries_key(keys: Sequence[str]) -> str:
    """The key of a summary of summaries (``gradus compare --budgets``): a short hash of their keys, in order."""
    return hashlib.sha256("\0".join(keys).encode("utf-8")).hexdigest()[:8]


def write_summary(out: Path, name: str, report: dict, key: str, log: Callable[[str], None]) -> Path:
    """Write ``out/<name>.json`` (``report``, given ``runs_key`` = ``key``), keeping an earlier summary of other
    runs: a rerun on the same ``--out`` with another budget or setting keeps the earlier runs beside
    (:meth:`Runner.prepare_dir`), and their summary (the JSON and its PNG) is kept beside them the same way,
    as ``<name>@<its key>.json`` / ``.png``, so nothing a user saw is lost. Returns the path written."""
    path = out / f"{name}.json"
    out.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = None
        earlier_key = earlier.get("runs_key") if isinstance(earlier, dict) else None
        if earlier_key != key:
            kept = beside(path, earlier_key or hashlib.sha256(path.read_bytes()).hexdigest()[:8])
            os.replace(path, kept)
            png = out / f"{name}.png"
            if png.is_file():
                os.replace(png, kept.with_suffix(".png"))
            log(f"{path} held the summary of other runs: kept as {kept}")
    report["runs_key"] = key
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return path


def machine() -> dict:
    """What the figures were measured on (CPU model, cores, GPUs, torch, Python)."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    where = f"{len(gpus)}× {gpus[0]}" if gpus else f"{cores}-core {cpu} CPU"
    return {"cpu": cpu, "cores": cores, "gpus": gpus, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "summary": f"{where}, torch {torch.__version__}"}


def now() -> str:
    """The local time with its offset, to the second."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def or_dash(x: float | None, fmt: str, dash: str = "—") -> str:
    """``x`` in format ``fmt`` ('.4f'), or ``dash`` where there is no figure (a run that diverged, a target
    never reached): the cells of the experiments' tables."""
    return format(x, fmt) if x is not None else dash


def write_plot(records: Sequence[dict], path: Path, title: str, target: float | None, log: Callable[[str], None],
               **kwargs) -> None:
    """The PNG, or a line saying why there is none."""
    try:
        from gradus.experiments.plots import plot_curves

        plot_curves(records, path, title, target=target, **kwargs)
        log(f"wrote {path}")
    except ImportError:
        log("matplotlib is not installed: no PNG (pip install matplotlib)")
