"""``gradus sweep``: every arm through the real trainer at the same budget and evaluation, then a table, a
JSON report and a PNG of the validation curves. The pieces ``gradus compare`` shares with it (preparing the
arms' configs, running them, stage plans, machine description) are :mod:`~gradus.experiments.common`."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from gradus.config import GradusConfig, dump_yaml, from_dict, to_dict
from gradus.errors import ConfigError
from gradus.experiments.analysis import RunRecord, finite, summarise_runs
from gradus.experiments.arms import ablation_arms, arm_config, vary_arms
from gradus.experiments.budget import EVAL_POINTS
from gradus.experiments.calibration import (
    ArmShapes,
    Calibration,
    calibrate_arms,
    check_method,
    windows_calibration,
)
from gradus.experiments.common import (
    Prepared,
    describe_run,
    machine,
    make_runner,
    now,
    or_dash,
    prepare,
    prepare_tokenizers,
    runs_key,
    stage_plan,
    tasks_for,
    write_plot,
    write_summary,
)
from gradus.files import check_new_file, write_new_file
from gradus.units import format_count


def sweep_table(report: dict) -> str:
    """The table ``gradus sweep`` prints."""
    target = report["target"]
    n = len(report["seeds"])
    lines = [f"{'arm':<22} {'final val loss':>15} {'best':>7} {'tokens→target':>13} {'s→target':>9} "
             f"{'tok/s':>7}  note"]
    for rec in report["arms"]:
        mark = "*" if rec["name"] == report["winner"] else " "
        final = or_dash(rec["final_val_loss"], ".4f", "diverged")
        if n > 1 and rec["final_val_loss_spread"] is not None:
            final += f" ±{rec['final_val_loss_spread'] / 2:.3f}"
        tok = f"{rec['tokens_to_target'] / 1e3:,.0f}k" if rec["tokens_to_target"] else "not reached"
        short = rec.get("description") if len(rec.get("description") or "") <= 40 else ""
        note = "; ".join(x for x in (short, rec.get("note"), "as configured" if rec.get("reference") else "") if x)
        lines.append(f"{mark}{rec['name']:<21} {final:>15} {or_dash(rec['best_val_loss'], '.4f'):>7} {tok:>13} "
                     f"{or_dash(rec['seconds_to_target'], '.0f'):>9} {rec['tokens_per_sec_median']:>7,.0f}  {note}")
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
    if write is not None:
        check_new_file(write, "--write")  # before the runs, not after them
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
    write_summary(out, "sweep", report, runs_key([r.run_dir for r in records]), log)
    log("")
    log(sweep_table(report))
    log(f"wrote {out / 'sweep.json'}")
    if plot:
        write_plot(report["arms"], out / "sweep.png",
                   f"gradus sweep — {report['varied']}, {format_count(prepared.budget)} tokens per run, "
                   f"{report['machine']['summary']}", report["target"], log,
                   label_of=lambda r: f"{r['name']} (final {or_dash(r['final_val_loss'], '.3f', 'diverged')})",
                   ylabel=f"validation loss at length {prepared.reference_len}")
    if write is not None:
        winner = next(a for a in arms if a.name == report["winner"])
        write_new_file(write, dump_yaml(from_dict(arm_config(base, winner, origin))), "--write")
        log(f"wrote {write}: your config with {winner.name} ({winner.description or 'as configured'})")
    return report


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
