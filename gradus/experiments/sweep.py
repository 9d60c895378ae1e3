"""``gradus sweep``: every arm through the real trainer at the same budget and evaluation, then a table, a
JSON report and a PNG of the validation curves. The pieces ``gradus compare`` shares live here too
(preparing the arms' configs, running them, stage plans, machine description)."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gradus.config import GradusConfig, dump_yaml, from_dict, to_dict
from gradus.curriculum import resolve_schedule
from gradus.errors import ConfigError
from gradus.experiments.analysis import RunRecord, finite, summarise_runs
from gradus.experiments.arms import Arm, ablation_arms, arm_config, check_arm_count, vary_arms
from gradus.experiments.budget import EVAL_POINTS, reference_seq_len, same_evaluation, scale_to_budget
from gradus.experiments.calibration import (
    ArmShapes,
    Calibration,
    calibrate_arms,
    check_method,
    windows_calibration,
)
from gradus.experiments.runner import Runner, Task, cuda_devices
from gradus.units import format_count


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
    if not text:
        return [0]
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
        cfg = from_dict(raw)
        if cfg.data.tokenizer.train_vocab_size:
            log(f"preparing the BPE tokenizer ({cfg.data.tokenizer.train_vocab_size:,} tokens; cached after the "
                "first time)")
        load_tokenizer(cfg.data)


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


def _num(x: float | None, fmt: str, dash: str = "—") -> str:
    return format(x, fmt) if x is not None else dash


def sweep_table(report: dict) -> str:
    """The table ``gradus sweep`` prints."""
    target = report["target"]
    n = len(report["seeds"])
    lines = [f"{'arm':<22} {'final val loss':>15} {'best':>7} {'tokens→target':>13} {'s→target':>9} "
             f"{'tok/s':>7}  note"]
    for rec in report["arms"]:
        mark = "*" if rec["name"] == report["winner"] else " "
        final = _num(rec["final_val_loss"], ".4f", "diverged")
        if n > 1 and rec["final_val_loss_spread"] is not None:
            final += f" ±{rec['final_val_loss_spread'] / 2:.3f}"
        tok = f"{rec['tokens_to_target'] / 1e3:,.0f}k" if rec["tokens_to_target"] else "not reached"
        short = rec.get("description") if len(rec.get("description") or "") <= 40 else ""
        note = "; ".join(x for x in (short, rec.get("note"), "as configured" if rec.get("reference") else "") if x)
        lines.append(f"{mark}{rec['name']:<21} {final:>15} {_num(rec['best_val_loss'], '.4f'):>7} {tok:>13} "
                     f"{_num(rec['seconds_to_target'], '.0f'):>9} {rec['tokens_per_sec_median']:>7,.0f}  {note}")
    seeds = f"median of {n} seeds (± half the range)" if n > 1 else "one seed"
    lines.append(f"final val loss: at length {report['reference_len']} on the same held-out documents, {seeds}; "
                 f"target {target:.4f} = {report['target_from']}")
    lines.append("tokens→target, s→target: where the median curve first reaches the target (training seconds, "
                 "evaluation excluded; they depend on the machine's load)")
    lines.append(f"* best: {report['winner']} (lowest final val loss)"
                 + ("; with one seed a small difference may be run-to-run noise (--seeds 0,1,2 shows the spread)"
                    if n == 1 else ""))
    return "\n".join(lines)


def run_sweep(cfg: GradusConfig, *, varies: Sequence[str], ablation: str | None, budget: int | None,
              seeds: Sequence[int], out: Path, jobs: int | None = None, threads: int = 1,
              target: float | None = None, write: Path | None = None, plot: bool = True, origin: str = "config",
              eval_points: int = EVAL_POINTS, calibration: str = "measured",
              log: Callable[[str], None] = print) -> dict:
    """Build, check and run every arm; price the calibrated seconds by ``calibration``
    (:mod:`gradus.experiments.calibration`); print the table; write ``sweep.json``, ``sweep.png`` and
    (``write``) the winner's config. Returns the report."""
    check_method(calibration)
    base = to_dict(cfg)
    if varies and ablation:
        raise ConfigError("give --vary or --ablation, not both (an ablation is a ready-made set of --vary arms)")
    if not varies and not ablation:
        raise ConfigError("nothing to vary: give --vary KEY=V1,V2 (e.g. optim.base_lr=0.5x,1x,1.5x) or "
                          "--ablation lr|seq-vs-batch|mix|depth-width")
    arms = vary_arms(base, varies) if varies else ablation_arms(ablation or "", base)
    prepared = prepare(base, arms, budget, seeds, origin, eval_points)
    if write is not None and write.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--write {write}: give a .yaml file name for the winner's config")
    runner = make_runner(prepared, jobs, threads, log, out)
    log(f"sweep: {len(arms)} arms × {len(prepared.seeds)} seed(s) of {format_count(prepared.budget)} tokens each, "
        f"evaluated every ~{format_count(prepared.budget // eval_points)} tokens at length {prepared.reference_len}; "
        f"{runner.jobs} at a time" + ("" if runner.devices else f", {threads} torch thread(s) each")
        + f"; run directories under {out}/arms (rerun the same command to resume)")
    for arm in arms:
        log(f"  {arm.name}: {arm.description or 'as configured'}" + (f" [{arm.note}]" if arm.note else ""))
    prepare_tokenizers(prepared, log)
    started = now()
    tasks = [t for arm in arms for t in tasks_for(prepared, out, arm.name)]
    records = runner.run(tasks, on_done=lambda r: (log(describe_run(r)), [])[1])
    cal = calibrate_arms(calibration, [ArmShapes(a.name, prepared.configs[a.name], stage_plan(prepared.configs[a.name]),
                                                 [r for r in records if r.arm == a.name]) for a in arms],
                         out=out, threads=threads, log=log)
    report = sweep_report(prepared, records, target, cal)
    report.update({"date": started, "machine": machine(), "out": str(out),
                   "execution": {"jobs": runner.jobs, "threads_per_run": threads, "gpus": runner.devices}})
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    log("")
    log(sweep_table(report))
    log(f"wrote {out / 'sweep.json'}")
    if plot:
        write_plot(report["arms"], out / "sweep.png",
                   f"gradus sweep — {report['varied']}, {format_count(prepared.budget)} tokens per run, "
                   f"{report['machine']['summary']}", report["target"], log,
                   label_of=lambda r: f"{r['name']} (final {_num(r['final_val_loss'], '.3f', 'diverged')})",
                   ylabel=f"validation loss at length {prepared.reference_len}")
    if write is not None:
        winner = next(a for a in arms if a.name == report["winner"])
        write.parent.mkdir(parents=True, exist_ok=True)
        write.write_text(dump_yaml(from_dict(arm_config(base, winner, origin))), encoding="utf-8")
        log(f"wrote {write}: your config with {winner.name} ({winner.description or 'as configured'})")
    return report


def write_plot(records: Sequence[dict], path: Path, title: str, target: float | None, log: Callable[[str], None],
               **kwargs) -> None:
    """The PNG, or a line saying why there is none."""
    try:
        from gradus.experiments.plots import plot_curves

        plot_curves(records, path, title, target=target, **kwargs)
        log(f"wrote {path}")
    except ImportError:
        log("matplotlib is not installed: no PNG (pip install matplotlib)")


def sweep_report(prepared: Prepared, records: Sequence[RunRecord], target: float | None,
                 calibration: Calibration | None = None) -> dict:
    """The sweep's JSON report from its finished runs; calibrated seconds by ``calibration`` (default: the
    runs' logging windows, :func:`gradus.experiments.calibration.windows_calibration`)."""
    runs = {a.name: [r for r in records if r.arm == a.name] for a in prepared.arms}
    runs = {n: sorted(rs, key=lambda r: prepared.seeds.index(r.seed)) for n, rs in runs.items()}
    cal = calibration if calibration is not None else windows_calibration(records)
    cost = cal.cost
    finals = {n: statistics.median(r.final_val_loss for r in rs) for n, rs in runs.items()}
    reached = [f for f in finals.values() if math.isfinite(f)]
    if target is None:
        target_from = "the highest final loss among the arms (the loss every arm reaches)"
        target = max(reached) if reached else math.inf
    else:
        target_from = "--target"
    arms_out = []
    for arm in prepared.arms:
        stages = stage_plan(prepared.configs[arm.name])
        cal.annotate({arm.name: stages})
        rec = summarise_runs(arm.name, runs[arm.name], target, stages, cost)
        rec.update({"description": arm.description, "note": arm.note, "reference": arm.reference,
                    "overrides": list(arm.overrides)})
        arms_out.append(rec)
    winner = min(arms_out, key=lambda r: r["final_val_loss"] if r["final_val_loss"] is not None else math.inf)
    varied = sorted({o.split("=", 1)[0] for a in prepared.arms for o in a.overrides})
    return {
        "command": "sweep",
        "varied": ", ".join(varied) if len(varied) <= 3 else f"{len(varied)} keys",
        "budget": prepared.budget,
        "seeds": prepared.seeds,
        "reference_len": prepared.reference_len,
        "target": finite(target),
        "target_from": target_from,
        "winner": winner["name"],
        "calibration": cal.to_json(),
        "arms": arms_out,
    }
