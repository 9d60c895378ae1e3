"""``gradus compare``: the curriculum against a no-curriculum baseline on the same data and model (one
stage at the curriculum's final length and tokens per step), optionally with every arm's LR tuned the same
way; the speedup in tokens and wall-clock to the baseline's final loss, over seeds, and a verdict in words."""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from gradus.config import GradusConfig, load_config, to_dict
from gradus.errors import ConfigError
from gradus.experiments.analysis import (
    add_speedups,
    at_tokens,
    band_text,
    compare_seeds,
    seed_shift,
    shifted_speedups,
    spread,
    summarise_runs,
    verdict,
)
from gradus.experiments.arms import Arm
from gradus.experiments.budget import EVAL_POINTS, compare_baseline, describe_stages, stage_tokens_per_step
from gradus.experiments.calibration import ArmShapes, calibrate_arms, check_method
from gradus.experiments.common import (
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
from gradus.experiments.tuning import LRTuner, default_grid, finalists_text, tune_all
from gradus.units import format_count

CALIBRATION_TEXT = {
    "measured": "each shape's optimizer step timed after the runs, the shapes interleaved, its lower decile × "
                "tokens: the same whatever the runs' history; the ratios hold under load, the seconds follow the "
                "machine's speed when it was timed",
    "windows": "each shape's best-case seconds per token in the runs' logging windows × tokens",
}
"""How the table's footnote says the calibrated seconds were priced, by method."""

MAX_EXTENSIONS = 2
"""Times an LR grid may grow ×2 at an edge before the tuning settles for the edge (reported)."""


def baseline_arm(base: dict, baseline: str, origin: str) -> Arm:
    """``auto``: one stage at the curriculum's final length and tokens per step; else a config file."""
    if baseline == "auto":
        raw = compare_baseline(base, origin)
        st = raw["curriculum"]["stages"][0]
        desc = f"no curriculum: one stage at {st['seq_len']}, the curriculum's token-weighted mix"
    else:
        raw = to_dict(load_config(baseline))
        desc = f"from {baseline}"
    return Arm("baseline", (), desc, reference=True, config=raw)


def half_batch_arm(reference: Arm) -> Arm:
    """The baseline at half its tokens per step (twice the steps): with it, the target is the better of the two
    baselines, so a curriculum whose early stages take smaller batches is not credited with what a smaller
    batch alone would give (BENCHMARKS.md: on both corpora the half-batch baseline set the stricter target).
    A stage whose half batch is less than one sequence is a ConfigError."""
    raw = copy.deepcopy(reference.config)
    for st in raw["curriculum"]["stages"]:
        half = stage_tokens_per_step(st) // 2
        if half < int(st["seq_len"]):
            raise ConfigError(f"--half-batch-baseline: the baseline's stage at {st['seq_len']} takes "
                              f"{half * 2:,} tokens per step, one sequence; half a batch is not possible (drop "
                              "the option, or raise that stage's tokens_per_batch)")
        st.pop("batch_size", None)
        st["tokens_per_batch"] = half
    return Arm(f"{reference.name}-half-batch", (), f"{reference.description}, at half its tokens per step",
               reference=True, config=raw)


def compare_arms(cfg: GradusConfig, baseline: str, half_batch_baseline: bool, origin: str) -> tuple[dict, list[Arm]]:
    """The config as a mapping and the arms a compare runs: the baseline(s), then the curriculum (last)."""
    base = to_dict(cfg)
    if len(base["curriculum"]["stages"]) < 2 and baseline == "auto":
        raise ConfigError(f"{origin}: the curriculum has one stage, so it is its own baseline; compare needs two "
                          "or more stages (or give --baseline FILE)")
    reference = baseline_arm(base, baseline, origin)
    return base, [reference, *([half_batch_arm(reference)] if half_batch_baseline else []),
                  Arm("curriculum", (), describe_stages(base))]


def compare_table(report: dict) -> str:
    """The table ``gradus compare`` prints, and the verdict."""
    n = len(report["seeds"])
    rows = [report["baseline"], *report.get("other_baselines", []), report["curriculum"]]
    w = max(11, *(len(r["name"]) for r in rows))
    lines = [f"target: val loss {report['target']:.4f} at length {report['reference_len']} ({report['target_from']})",
             f"{'arm':<{w}} {'LR':>8} {'final val loss (seeds)':>30} {'tokens→target':>13} {'s→target':>9} "
             f"{'cal s':>6} {'×tokens':>7} {'×wall':>6} {'×cal':>6} {'tok/s':>7}"]
    for rec in rows:
        seeds = "/".join(f"{x:.3f}" if x is not None else "div" for x in rec["final_val_loss_seeds"])
        final = f"{or_dash(rec['final_val_loss'], '.4f', 'diverged')} ({seeds})" if n > 1 else \
            or_dash(rec["final_val_loss"], ".4f", "diverged")
        tok = f"{rec['tokens_to_target'] / 1e3:,.0f}k" if rec["tokens_to_target"] else "not reached"
        lr = f"{rec['lr']:.2g}" + ("" if rec.get("lr_inside_grid", True) else " EDGE")
        lines.append(f"{rec['name']:<{w}} {lr:>8} {final:>30} {tok:>13} "
                     f"{or_dash(rec['seconds_to_target'], '.0f'):>9} "
                     f"{or_dash(rec['seconds_to_target_calibrated'], '.0f'):>6} "
                     f"{or_dash(rec['speedup_tokens'], '.2f'):>7} "
                     f"{or_dash(rec['speedup_wallclock'], '.2f'):>6} "
                     f"{or_dash(rec['speedup_wallclock_calibrated'], '.2f'):>6} "
                     f"{rec['tokens_per_sec_median']:>7,.0f}")
    lines.append("×tokens, ×wall, ×cal: the baseline's cost to its final loss / this arm's, in tokens, measured "
                 f"training seconds and calibrated seconds ({CALIBRATION_TEXT[report['calibration'].get('method', 'windows')]}); "
                 "above 1 = faster")
    if not report["curriculum"]["tokens_to_target"]:
        lines.append("not reached: the curriculum's figures are then the baseline's cost to reach the curriculum's "
                     "final loss / the curriculum's whole run (below 1 = the curriculum is slower)")
    sp = report["speedup_over_seeds"]
    if n > 1 and sp["tokens"]["n"]:
        t, c = sp["tokens"], sp["calibrated"]
        paired = len(report.get("per_seed") or []) or t["n"]
        # Seeds whose curriculum never reached its baseline's final loss have no figure: say how many count.
        which = "" if t["n"] == paired else f"; {t['n']} of {paired} seeds reached it, the others left out"
        lines.append(f"per seed (each against its own seed's baseline{which}): ×{t['median']:.2f} tokens (range "
                     f"{t['min']:.2f}–{t['max']:.2f})" + (f", ×{c['median']:.2f} calibrated (range {c['min']:.2f}–"
                                                          f"{c['max']:.2f})" if c["n"] else ""))
    if band := band_text(report["curriculum"]):
        lines.append(f"the curriculum's {band} (half the baseline's seed spread of final loss; a wide band: its "
                     "curve runs flat near the target, so the crossing rests on noise)")
    if report.get("tuned"):
        for rec in rows:
            grid = rec["lr_grid"]
            lines.append(f"LR grid of {rec['name']} (final loss at seed {report['seeds'][0]}): "
                         + ", ".join(f"{k}: {or_dash(v, '.4f', 'div')}" for k, v in grid.items()))
            if finalists := finalists_text(rec.get("lr_finalists", {})):
                lines.append(f"  {finalists}")
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)


def run_compare(cfg: GradusConfig, *, baseline: str = "auto", budget: int | None, seeds: Sequence[int], out: Path,
                tune_lr: bool = False, finalists: int = 1, half_batch_baseline: bool = False,
                jobs: int | None = None, threads: int = 1,
                plot: bool = True, origin: str = "config", eval_points: int = EVAL_POINTS,
                calibration: str = "measured", calibration_dir: Path | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Run the curriculum and its baseline (with ``half_batch_baseline``, also the baseline at half its tokens
    per step; the lower median final loss of the baselines is the target), tuned when asked (the best
    ``finalists`` LRs of the first seed at every seed, gradus.experiments.tuning); price the calibrated seconds
    by ``calibration`` (:mod:`gradus.experiments.calibration`: ``measured``, cached in ``calibration_dir``,
    default ``out``, or ``windows``);
    print the table and verdict, write ``compare.json`` and ``compare.png``. Returns the report."""
    check_method(calibration)
    base, arms = compare_arms(cfg, baseline, half_batch_baseline, origin)
    baselines = [a.name for a in arms if a.reference]
    prepared = prepare(base, arms, budget, seeds, origin, eval_points)
    runner = make_runner(prepared, jobs, threads, log, out)
    against = " and ".join(f"{n} ({describe_stages(prepared.configs[n])})" for n in baselines)
    log(f"compare: curriculum ({describe_stages(prepared.configs['curriculum'])}) against "
        + (f"the {against}" if len(baselines) == 1 else against) + f", {format_count(prepared.budget)} tokens each, "
        f"seeds {', '.join(map(str, prepared.seeds))}" + (", every arm's LR tuned" if tune_lr else "")
        + (f" (the best {finalists} LRs at every seed)" if tune_lr and finalists > 1 else "")
        + f"; {runner.jobs} run(s) at a time; run directories under {out}/arms (rerun the same command to resume)")
    prepare_tokenizers(prepared, log)
    started = now()

    def on_done(record):
        log(describe_run(record))
        return []

    if tune_lr:
        tuners = {}
        for arm in arms:
            lr = float(prepared.configs[arm.name].get("optim", {}).get("base_lr", 6e-4))

            def make(lr_value: float, seed: int, name: str = arm.name):
                task = next(t for t in tasks_for(prepared, out, name, lr_value) if t.seed == seed)
                return task

            tuners[arm.name] = LRTuner(arm.name, default_grid(lr), prepared.seeds, MAX_EXTENSIONS, make, finalists)

        def drive(first, unlock):
            return runner.run(first, on_done=lambda r: (on_done(r), unlock(r))[1])

        tuned = tune_all(tuners, drive)
        runs = {n: t.runs for n, t in tuned.items()}
        all_records = [r for t in tuned.values() for r in t.all_runs]
    else:
        tasks = [t for arm in arms for t in tasks_for(prepared, out, arm.name)]
        records = runner.run(tasks, on_done=on_done)
        runs = {a.name: sorted([r for r in records if r.arm == a.name], key=lambda r: prepared.seeds.index(r.seed))
                for a in arms}
        all_records = records
        tuned = {}
    medians = {n: statistics.median([r.final_val_loss for r in runs[n]]) for n in baselines}
    chosen = min(baselines, key=lambda n: medians[n] if math.isfinite(medians[n]) else math.inf)
    target = medians[chosen]
    if not math.isfinite(target):
        raise ConfigError("the baseline diverged (no final loss in most seeds); nothing to compare against: lower "
                          "optim.base_lr or use --tune-lr")
    # Every arm read at the baseline's evaluation points (and its own last): the shared cadence gives each the
    # same token counts, but a curriculum is also evaluated at its stage switches, and a first crossing read at
    # more points comes earlier on a noisy curve.
    shared = {t for r in runs[chosen] for t in r.tokens}
    runs = {n: rs if n == chosen else [at_tokens(r, shared) for r in rs] for n, rs in runs.items()}
    # Priced after the runs (they do not compete with it), the same way whatever their history.
    stages = {n: stage_plan(prepared.configs[n]) for n in runs}
    cal = calibrate_arms(calibration, [ArmShapes(n, prepared.configs[n], stages[n],
                                                 [r for r in all_records if r.arm == n]) for n in runs],
                         out=calibration_dir or out, threads=threads, log=log)
    cal.annotate(stages)
    cost = cal.cost
    records_out = {}
    for arm in arms:
        rec = summarise_runs(arm.name, runs[arm.name], target, stages[arm.name], cost)
        rec["description"] = arm.description
        rec["lr"] = runs[arm.name][0].lr
        if arm.name in tuned:
            t = tuned[arm.name]
            rec["lr_inside_grid"] = t.inside
            rec["lr_grid"] = t.grid_losses()
            rec["lr_finalists"] = t.finalist_losses()
        records_out[arm.name] = rec
    shift = seed_shift(records_out[chosen]["final_val_loss_seeds"])
    for rec in records_out.values():
        add_speedups(rec, records_out[chosen], cost)
        rec.update(shifted_speedups(rec, records_out[chosen], cost, shift))
    per_seed = compare_seeds(runs[chosen], runs["curriculum"], stages[chosen], stages["curriculum"], cost)
    target_from = (f"{chosen}'s final loss, median of {len(prepared.seeds)} seed(s); the lower of {len(baselines)} "
                   "baselines" if len(baselines) > 1 else f"the baseline's final loss, median of {len(prepared.seeds)} seed(s)")
    report = {
        "command": "compare",
        "date": started,
        "machine": machine(),
        "out": str(out),
        "budget": prepared.budget,
        "seeds": prepared.seeds,
        "reference_len": prepared.reference_len,
        "tuned": tune_lr,
        "target": target,
        "target_from": target_from,
        "baseline": records_out[chosen],
        "other_baselines": [records_out[n] for n in baselines if n != chosen],
        "curriculum": records_out["curriculum"],
        "per_seed": [asdict(s) for s in per_seed],
        "speedup_over_seeds": {"tokens": spread([s.speedup_tokens for s in per_seed]),
                               "calibrated": spread([s.speedup_calibrated for s in per_seed])},
        "verdict": verdict(per_seed),
        "calibration": cal.to_json(),
        "execution": {"jobs": runner.jobs, "threads_per_run": threads, "gpus": runner.devices},
    }
    write_summary(out, "compare", report, runs_key([r.run_dir for r in all_records]), log)
    log("")
    log(compare_table(report))
    log(f"wrote {out / 'compare.json'}")
    if plot:
        write_plot([records_out[a.name] for a in arms], out / "compare.png",
                   f"gradus compare — curriculum vs baseline, {format_count(prepared.budget)} tokens per run, "
                   f"{report['machine']['summary']}", target, log, cost=cost, calibrated=True,
                   ylabel=f"validation loss at length {prepared.reference_len}",
                   label_of=lambda r: f"{r['name']} (lr {r['lr']:g}, final {or_dash(r['final_val_loss'], '.3f')})")
    return report
