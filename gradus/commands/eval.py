"""``gradus eval RUN --data SOURCE [--seq-len N] [--tokens N] [--json]``.

Loss, perplexity and next-token accuracy of a run's model on any source (see
:mod:`gradus.inference.scoring` for the forms SOURCE takes), at any sequence length.
"""

from __future__ import annotations

import argparse
import json
import math

DEFAULT_TOKENS = 65536
"""Tokens scored without ``--tokens`` (one window when the window is longer)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradus eval``."""
    parser.add_argument("run", metavar="RUN", help="run directory, checkpoint folder or exported --hf directory")
    parser.add_argument("--data", required=True, metavar="SOURCE",
                        help="a source of the run (its held-out documents), builtin:NAME, hf:DATASET[@SPLIT], "
                             "a file/folder/glob, or a YAML mapping of source fields")
    parser.add_argument("--seq-len", type=int, metavar="N",
                        help="window length (default: the run's evaluation length, else the model's context)")
    parser.add_argument("--tokens", type=int, metavar="N",
                        help=f"tokens scored at most (default {DEFAULT_TOKENS}, or one window where that is longer)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="windows per forward pass (default 8)")
    parser.add_argument("--checkpoint", metavar="WHICH", help="latest (default), best, or a step number")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's averaged (EMA) weights")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def default_seq_len(loaded) -> int:
    """The run's evaluation reference length (train.eval_reference_seq_len, else its longest stage),
    else the model's context."""
    cfg = loaded.config
    if cfg is not None:
        if getattr(cfg.train, "eval_reference_seq_len", None):
            return int(cfg.train.eval_reference_seq_len)
        lengths = [s.seq_len for s in cfg.curriculum.stages if getattr(s, "seq_len", None)]
        if lengths:
            return int(max(lengths))
    return int(loaded.model.shape.max_seq_len)


def run(args: argparse.Namespace) -> int:
    """Load the model, read and tokenise the source, score it, print."""
    from gradus.errors import ConfigError
    from gradus.inference.load import load_model
    from gradus.inference.scoring import score, source_from_spec, source_tokens

    for flag, value in (("--seq-len", args.seq_len), ("--tokens", args.tokens), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag}={value}: must be at least 1")
    loaded = load_model(args.run, args.checkpoint, ema=args.ema, device=args.device)
    src = source_from_spec(args.data, loaded.config)
    seq_len = args.seq_len or default_seq_len(loaded)
    if args.tokens is not None and args.tokens < seq_len:  # "at most N" cannot hold one window: say so
        where = ("--seq-len" if args.seq_len else "the run's evaluation length" if loaded.config is not None
                 else "the model's context")
        raise ConfigError(f"--tokens {args.tokens}: less than one window of {seq_len} ({where}); give --tokens "
                          f"{seq_len} or more, or --seq-len {args.tokens} or less")
    budget = args.tokens if args.tokens is not None else max(DEFAULT_TOKENS, seq_len)
    tokens, docs = source_tokens(src, loaded.tokenizer, budget)
    result = score(loaded.model, tokens, seq_len, args.batch_size)
    context = loaded.model.shape.max_seq_len
    report = {"model": str(loaded.source), "step": loaded.meta.get("step"), "data": args.data,
              "what": src.label, "documents": docs, "context": context, **result}
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                          for k, v in report.items()}, indent=2))
        return 0
    print(f"gradus eval — {loaded.describe()}")
    print(f"  data      {src.label}: {docs:,} documents, {result['tokens']:,} tokens scored "
          f"in {result['windows']:,} windows of {seq_len}")
    if seq_len > context:
        print(f"  note      {seq_len} is beyond the model's context {context}: positions past it are extrapolation")
    print(f"  loss      {result['loss']:.4f}")
    print(f"  ppl       {result['ppl']:.2f}")
    print(f"  accuracy  {result['accuracy']:.4f} (next token)")
    return 0
