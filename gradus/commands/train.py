"""``gradus train [--config FILE | --preset NAME] [--set k=v ...] [--out DIR] [--resume]``.

With no config the offline ``demo`` preset runs. An ``--out`` directory that already holds checkpoints is
continued (its config.yaml is used when no config is given); ``--resume`` alone continues the newest run
under ./runs. Without ``--out``, the same command continues the newest stopped run of the same name and
config (a stop prints how to continue), else it starts ``runs/<name>-<time>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from gradus.commands.common import add_config_arguments, load_from_args
from gradus.config import load_config
from gradus.errors import ConfigError
from gradus.train.storage.run_dir import RunDir

DEFAULT_PRESET = "demo"
RUNS_DIR = Path("runs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradus train``."""
    add_config_arguments(parser, required=False)
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/<name>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out (default: the newest under ./runs)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="continue even if the stage table, world size or tokenizer changed")
    parser.add_argument("--stop-at-step", type=int, metavar="N",
                        help="stop cleanly with a checkpoint after step N (as if preempted)")
    parser.add_argument("--quiet", action="store_true", help="no console output (and no report: see --no-report)")
    parser.add_argument("--no-report", action="store_true",
                        help="do not write RUN/report (the pictures and page of gradus report) when the run finishes")


def _has_checkpoints(run_dir: Path) -> bool:
    return RunDir(run_dir).has_checkpoints()


def _newest_run() -> Path:
    candidates = [p for p in RUNS_DIR.glob("*") if p.is_dir() and _has_checkpoints(p)] if RUNS_DIR.is_dir() else []
    if not candidates:
        raise ConfigError("--resume: no run with checkpoints under ./runs; give the run with --out DIR")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def run(args: argparse.Namespace) -> int:
    """Resolve the config and the run directory, then train."""
    from gradus.train.recovery import exit_code
    from gradus.train.trainer import train  # torch only when training

    out = Path(args.out) if args.out else None
    if args.resume and out is None:
        out = _newest_run()
    continuing = out is not None and _has_checkpoints(out)
    if args.resume and not continuing:
        raise ConfigError(f"--resume: {out} holds no checkpoints to continue; drop --resume to start a new run there")
    explicit = args.config or args.config_flag or args.preset
    # A run killed before its first checkpoint starts again from its own config, not the demo preset.
    if (continuing or (out is not None and RunDir(out).config.is_file())) and not explicit:
        saved = RunDir(out).config
        if not saved.is_file():
            raise ConfigError(f"{saved} is missing; give the run's config with --config FILE")
        cfg = load_config(saved, args.overrides)
    else:
        cfg = load_from_args(args, default_preset=DEFAULT_PRESET)  # a preset's problems name it, not its file
    if out is None:
        name = cfg.name or args.preset or (Path(explicit).stem if explicit else DEFAULT_PRESET)
        out = _stopped_run(name, cfg)
        if out is not None:
            print(f"gradus: continuing the stopped run {out} (the same config; give --out DIR to start a new run)")
        else:
            out = RUNS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.stop_at_step is not None and args.stop_at_step <= 0:
        raise ConfigError(f"--stop-at-step={args.stop_at_step}: give a positive step number")
    result = train(cfg, out, resume=True, allow_config_change=args.allow_config_change,
                   stop_at_step=args.stop_at_step, quiet=args.quiet)
    code, why = exit_code(out, result.step)  # status.json: 0 finished or stopped (resumable), 3 diverged
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun one process speaks for the run
    if why:
        print(f"gradus: error: {why}", file=sys.stderr)
    elif args.quiet or not main_rank:
        pass
    elif result.reason.startswith("stopped"):
        print(f"to continue: run the same command again, or gradus train --out {out}")
    else:
        for line in finished_lines(out, report=not args.no_report):
            print(line)
    return code


def finished_lines(run: Path, report: bool = True) -> list[str]:
    """What a finished ``gradus train`` prints last: where its report is (written here unless ``report`` is
    False; a failure to write it is said in one line and leaves no folder) and what to do next."""
    lines = []
    if report:
        from gradus.errors import GradusError, first_line
        from gradus.report.page import write_report

        try:
            page = write_report(run)
        except (GradusError, OSError) as err:
            lines.append(f"report: not written ({first_line(err)}); gradus report {run} writes it")
        else:
            pictures = len(list(page.parent.glob("*.png")))
            lines.append(f"report: {page} ({pictures} pictures of the loss, schedule and throughput; open it in a browser)")
    else:
        lines.append(f"report: gradus report {run} (pictures of the loss, schedule and throughput, one HTML page)")
    lines += [
        f"next:   gradus generate {run} --prompt \"...\"   sample text from the model",
        f"        gradus eval {run} --data SOURCE       loss on a run's source, a file or builtin:NAME",
        f"        gradus export {run} --hf DIR          a Hugging Face (Llama) directory for transformers",
    ]
    return lines


def _stopped_run(name: str, cfg) -> Path | None:
    """The newest run of this name under ./runs that was stopped (a signal or --stop-at-step: resumable) with
    exactly this config, which the same ``gradus train`` command continues (the README's promise); None when
    there is none, and a new run starts."""
    from gradus.config import dump_yaml

    if not RUNS_DIR.is_dir():
        return None
    text = dump_yaml(cfg)
    for run in sorted(RUNS_DIR.glob(f"{name}-*"), key=lambda p: p.stat().st_mtime, reverse=True):
        rd = RunDir(run)
        status = rd.read_status() or {}
        # Stopped, or failed after a checkpoint (a full disk, a signal during a resume's set-up): resumable.
        if not (status.get("status") == "stopped" or status.get("resumable")) or not _has_checkpoints(run):
            continue
        try:
            if rd.config.read_text(encoding="utf-8") == text:
                return run
        except OSError:
            continue
    return None
