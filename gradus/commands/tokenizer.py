"""``gradus tokenizer train CONFIG | --preset NAME --vocab-size N --out DIR``.

Trains a byte-level BPE (EOS ``<|endoftext|>`` included) on the configured sources — the first
``data.tokenizer.train_max_documents`` documents of each, held-out validation documents excluded — and
saves ``DIR/tokenizer.json``. Point ``data.tokenizer.name_or_path`` at it to use it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gradus.commands.common import add_config_arguments, load_from_args
from gradus.errors import ConfigError
from gradus.files import check_new_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of this command: the ``train`` action and its options."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    train = sub.add_parser("train", help="train a byte-level BPE on the configured sources",
                           description="Train a byte-level BPE on the configured sources and save it.")
    add_config_arguments(train)
    train.add_argument("--vocab-size", type=int, required=True, metavar="N", help="vocabulary size (> 256)")
    train.add_argument("--out", required=True, metavar="DIR", help="folder to write tokenizer.json into")
    train.add_argument("--max-documents", type=int, metavar="N",
                       help="documents read per source (default: data.tokenizer.train_max_documents)")
    train.add_argument("--json", action="store_true", help="print the result as JSON")


MAX_VOCAB = 1 << 20
"""The largest ``--vocab-size`` accepted: far above any vocabulary in use (Gemma's 256k), well below what the
BPE trainer's own memory can hold (it aborts the process, with no Python error, at 10^9)."""


def _output_folder(value: str) -> Path:
    """``--out DIR`` checked before training: a folder (or a new name) without a tokenizer.json in it, so a
    finished tokenizer is never replaced and a file given as DIR fails now, not after the training."""
    from gradus.data.tokenizer import TOKENIZER_FILE  # here: the parser imports this module for every command

    out = Path(value)
    try:
        is_file = out.is_file()
    except OSError:
        is_file = False  # a folder on the way this user may not read: check_new_file names it
    if is_file:
        raise ConfigError(f"--out {out}: that is a file; give a folder to write tokenizer.json into")
    check_new_file(out / TOKENIZER_FILE, "--out")
    return out


def run(args: argparse.Namespace) -> int:
    """Train and save the tokenizer; print where it went and its identity."""
    if getattr(args, "action", None) != "train":
        raise ConfigError("gradus tokenizer: give an action, e.g. gradus tokenizer train --preset demo "
                          "--vocab-size 4096 --out tok/")
    if args.vocab_size <= 256:
        raise ConfigError(f"--vocab-size={args.vocab_size}: must be above 256 (the byte alphabet)")
    if args.vocab_size > MAX_VOCAB:
        raise ConfigError(f"--vocab-size={args.vocab_size}: at most {MAX_VOCAB:,} (the largest vocabularies in use "
                          "are ~256k); give a smaller size")
    out = _output_folder(args.out)
    if args.max_documents is not None and args.max_documents < 1:
        raise ConfigError(f"--max-documents={args.max_documents}: must be at least 1")
    from gradus.data.tokenizer import train_tokenizer

    cfg = load_from_args(args)
    t0 = time.perf_counter()
    tok = train_tokenizer(cfg.data, args.vocab_size, args.max_documents)
    path = tok.save(out)
    seconds = time.perf_counter() - t0
    result = {"path": str(path), "seconds": round(seconds, 2), **tok.identity()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"trained a byte-level BPE of {tok.vocab_size:,} tokens in {seconds:.1f}s on "
              f"{len(cfg.data.sources)} source(s); EOS {tok.eos_token!r} = {tok.eos_id}")
        print(f"saved {path} (sha256 {result['sha256'][:16]})")
        print(f"use it with: --set data.tokenizer.name_or_path={path} --set data.tokenizer.train_vocab_size=null")
    return 0
