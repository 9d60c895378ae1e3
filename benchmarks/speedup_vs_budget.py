#!/usr/bin/env python
"""Does the curriculum's gain survive as training grows? Speedup against token budget and tokens per parameter
(issue 29).

Each budget point is one complete ``curriculum_speedup.py`` run at that budget (every arm annealed to its own
budget, every arm's LR tuned there: a grid with the best strictly inside, finalists over seeds), in its own work
folder, so a point is exactly the method of the figures of record. The grid of each arm at a budget is seeded
from that arm's best LR at the previous budget (``best/2, best, 2·best``; the tuner extends it at an edge, so
the best still ends inside). All budgets share one BPE (trained once, copied into each point's folder).

Per point the JSON gives the first-crossing speedups against the tuned baseline (tokens and calibrated seconds,
with the band) and the annealed reading: the budget at which the best curriculum's *final* loss reaches the
baseline's final loss at this budget, interpolated in log(budget) over the budgets run so far
(``benchmarks/budget_to_target.py``'s reading). The trend is a weighted straight line of the calibrated speedup
against log2(budget) (:mod:`gradus.experiments.trend`), with its uncertainty.

Resumable: every run checkpoints every ``budget / 8`` tokens, finished runs are read back (``--reuse``), and a
point whose result file exists is read back without touching its runs. So an interrupted benchmark (a session's
end) continues where it stopped when the same command runs again; ``--points`` limits how many new points one
invocation computes, so each can be sized to finish within a session. A session's machine takes its work folder
with it: ``--archive benchmarks/results/runs`` keeps every finished run's record in the repository as well
(``runs/<point's tag>/<arm>/lr<LR>-seed<S>.json``, ~5 KB each), so a point that a session's end cut off goes
on in the next session from the committed records, with the same ``--work`` and ``--data`` paths (the runs'
configs name them).

Usage::

    # WikiText-2, the `small` model, 0.25M -> 4M tokens (issue 29's budget series)
    python benchmarks/speedup_vs_budget.py --budgets 262144,524288,1048576,2097152,4194304 --work /work/bench/trend \\
        --archive benchmarks/results/runs
    # tokens per parameter up to compute-optimal: the `tiny` model (4 x 64) with a 1,024-token BPE, 266,816
    # parameters (embeddings included), 1.2 -> 20.6 tokens per parameter
    python benchmarks/speedup_vs_budget.py --model tiny --vocab-size 1024 --series tiny \\
        --budgets 327680,1310720,5505024 --work /work/bench/trend-tiny

Outputs: ``benchmarks/results/speedup_vs_budget[_CORPUS][_SERIES].json`` and ``.png``; each point's own
``curriculum_speedup`` JSON and PNG under ``benchmarks/results/trend/``. With ``--adaptive``, each finished
point also runs the adaptive arm in its own work folder, every other run read back (a work folder takes one
process at a time, so this is how the adaptive comparison of issue 30 shares the series' runs):
``benchmarks/results/adaptive/curriculum_speedup_<tag>.json``, read by ``benchmarks/adaptive_vs_fixed.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import curriculum_speedup  # noqa: E402 (benchmarks is not a package)
from common import RESULTS, machine, read_result, run_resumable, save_plot, write_result  # noqa: E402

from gradus.experiments.trend import annealed_speedup, fit_trend, forecast, trend_points  # noqa: E402

ADAPTIVE_ARM = "seqwarm-long-ramp-adaptive-wsd"
"""The adaptive arm ``--adaptive`` adds (adaptive_vs_fixed.py reads the same name)."""

DEFAULT_ARMS = ("baseline,baseline-wsd,baseline-wsd-half-batch,baseline-linear,seqwarm-long-wsd,"
                "seqwarm-long-ramp-wsd")
"""The arms of the figure of record: the tuned baselines (cosine, WSD, WSD at half the batch, linear to zero),
the fixed ladder and the ramp."""
DECIDING_ARMS = "baseline,baseline-wsd,baseline-wsd-half-batch,seqwarm-long-ramp-wsd"
"""Where the largest budgets would not fit: the strongest baselines and the best curriculum at smaller budgets."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", required=True, help="comma-separated token budgets, increasing")
    p.add_argument("--data", type=Path, default=curriculum_speedup.DEFAULT_DATA,
                   help="as curriculum_speedup.py's --data (default WikiText-2)")
    p.add_argument("--template", help="as curriculum_speedup.py's --template")
    p.add_argument("--corpus", help="the corpus's name in the output file (default: none for WikiText-2, else the "
                   "data's folder or file name)")
    p.add_argument("--series", help="a name for this series in the output file (e.g. tiny)")
    p.add_argument("--model", help="model preset (default: curriculum_speedup.py's, small)")
    p.add_argument("--vocab-size", type=int, help="BPE vocabulary (default: curriculum_speedup.py's, 8192)")
    p.add_argument("--final-len", type=int, default=1024, help="final length and evaluation length (default 1024)")
    p.add_argument("--tokens-per-step", type=int, default=2048, help="the baselines' tokens per step (default 2048)")
    p.add_argument("--arms", default=DEFAULT_ARMS, help=f"arms at every budget (default {DEFAULT_ARMS})")
    p.add_argument("--large-arms", default=DECIDING_ARMS,
                   help=f"arms at budgets from --large-from on (default {DECIDING_ARMS})")
    p.add_argument("--large-from", type=int, help="the first budget that runs --large-arms only (default: none)")
    p.add_argument("--arms-at", action="append", default=[], metavar="BUDGET=ARMS",
                   help="the arms of one budget, overriding --arms/--large-arms there (repeatable), e.g. "
                        "4194304=baseline-wsd,seqwarm-long-ramp-wsd,baseline where a point would not fit otherwise; "
                        "the summary names it")
    p.add_argument("--absolute-arm", action="store_true",
                   help="also run seqwarm-long-ramp-abs-wsd at every budget after the first: the ramp with its short "
                        "stages kept at their size at the first budget (absolute tokens, not fractions of the run)")
    p.add_argument("--seeds", default="0,1,2", help="seeds at the smallest and largest budget (default 0,1,2)")
    p.add_argument("--mid-seeds", help="seeds at the budgets between (default: --seeds)")
    p.add_argument("--finalists", type=int, default=2, help="LRs of the first seed run at every seed (default 2)")
    p.add_argument("--max-extensions", type=int, default=2, help="times a grid may grow at an edge (default 2)")
    p.add_argument("--points", type=int, help="compute at most this many new points in this invocation")
    p.add_argument("--work", type=Path, required=True, help="folder for the runs (one sub-folder per budget)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    p.add_argument("--archive", type=Path, help="keep every finished run's record in ARCHIVE/<point's tag>/ as well "
                   "(curriculum_speedup.py's --archive): with it committed, a point that does not finish within one "
                   "machine's life continues on the next")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and PNG")
    p.add_argument("--calibration", choices=("windows", "measured"), default="windows",
                   help="as curriculum_speedup.py's --calibration (default windows). A point whose result file was "
                        "priced by the other method is priced again: its runs are read back, only the calibration "
                        "is measured (this is not counted by --points)")
    p.add_argument("--adaptive", action="store_true",
                   help=f"after each point, the adaptive arm ({ADAPTIVE_ARM}: the ramp's table with gradus's "
                        "adaptive defaults) in the point's own work folder, every other arm read back: "
                        "OUT/adaptive/curriculum_speedup_<tag>.json, for adaptive_vs_fixed.py (issue 30 §3); "
                        "run for every point whose file exists and its own does not (not counted by --points)")
    p.add_argument("--adaptive-at", metavar="BUDGET,...", type=lambda t: {int(float(b)) for b in t.split(",") if b},
                   help="with --adaptive: only these budgets' points (e.g. 2097152), the others' left as they are")
    p.add_argument("--smoke", action="store_true", help="seconds: curriculum_speedup's toy settings (for tests)")
    return p.parse_args(argv)


def priced_by(report: dict) -> str:
    """The calibration method a point's curriculum_speedup report was priced by (reports from before the
    measured method carry no ``method``: they were priced from the runs' windows)."""
    return (report.get("calibration") or {}).get("method", "windows")


def corpus_name(args: argparse.Namespace) -> str:
    """The corpus's name: --corpus, else the data's folder or file name (wikitext-2 by default)."""
    return args.corpus or (args.data.stem if args.data.is_file() else args.data.name)


def stem(args: argparse.Namespace) -> str:
    """The output name: speedup_vs_budget[_CORPUS][_SERIES] (no corpus part for WikiText-2, wherever it lies)."""
    corpus = corpus_name(args)
    corpus = None if corpus == curriculum_speedup.DEFAULT_DATA.name else corpus
    return "_".join(["speedup_vs_budget", *(x for x in (corpus, args.series) if x)])


def point_args(args: argparse.Namespace, budget: int, seeds: str, arms: str, grids: dict[str, float],
               tag: str) -> list[str]:
    """curriculum_speedup.py's command line for one budget point."""
    argv = ["--budget", str(budget), "--final-len", str(args.final_len), "--tokens-per-step", str(args.tokens_per_step),
            "--seeds", seeds, "--finalists",
            str(args.finalists), "--max-extensions", str(args.max_extensions), "--arms", arms,
            "--data", str(args.data), "--work", str(args.work / f"b{budget}"), "--reuse", "--jobs", str(args.jobs),
            "--checkpoint-every-tokens", str(max(args.tokens_per_step, budget // 8)),
            "--out", str(args.out / "trend"), "--tag", tag, "--calibration", args.calibration]
    if args.archive:
        argv += ["--archive", str(args.archive / tag)]
    if args.template:
        argv += ["--template", args.template]
    if args.model:
        argv += ["--model", args.model]
    if args.vocab_size:
        argv += ["--vocab-size", str(args.vocab_size)]
    if args.smoke:
        argv += ["--smoke", "--eval-points", "4", "--eval-tokens", "1024"]
    if "seqwarm-long-ramp-abs-wsd" in arms:
        argv += ["--anchor-budget", str(args.anchor_budget)]
        # Its grid starts where the ramp's best was at the previous budget (the same arm at the anchor budget).
        if "seqwarm-long-ramp-wsd" in grids and "seqwarm-long-ramp-abs-wsd" not in grids:
            grids = {**grids, "seqwarm-long-ramp-abs-wsd": grids["seqwarm-long-ramp-wsd"]}
    for arm, lr in sorted(grids.items()):
        argv += ["--lr-grid", f"{arm}={lr / 2:g},{lr:g},{lr * 2:g}"]
    return argv


def adaptive_args(args: argparse.Namespace, budget: int, seeds: str, arms: str, grids: dict[str, float],
                  tag: str) -> list[str]:
    """curriculum_speedup.py's command line for a point's adaptive run: the point's own (same arms, the same grids
    it was tuned on, so every fixed run is read back) with the adaptive arm added, its grid seeded like the
    others (from its best at the previous budget, else the ramp's), written under ``OUT/adaptive``."""
    if ADAPTIVE_ARM not in grids and "seqwarm-long-ramp-wsd" in grids:
        grids = {**grids, ADAPTIVE_ARM: grids["seqwarm-long-ramp-wsd"]}
    argv = point_args(args, budget, seeds, f"{arms},{ADAPTIVE_ARM}", grids, tag)
    argv[argv.index("--out") + 1] = str(args.out / "adaptive")
    return argv


def share_tokenizer(args: argparse.Namespace, budget: int) -> None:
    """Copy the first point's BPE into this point's folder, so every budget tokenises alike."""
    name = f"bpe-{args.vocab_size or (512 if args.smoke else curriculum_speedup.Settings().vocab_size)}"
    folders = sorted(p for p in args.work.glob(f"b*/{name}") if (p / "tokenizer.json").is_file())
    target = args.work / f"b{budget}" / name
    if folders and not (target / "tokenizer.json").is_file():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folders[0] / "tokenizer.json", target / "tokenizer.json")


def arms_of(report: dict) -> dict[str, dict]:
    """Baseline and arms of one curriculum_speedup report by name."""
    return {a["name"]: a for a in [report["baseline"], *report["arms"]]}


def point(report: dict, earlier: list[dict]) -> dict:
    """One budget's figures from its curriculum_speedup report (and the reports at smaller budgets, for the
    annealed reading)."""
    budget = report["settings"]["budget"]
    params = report["cost_model"]["params"]
    best = report["best_arm"]
    arms = arms_of(report)
    rec = arms.get(best) if best else None
    annealed, how = None, "no curriculum"
    annealed_cal = None
    if rec is not None:
        pts = [(r["settings"]["budget"], arms_of(r)[best]["final_val_loss"])
               for r in [*earlier, report] if best in arms_of(r)]
        annealed, how = annealed_speedup(budget, report["target"], pts)
        if annealed:
            base = report["baseline"]
            if rec.get("train_seconds_calibrated") and base.get("train_seconds_calibrated"):
                # Each arm's whole-run calibrated seconds per token at this budget x the budget it needs.
                annealed_cal = annealed * base["train_seconds_calibrated"] / rec["train_seconds_calibrated"]
    return {
        "budget_tokens": budget,
        "tokens_per_param": budget / params,
        "best_arm": best,
        "speedup_tokens": report["best_speedup_tokens"],
        "speedup_wallclock": report["best_speedup_wallclock"],
        "band": report.get("best_speedup_wallclock_band"),
        "band_tokens": report.get("best_speedup_tokens_band"),
        "speedup_tokens_annealed": annealed,
        "speedup_wallclock_annealed": annealed_cal,
        "annealed_kind": how,
        # "at most": the smallest budget run already reaches the target, so the annealed speedup is a lower bound.
        "annealed_lower_bound": how == "at most",
        "seeds": report["settings"]["seeds"],
        "target": report["target"],
        "baseline": report["baseline"]["name"],
        "lrs": {name: a["lr"] for name, a in arms.items()},
        "lr_inside_grid": {name: a["lr_inside_grid"] for name, a in arms.items()},
        "final_val_loss": {name: a["final_val_loss"] for name, a in arms.items()},
        "source": report.get("_path"),
    }


def trend_of(points: list[dict], key: str, band_key: str | None) -> dict | None:
    """The fitted trend of one speedup column (None with fewer than two points)."""
    # A lower bound (the smallest budget already reached the target) is not a value to fit a line through, as in
    # gradus compare --budgets.
    pts = trend_points([p for p in points if not p.get("annealed_lower_bound") or key != "speedup_tokens_annealed"],
                       key, band_key)
    if len({p.budget_tokens for p in pts}) < 2:
        return None
    trend = fit_trend(pts)
    out = trend.to_json()
    out["column"] = key
    out["reading"] = (f"{trend.slope:+.3f}× per doubling of the budget (95%: "
                      f"{out['slope_per_doubling_95'][0]:+.3f} to {out['slope_per_doubling_95'][1]:+.3f})")
    # Where the line crosses 1x, if it falls: the budget at which the fitted gain would be gone.
    if trend.slope < 0:
        out["budget_at_no_gain"] = 2 ** ((1 - trend.intercept) / trend.slope)
    out["forecast_at_4x_largest"] = forecast(trend, 4 * trend.budget_max).to_json()
    return out


def table(summary: dict) -> str:
    """The stdout table."""
    lines = [f"{summary['corpus']}, {summary['model']} ({summary['model_params']:,} parameters incl. embeddings), "
             f"final length {summary['final_len']}",
             f"{'budget':>10} {'tok/param':>9} {'best arm':<24} {'×tok':>5} {'×cal':>5} {'band (cal)':>11} "
             f"{'×tok ann':>8} {'×cal ann':>8} {'target':>7} {'seeds':>6}"]
    for p in summary["points"]:
        band = p.get("band")
        band_s = (f"{band[0]:.2f}–{band[1]:.2f}" if band and None not in band else
                  (f"never–{band[1]:.2f}" if band and band[1] else "—"))

        def f(x):
            return f"{x:.2f}" if x else "—"
        lines.append(f"{p['budget_tokens']:>10,} {p['tokens_per_param']:>9.2f} {str(p['best_arm']):<24} "
                     f"{f(p['speedup_tokens']):>5} {f(p['speedup_wallclock']):>5} {band_s:>11} "
                     f"{f(p['speedup_tokens_annealed']):>8} {f(p['speedup_wallclock_annealed']):>8} "
                     f"{p['target']:>7.4f} {len(p['seeds']):>6}")
    for key, t in summary["trend"].items():
        if t:
            lines.append(f"trend of {key}: {t['reading']}")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Speedup (calibrated and tokens, with bands) against tokens per parameter, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = summary["points"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, band_key, label, color in (("speedup_wallclock", "band", "calibrated wall-clock (first crossing)", "C0"),
                                        ("speedup_tokens", "band_tokens", "tokens (first crossing)", "C1"),
                                        ("speedup_tokens_annealed", None, "tokens, annealed runs", "C2")):
        xs = [p["tokens_per_param"] for p in pts if p.get(key)]
        ys = [p[key] for p in pts if p.get(key)]
        if not xs:
            continue
        ax.plot(xs, ys, "o-", color=color, label=label)
        if band_key:
            lo = [max(0.0, p[key] - (p[band_key][0] if p.get(band_key) and p[band_key][0] else p[key]))
                  for p in pts if p.get(key)]
            hi = [max(0.0, (p[band_key][1] if p.get(band_key) and p[band_key][1] else p[key]) - p[key])
                  for p in pts if p.get(key)]
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="none", color=color, capsize=4)
    t = summary["trend"].get("speedup_wallclock")
    if t:
        params = summary["model_params"]
        xs = [min(p["tokens_per_param"] for p in pts), max(p["tokens_per_param"] for p in pts)]
        ax.plot(xs, [t["intercept"] + t["slope"] * math.log2(x * params) for x in xs], "--", color="C0", alpha=0.6,
                label=f"fit (calibrated): {t['slope']:+.2f}× per doubling")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axvline(20.0, color="grey", lw=0.8, ls=":", label="compute-optimal: 20 tokens per parameter")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.1, 1, 10: not 10^0
    # Minor ticks labelled at 2× and 5× a decade only: every one of them ran together below 1 (0.50.60.70.8).
    ax.xaxis.set_minor_formatter(FuncFormatter(
        lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v)), 6) in (2, 5) else ""))
    ax.set_xlabel(f"tokens per parameter ({summary['model_params']:,} parameters, embeddings included)")
    ax.set_ylabel("speedup to the tuned baseline's final loss")
    ax.set_title(f"gradus: curriculum speedup against budget — {summary['corpus']}, {summary['model']}, "
                 f"final length {summary['final_len']}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_arms_at(items: list[str]) -> dict[int, str]:
    """``--arms-at 4194304=baseline-wsd,seqwarm-long-ramp-wsd`` -> {4194304: "baseline-wsd,seqwarm-long-ramp-wsd"}."""
    out: dict[int, str] = {}
    for item in items:
        budget, sep, arms = item.partition("=")
        try:
            key = int(float(budget))
        except ValueError:
            key = 0
        if not sep or key <= 0 or not arms.strip(","):
            raise SystemExit(f"speedup_vs_budget: --arms-at {item!r}: give BUDGET=ARM,ARM (e.g. 4194304=baseline-wsd,"
                             "seqwarm-long-ramp-wsd)")
        out[key] = arms.strip(",")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        budgets = [int(float(b)) for b in args.budgets.split(",")]
    except ValueError:
        raise SystemExit(f"speedup_vs_budget: --budgets {args.budgets!r}: give token counts, e.g. 262144,524288") from None
    if len(budgets) < 2 or any(b1 <= b0 for b0, b1 in zip(budgets, budgets[1:], strict=False)):
        raise SystemExit(f"speedup_vs_budget: --budgets {args.budgets}: give two or more budgets, strictly increasing")
    if args.smoke:
        args.tokens_per_step, args.final_len = 512, 64
    name = stem(args)
    arms_at = parse_arms_at(args.arms_at)
    for flag, named in (("--arms-at", set(arms_at)), ("--adaptive-at", args.adaptive_at or set())):
        if named - set(budgets):
            raise SystemExit(f"speedup_vs_budget: {flag} {', '.join(f'{b:,}' for b in sorted(named - set(budgets)))}: "
                             f"not among --budgets ({args.budgets}); give the budget as written there")
    if args.adaptive_at and not args.adaptive:
        raise SystemExit("speedup_vs_budget: --adaptive-at names the points of --adaptive; add --adaptive")
    reports: list[dict] = []
    grids: dict[str, float] = {}
    adaptive_grids: dict[str, float] = {}  # the adaptive arm's best at the previous budget (--adaptive)
    computed = 0
    for i, budget in enumerate(budgets):
        tag = f"{name.removeprefix('speedup_vs_budget').lstrip('_') or 'wikitext-2'}-b{budget}"
        path = args.out / "trend" / f"curriculum_speedup_{tag}.json"
        large = args.large_from is not None and budget >= args.large_from
        arms = arms_at.get(budget) or (args.large_arms if large else args.arms)
        if args.absolute_arm and i > 0:
            arms += ",seqwarm-long-ramp-abs-wsd"
        seeds = args.seeds if i in (0, len(budgets) - 1) else (args.mid_seeds or args.seeds)
        # The grids this point is tuned on (each arm's best at the previous budget), kept for its adaptive run.
        point_grids = {a: lr for a, lr in grids.items() if a in arms.split(",") or a == "seqwarm-long-ramp-wsd"}
        existing = read_result(path, "speedup_vs_budget") if path.is_file() else None
        reprice = existing is not None and priced_by(existing) != args.calibration
        if existing is None or reprice:
            if not reprice and args.points is not None and computed >= args.points:
                print(f"speedup_vs_budget: {budget:,} tokens not run yet (--points {args.points}); run again to go on")
                break
            args.work.mkdir(parents=True, exist_ok=True)
            share_tokenizer(args, budget)
            args.anchor_budget = budgets[0]
            argv_point = point_args(args, budget, seeds, arms, point_grids, tag)
            print(f"speedup_vs_budget: {budget:,} tokens: python benchmarks/curriculum_speedup.py {' '.join(argv_point)}",
                  flush=True)
            code = curriculum_speedup.main(argv_point)
            if code != 0:
                raise SystemExit(f"speedup_vs_budget: the point at {budget:,} tokens failed (exit {code})")
            computed += not reprice
            existing = read_result(path, "speedup_vs_budget")
        adaptive_path = args.out / "adaptive" / f"curriculum_speedup_{tag}.json"
        if args.adaptive and (not args.adaptive_at or budget in args.adaptive_at) and not adaptive_path.is_file():
            argv_adaptive = adaptive_args(args, budget, seeds, arms, {**point_grids, **adaptive_grids}, tag)
            print(f"speedup_vs_budget: {budget:,} tokens, the adaptive arm: python benchmarks/curriculum_speedup.py "
                  f"{' '.join(argv_adaptive)}", flush=True)
            code = curriculum_speedup.main(argv_adaptive)
            if code != 0:
                raise SystemExit(f"speedup_vs_budget: the adaptive arm at {budget:,} tokens failed (exit {code})")
        if adaptive_path.is_file():
            adaptive_grids = {n: a["lr"] for n, a in arms_of(read_result(adaptive_path, "speedup_vs_budget")).items()
                              if n == ADAPTIVE_ARM and a.get("lr")}
        report = existing
        report["_path"] = str(path.relative_to(args.out.parent) if path.is_relative_to(args.out.parent) else path)
        reports.append(report)
        grids = {n: a["lr"] for n, a in arms_of(report).items() if a.get("lr")}

    if not reports:
        return 0
    points = [point(r, reports[:i]) for i, r in enumerate(reports)]
    last = reports[-1]
    summary = {
        "benchmark": "speedup_vs_budget",
        "command": "python benchmarks/speedup_vs_budget.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "final_len": last["final_len"],
        "corpus": corpus_name(args),
        "series": args.series,
        "data": last["data"],
        "model": last["settings"]["model"],
        "vocab_size": last["settings"]["vocab_size"],
        "model_params": last["cost_model"]["params"],
        "model_params_note": "every parameter, embeddings included (tied input/output embedding counted once)",
        "budgets_planned": budgets,
        "points": points,
        "trend": {
            "speedup_wallclock": trend_of(points, "speedup_wallclock", "band"),
            "speedup_tokens": trend_of(points, "speedup_tokens", "band_tokens"),
            "speedup_tokens_annealed": trend_of(points, "speedup_tokens_annealed", None),
        },
        "method": {
            "point": "one curriculum_speedup.py run per budget (benchmarks/results/trend/): every arm annealed to "
                     "its own budget, LRs tuned at that budget (grid seeded from the previous budget's best, "
                     "extended at an edge), finalists over seeds; the target is the best tuned baseline's final loss",
            "speedup_wallclock": "calibrated seconds to the target, first crossing of the best curriculum's median "
                                 "curve; band: the same with the curve half the baseline's seed spread higher/lower",
            "speedup_tokens_annealed": "budget / the budget at which the best curriculum's final loss reaches this "
                                       "budget's target, linear in log(budget) over the budgets run so far "
                                       "(benchmarks/budget_to_target.py); None below the smallest budget",
            "trend": "weighted least squares of speedup on log2(budget), weights 1/sigma² with sigma = half the band "
                     "(at least 2% of the point), covariance scaled by the reduced chi-square when above 1 "
                     "(gradus.experiments.trend)",
            "arms": f"{args.arms} at every budget" + (f"; from {args.large_from:,} tokens only {args.large_arms}"
                                                      if args.large_from else "")
                    + "".join(f"; at {b:,} tokens only {a}" for b, a in sorted(arms_at.items())),
        },
    }
    json_path = write_result(args.out / f"{name}.json", summary)
    print()
    print(table(summary))
    print(f"wrote {json_path}")
    save_plot(lambda p: plot(summary, p), args.out / f"{name}.png")
    return 0


if __name__ == "__main__":
    run_resumable(main, "speedup_vs_budget")
