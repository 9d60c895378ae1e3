"""``gradus compare CONFIG [--baseline auto|FILE] [--half-batch-baseline] [--tune-lr [--finalists N]] [--budget TOKENS |
--budgets T1,T2,... [--forecast TOKENS]] [--seeds 0,1] [--jobs N]``:
does the curriculum pay off on this data and model? Against one stage at its final length and tokens per step."""

from __future__ import annotations

import argparse
from pathlib import Path

from gradus.commands.common import load_from_args
from gradus.commands.sweep import add_experiment_arguments, check_counts, parse_budget

DEFAULT_FINALISTS = 2
"""Finalists of a tuned compare over several seeds: at small budgets the first seed's best LR can be that seed's
luck (BENCHMARKS.md, 1M tokens: 0.29–0.46 worse at the other seeds); a second finalist costs one run per arm and
extra seed."""


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
                             "an edge until the best is inside, then the best (see --finalists) at the other seeds")
    parser.add_argument("--finalists", type=int, default=None, metavar="N",
                        help="with --tune-lr: the best N LRs of the first seed run at every seed and the lowest "
                             f"median final loss wins (default {DEFAULT_FINALISTS} with several seeds, else 1); "
                             "guards against an LR that only the first seed favours")
    parser.add_argument("--budgets", metavar="T1,T2,...",
                        help="compare at each of these budgets (e.g. 250k,500k,1M,2M: two or more, increasing), "
                             "each complete in OUT/budget-<tokens>, and fit how the speedup changes with the budget")
    parser.add_argument("--forecast", metavar="TOKENS",
                        help="with --budgets: read the trend at your planned run's tokens (e.g. 5B), with an "
                             "interval and how far that reaches beyond the budgets measured")


def finalists(args: argparse.Namespace, seeds: list[int]) -> int:
    """The finalists a compare runs: ``--finalists`` as given (checked), else DEFAULT_FINALISTS when tuning over
    several seeds and 1 otherwise."""
    from gradus.errors import ConfigError

    if args.finalists is None:
        return DEFAULT_FINALISTS if args.tune_lr and len(seeds) > 1 else 1
    if args.finalists < 1:
        raise ConfigError(f"--finalists {args.finalists}: give 1 or more LRs to run at every seed")
    if args.finalists > 1 and not args.tune_lr:
        raise ConfigError(f"--finalists {args.finalists} chooses among tuned LRs: add --tune-lr")
    return args.finalists


def run(args: argparse.Namespace) -> int:
    """Check both arms, run them, print the table and the verdict."""
    from gradus.errors import ConfigError
    from gradus.experiments.common import parse_seeds
    from gradus.experiments.compare import run_compare
    from gradus.experiments.compare_budgets import parse_budgets, parse_forecast, run_compare_budgets

    check_counts(args)
    budget = parse_budget(args.budget)
    budgets = parse_budgets(args.budgets) if args.budgets is not None else None
    forecast_tokens = parse_forecast(args.forecast)
    if budgets is not None and budget is not None:
        raise ConfigError(f"--budget {args.budget} and --budgets {args.budgets}: give one of them")
    if forecast_tokens is not None and budgets is None:
        raise ConfigError(f"--forecast {args.forecast} reads a trend over budgets: add --budgets (e.g. 250k,500k,1M)")
    seeds = parse_seeds(args.seeds)
    n_finalists = finalists(args, seeds)
    cfg = load_from_args(args)
    if args.baseline != "auto" and not Path(args.baseline).is_file():
        raise ConfigError(f"--baseline {args.baseline}: no such config file; give a YAML file or auto")
    name = cfg.name or args.preset or Path(args.config or args.config_flag).stem
    out = Path(args.out) if args.out else Path("runs") / f"compare-{name}"
    origin = f"preset {args.preset}" if args.preset else str(args.config or args.config_flag)
    if budgets is not None:
        run_compare_budgets(cfg, budgets=budgets, forecast_tokens=forecast_tokens, out=out, baseline=args.baseline,
                            seeds=seeds, tune_lr=args.tune_lr, finalists=n_finalists,
                            half_batch_baseline=args.half_batch_baseline, jobs=args.jobs, threads=args.threads,
                            plot=not args.no_plot, origin=origin, calibration=args.calibration)
        return 0
    run_compare(cfg, baseline=args.baseline, budget=budget, seeds=seeds, out=out, tune_lr=args.tune_lr,
                finalists=n_finalists,
                half_batch_baseline=args.half_batch_baseline,
                jobs=args.jobs, threads=args.threads, plot=not args.no_plot,
                origin=origin, calibration=args.calibration)
    return 0
