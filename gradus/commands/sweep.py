"""``gradus sweep CONFIG --vary KEY=V1,V2 [--vary ...] | --ablation NAME [--budget TOKENS] [--seeds 0,1]
[--jobs N] [--write BEST.yaml]``: every arm through the real trainer at the same budget and evaluation."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from gradus.commands.common import add_config_arguments, load_from_args
from gradus.errors import ConfigError
from gradus.units import CountTooLarge, parse_count


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments ``gradus sweep`` and ``gradus compare`` share."""
    add_config_arguments(parser, required=False)
    parser.add_argument("--budget", metavar="TOKENS",
                        help="training tokens of every run, e.g. 200k (the stages keep their shares, in whole "
                             "steps); default: the config's own total")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds every arm runs (default 0)")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="runs at a time, each its own process (default: one per CPU core, or one per GPU)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch threads per run on CPU (default 1: several per process stall on a shared box)")
    parser.add_argument("--out", metavar="DIR", help="folder for the report, the PNG and every arm's run directory")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--calibration", choices=("measured", "windows"), default="measured",
                        help="how calibrated seconds price each stage shape: measured (default: its optimizer step "
                             "timed after the runs, every shape interleaved, cached in --out so a rerun or resume "
                             "reads it back) or windows (the runs' own logging windows, 90th-percentile throughput; "
                             "depends on their history and load)")


def parse_budget(text: str | None) -> int | None:
    """``--budget 200k`` -> 200000."""
    if text is None:
        return None
    try:
        budget = parse_count(text)
    except CountTooLarge as err:
        raise ConfigError(f"--budget {text}: {err}") from None
    except (ValueError, TypeError):
        raise ConfigError(f"--budget {text}: not a token count; write e.g. 200k, 1.5M or 250000") from None
    if budget <= 0:
        raise ConfigError(f"--budget {text}: give a positive number of tokens")
    return budget


def check_counts(args: argparse.Namespace) -> None:
    """``--jobs`` and ``--threads`` are positive, and a ``--target`` loss is a positive finite number."""
    for flag in ("jobs", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag} {value}: give 1 or more")
    target = getattr(args, "target", None)
    if target is not None and not (math.isfinite(target) and target > 0):
        raise ConfigError(f"--target {target}: give a loss above 0 (a cross-entropy in nats), e.g. --target 4.5")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradus sweep``."""
    add_experiment_arguments(parser)
    parser.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                        help="a config key and its values, one arm each; relative values scale the configured "
                             "one (optim.base_lr=0.5x,1x,1.5x); [*] means every stage "
                             "(curriculum.stages[*].seq_len=0.5x,1x); repeat for every combination")
    parser.add_argument("--ablation", metavar="NAME",
                        help="the lesson's ablations: lr (peak LR × 0.5/1/1.5), seq-vs-batch (sequence length vs "
                             "tokens per step at the same tokens), mix (each source's share ±15%%), depth-width "
                             "(deeper/shallower at the same non-embedding parameters, within 2%%)")
    parser.add_argument("--target", type=float, metavar="LOSS",
                        help="the loss that 'tokens→target' measures (default: the highest final loss of the arms)")
    parser.add_argument("--write", metavar="BEST.yaml", help="write your config with the winning arm's values")


def run(args: argparse.Namespace) -> int:
    """Check every arm, then run them and print the table."""
    from gradus.experiments.common import parse_seeds
    from gradus.experiments.sweep import run_sweep

    check_counts(args)
    budget = parse_budget(args.budget)
    seeds = parse_seeds(args.seeds)
    cfg = load_from_args(args)
    name = cfg.name or args.preset or Path(args.config or args.config_flag).stem
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{name}"
    run_sweep(cfg, varies=args.vary, ablation=args.ablation, budget=budget, seeds=seeds, out=out, jobs=args.jobs,
              threads=args.threads, target=args.target, write=Path(args.write) if args.write else None,
              plot=not args.no_plot, origin=f"preset {args.preset}" if args.preset else str(args.config or
                                                                                          args.config_flag),
              calibration=args.calibration)
    return 0
