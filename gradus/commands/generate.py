"""``gradus generate RUN --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]``.

Samples a continuation from a run (its newest checkpoint, or ``--checkpoint``), one checkpoint, or an
exported directory. ``--temperature 0`` (or ``--greedy``) is deterministic greedy decoding.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradus generate``."""
    parser.add_argument("run", metavar="RUN", help="run directory, checkpoint folder or exported --hf directory")
    parser.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    parser.add_argument("--checkpoint", metavar="WHICH", help="latest (default), best, or a step number")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's averaged (EMA) weights")
    parser.add_argument("--max-tokens", type=int, default=100, metavar="N", help="tokens to generate (default 100)")
    parser.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 = greedy (default 0.8)")
    parser.add_argument("--greedy", action="store_true", help="same as --temperature 0")
    parser.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens")
    parser.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling: smallest set with mass P")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--no-stop", action="store_true", help="keep going past the end-of-document token")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    parser.add_argument("--json", action="store_true", help="print prompt, token ids and text as JSON")


def run(args: argparse.Namespace) -> int:
    """Load the model, encode the prompt, sample, print."""
    from gradus.inference.generate import SamplingSettings, generate
    from gradus.inference.load import load_model

    settings = SamplingSettings(
        max_new_tokens=args.max_tokens, temperature=0.0 if args.greedy else args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_at_eos=not args.no_stop,
    )
    settings.check()  # before loading: a bad flag costs nothing
    loaded = load_model(args.run, args.checkpoint, ema=args.ema, device=args.device)
    tok = loaded.tokenizer
    prompt_ids = tok.encode(args.prompt) if args.prompt else []
    new = generate(loaded.model, prompt_ids, settings, eos_id=tok.eos_id)
    text = tok.decode(new)
    if args.json:
        print(json.dumps({"source": str(loaded.source), "prompt": args.prompt, "prompt_ids": prompt_ids,
                          "ids": new, "text": text, "settings": settings.__dict__}, indent=2))
    else:
        print(args.prompt + text)
    return 0
