"""``gradus lr-find CONFIG|--preset NAME --seq-lens 64,128,256 [--steps K] [--min-lr 1e-6] [--max-lr 1]
[--out DIR] [--write FILE] [--json]``: the LR range test per sequence length.

For each length a fresh model (same seed) trains K steps at that length's stage batch while the LR grows
exponentially from --min-lr to --max-lr; the table says where the loss diverged, where it fell fastest,
where it was lowest, and a suggested peak LR (rules in :mod:`gradus.plan.lr_curve`). A PNG of the curves
and the results as JSON go to --out; --write stores the suggestions as each stage's peak_lr in a copy of
the config. torch is imported only once the arguments and the config have been checked.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from gradus.commands.common import add_config_arguments, config_source, load_from_args
from gradus.config import apply_overrides, load_config, read_yaml
from gradus.curriculum import Schedule, resolve_schedule
from gradus.errors import ConfigError
from gradus.files import check_new_file, write_new_file
from gradus.units import format_lr

RUNS_DIR = Path("runs")
JSON_NAME = "lr_find.json"
PLOT_NAME = "lr_find.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradus lr-find``."""
    add_config_arguments(parser)
    parser.add_argument("--seq-lens", metavar="L,L,...",
                        help="lengths to test, e.g. 64,128,256,512,1024 (default: every stage's length)")
    parser.add_argument("--steps", metavar="K", default="100", help="steps per length (default 100, at least 5)")
    parser.add_argument("--min-lr", metavar="LR", default="1e-6", help="LR of the first step (default 1e-6)")
    parser.add_argument("--max-lr", metavar="LR", default="1", help="LR of the last step (default 1)")
    parser.add_argument("--out", metavar="DIR", help="folder for lr_find.png and lr_find.json "
                        "(default: runs/lr-find-<name>-<time>)")
    parser.add_argument("--write", metavar="FILE",
                        help="write a copy of the config with each probed stage's peak_lr set to the suggestion")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")


def _number(value: str, flag: str, kind: type) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{flag}={value}: not {what}") from None


def run(args: argparse.Namespace) -> int:
    """Check the arguments and config, run the sweeps, print the table (or JSON), write plot/JSON/config."""
    from gradus.plan.lr_curve import check_sweep
    from gradus.train.lr_find import parse_seq_lens, plan_probes, run_lr_find

    steps = _number(args.steps, "--steps", int)
    min_lr = _number(args.min_lr, "--min-lr", float)
    max_lr = _number(args.max_lr, "--max-lr", float)
    check_sweep(min_lr, max_lr, steps)
    if args.write:
        check_new_file(args.write, "--write")  # before the probes, not after them
    seq_lens = parse_seq_lens(args.seq_lens) if args.seq_lens is not None else None
    cfg = load_from_args(args)
    schedule = resolve_schedule(cfg)
    if seq_lens is None:
        seq_lens = sorted({s.seq_len for s in schedule.stages})
    plan_probes(cfg, schedule, seq_lens)  # a length over model.max_seq_len fails here, before any training

    source = config_source(args)
    name = cfg.name or args.preset or Path(str(source)).stem
    out = Path(args.out) if args.out else RUNS_DIR / f"lr-find-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot create the folder ({err.strerror}); choose another") from None

    def progress(line: str) -> None:
        print(f"lr-find: {line}", file=sys.stderr, flush=True)

    progress(f"{len(seq_lens)} length(s), LR {format_lr(min_lr)} → {format_lr(max_lr)} over {steps} steps each")
    result = run_lr_find(cfg, seq_lens, steps=steps, min_lr=min_lr, max_lr=max_lr, run_dir=out, log=progress)

    report = result.to_json()
    report["config"] = str(source)
    peaks = {}
    for s in schedule.stages:
        peaks.setdefault(s.seq_len, s.peak_lr)
    for entry in report["lengths"]:
        entry["config_peak_lr"] = peaks.get(entry["seq_len"])
    report["plot"] = _plot(result, out / PLOT_NAME)
    report["results"] = str(out / JSON_NAME)
    written = _write_config(args, schedule, result.suggestions()) if args.write else None
    report["written"] = written
    if written and written["unprobed"]:
        progress(unprobed_line(written["unprobed"], args.write))
    (out / JSON_NAME).write_text(json.dumps(report, indent=2, allow_nan=False), encoding="utf-8")

    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    else:
        print(format_table(report, title=str(name)))
    return 0


# ----------------------------------------------------------------------------------------- table
def _lr(x: float | None) -> str:
    return format_lr(x) if x is not None else "-"


def format_table(report: dict, title: str) -> str:
    """The per-length table, notes for unusual rows, the rules in words, and where the files are."""
    lines = [
        f"LR range test: {title} — LR {_lr(report['min_lr'])} → {_lr(report['max_lr'])} over {report['steps']} "
        f"steps, seed {report['seed']}, {report['device']} {report['precision']}, "
        f"model {report['model']['n_layers']}×{report['model']['d_model']} ({report['model']['params'] / 1e6:.2f}M)",
        "",
    ]
    header = ("seq_len", "batch", "tokens/step", "clip", "steps", "loss start→min", "diverged at",
              "max stable", "steepest", "min-loss", "suggested", "config peak")
    rows = []
    notes = []
    for e in report["lengths"]:
        start = f"{e['initial_loss']:.2f}" if e["initial_loss"] is not None else "-"
        low = f"{e['min_loss']:.2f}" if e["min_loss"] is not None else "-"
        rows.append((
            str(e["seq_len"]) + ("*" if e["note"] else ""), str(e["batch_size"]), f"{e['tokens_per_step']:,}",
            f"{e['grad_clip']:g}", str(e["steps_run"]), f"{start}→{low}",
            _lr(e["diverged_lr"]) if e["diverged"] else "never",
            _lr(e["max_stable_lr"]), _lr(e["steepest_lr"]), _lr(e["min_loss_lr"]), _lr(e["suggested_lr"]),
            _lr(e["config_peak_lr"]),
        ))
        if e["note"]:
            notes.append(f"* {e['note']}")
        if not e["diverged"]:
            notes.append(f"seq_len {e['seq_len']}: the loss never diverged up to --max-lr {_lr(report['max_lr'])}; "
                         f"its limit lies higher (raise --max-lr to find it)")
        elif e["max_stable_lr"] is None:
            notes.append(f"seq_len {e['seq_len']}: diverged at the first step; lower --min-lr")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    lines.append("")
    lines += notes
    rules = report["rules"]
    lines.append(f"diverged: {rules['divergence']}")
    lines.append(f"suggested: {rules['suggested_lr']} (steepest: fastest fall of the smoothed loss per log LR)")
    lines.append(f"plot: {report['plot']}" if report["plot"] else
                 "plot: none (matplotlib is not installed; pip install matplotlib)")
    lines.append(f"results: {report['results']}")
    if report["written"]:
        lines.append(f"wrote {report['written']['path']}: peak_lr of {report['written']['summary']}; "
                     f"check it with `gradus schedule {report['written']['path']}`")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ plot
def _plot(result, path: Path) -> str | None:
    """Smoothed loss vs LR (log x) for every length in one PNG; None (and one line on stderr) without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed, and never a window from a CLI
        import matplotlib.pyplot as plt
    except ImportError:
        print("lr-find: matplotlib is not installed (pip install matplotlib); no plot written", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for c in result.curves:
        n = len(c.smoothed)
        xs = c.lrs[:n]
        ys = [y if math.isfinite(y) else float("nan") for y in c.smoothed]
        (line,) = ax.plot(xs, ys, label=f"seq_len {c.probe.seq_len} × {c.probe.batch_size}")
        raw = [y if math.isfinite(y) else float("nan") for y in c.losses]
        ax.plot(xs, raw, color=line.get_color(), alpha=0.2, linewidth=0.8)
        st = c.stats
        if st.suggested_lr is not None:
            ax.axvline(st.suggested_lr, color=line.get_color(), linestyle=":", linewidth=1)
        if st.diverged_step is not None and st.diverged_step < n and math.isfinite(c.smoothed[st.diverged_step]):
            ax.plot([c.lrs[st.diverged_step]], [c.smoothed[st.diverged_step]], "x", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed; faint: raw)")
    ax.set_title(f"LR range test, {result.steps} steps per length (x: divergence, dotted: suggested peak)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


# ----------------------------------------------------------------------------------------- write
def unprobed_line(unprobed: list[dict], path: str) -> str:
    """The one line saying which stages ``--write`` left with their own LR (their length was not probed)."""
    names = ", ".join(f"{u['name']} (seq_len {u['seq_len']})" for u in unprobed)
    lengths = ",".join(str(n) for n in sorted({u["seq_len"] for u in unprobed}))
    return (f"--write {path}: {len(unprobed)} stage(s) not probed, peak LR left as configured: {names}; "
            f"add --seq-lens {lengths} (with the others) to tune them too")


def _write_config(args: argparse.Namespace, schedule: Schedule, suggestions: dict[int, float]) -> dict:
    """Write the config (as given, --set applied) with the suggested peak_lr per probed stage, check that
    it loads and schedules, and say what changed."""
    from gradus.train.lr_find import config_with_peaks

    source = config_source(args)
    raw = apply_overrides(read_yaml(str(source)), args.overrides or [])
    data, changes = config_with_peaks(raw, schedule, suggestions)
    path = Path(args.write)
    set_lines = [f"#   {c.name} (seq_len {c.seq_len}): {format_lr(c.old_lr)} ({c.old_source}) → {format_lr(c.new_lr)}"
                 for c in changes if c.new_lr is not None]
    kept = [f"{c.name} (seq_len {c.seq_len})" for c in changes if c.new_lr is None]
    header = [f"# Written by gradus lr-find from {source}: each probed stage's peak_lr is the LR range test's",
              "# suggestion for its seq_len (lr_multiplier / lr_rule removed there).", *set_lines]
    if kept:
        header.append(f"# Not probed, LR unchanged: {', '.join(kept)}")
    text = "\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    write_new_file(path, text, "--write")
    try:
        resolve_schedule(load_config(path))  # what gradus train will do with it: fail here, not there
    except BaseException:
        path.unlink(missing_ok=True)  # a config that would not train is not left to block the next --write
        raise
    summary = ", ".join(f"{c.name} {format_lr(c.new_lr)}" for c in changes if c.new_lr is not None) or "no stage"
    unprobed = [{"name": c.name, "seq_len": c.seq_len} for c in changes if c.new_lr is None]
    return {"path": str(path), "summary": summary, "unprobed": unprobed,
            "stages": [{"index": c.index, "name": c.name, "seq_len": c.seq_len, "old_lr": c.old_lr,
                        "old_source": c.old_source, "new_lr": c.new_lr} for c in changes]}
