"""``gradus compare CONFIG [--baseline auto|FILE] [--half-batch-baseline] [--tune-lr [--finalists N]] [--budget TOKENS] [--seeds 0,1] [--jobs N]``:
does the curriculum pay off on this data and model? Against one stage at its final length and tokens per step."""

from __future__ import annotations

import argparse
from pathlib import Path

from gradus.commands.common import load_from_args
from gradus.commands.sweep import add_experiment_arguments, check_counts, parse_budget


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradus compare``."""
    add_experiment_arguments(parser)
    parser.add_argument("--baseline", default="auto", metavar="auto|FILE",
                        help="auto (default): one stage at the curriculum's final length and tokens per step; or "
                             "a config file to compare against")
    parser.add_argument("--half-batch-baseline", action="store_true",
                        help="also run the baseline at half its tokens per step; the lower of the two baselines' "
                             "final losses is the target (so smaller early batches are not credited to the "
                             "curriculum when a smaller batch alone would do as well)")
    parser.add_argument("--tune-lr", action="store_true",
                        help="tune every arm's LR the same way: base LR × 0.5/1/2 at the first seed, extended ×2 at "
                             "an edge until the best is inside, then the best at the other seeds")
    parser.add_argument("--finalists", type=int, default=1, metavar="N",
                        help="with --tune-lr: the best N LRs of the first seed run at every seed and the lowest "
                             "median final loss wins (default 1); guards against an LR that only the first seed "
                             "favours")


def run(args: argparse.Namespace) -> int:
    """Check both arms, run them, print the table and the verdict."""
    from gradus.errors import ConfigError
    from gradus.experiments.compare import run_compare
    from gradus.experiments.sweep import parse_seeds

    check_counts(args)
    if args.finalists < 1:
        raise ConfigError(f"--finalists {args.finalists}: give 1 or more LRs to run at every seed")
    if args.finalists > 1 and not args.tune_lr:
        raise ConfigError(f"--finalists {args.finalists} chooses among tuned LRs: add --tune-lr")
    budget = parse_budget(args.budget)
    seeds = parse_seeds(args.seeds)
    cfg = load_from_args(args)
    if args.baseline != "auto" and not Path(args.baseline).is_file():
        raise ConfigError(f"--baseline {args.baseline}: no such config file; give a YAML file or auto")
    name = cfg.name or args.preset or Path(args.config or args.config_flag).stem
    out = Path(args.out) if args.out else Path("runs") / f"compare-{name}"
    run_compare(cfg, baseline=args.baseline, budget=budget, seeds=seeds, out=out, tune_lr=args.tune_lr,
                finalists=args.finalists,
                half_batch_baseline=args.half_batch_baseline,
                jobs=args.jobs, threads=args.threads, plot=not args.no_plot,
                origin=f"preset {args.preset}" if args.preset else str(args.config or args.config_flag))
    return 0
