"""``gradus export RUN_OR_CHECKPOINT --hf DIR [--checkpoint best|latest|N] [--ema] [--dtype fp32|bf16|fp16] [--force]``.

Writes a Hugging Face ``transformers`` directory in the Llama layout (config.json, model.safetensors,
tokenizer files) that ``AutoModelForCausalLM.from_pretrained(DIR)`` loads; see :mod:`gradus.export.hf`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gradus.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradus export``."""
    parser.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="run directory or one checkpoint folder")
    parser.add_argument("--hf", metavar="DIR", help="write a Hugging Face (Llama) model directory here")
    parser.add_argument("--checkpoint", metavar="WHICH",
                        help="which checkpoint of a run: latest (default), best, or a step number")
    parser.add_argument("--ema", action="store_true", help="export the checkpoint's averaged (EMA) weights")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="weights dtype in the export (default fp32)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --hf directory")


def refuse_replacing_a_run(out: Path, source: Path) -> None:
    """``--force`` replaces ``out`` whole: refuse when it is or holds the run or checkpoint exported from, or any
    training run (a run folder, a checkpoint), a few levels down, since that would delete checkpoints and
    metrics, not an earlier export."""
    from gradus.train.storage.run_dir import CheckpointFiles, RunDir

    if not out.is_dir():
        return
    target, src = out.resolve(), source.resolve()
    inside = src == target or target in src.parents
    holds = any(d.is_dir() and (RunDir.of(d).checkpoints.is_dir() or RunDir.of(d).status.is_file()
                                or CheckpointFiles(d).state.is_file())
                for d in [out, *out.glob("*"), *out.glob("*/*")])
    if inside or holds:
        raise ConfigError(f"--hf {out}: holds {'the run exported from' if inside else 'a training run'}, which "
                          "--force would delete; export to another directory")


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, check that Llama can express it, write the directory."""

    from gradus.export.hf import check_destination, export_hf
    from gradus.export.llama import export_problems
    from gradus.inference.load import is_hf_dir, load_model, raw_shape_fields, resolve_checkpoint

    if not args.hf:
        raise ConfigError("gradus export: give the output with --hf DIR (the only format so far)")
    check_destination(Path(args.hf), args.force)  # before the (slow) load: nothing is read or written
    if args.force:
        refuse_replacing_a_run(Path(args.hf), Path(args.run))
    fields = None
    if not is_hf_dir(Path(args.run)):
        # The stored shape first: a field Llama cannot express is reported as that, not as a load error.
        fields = raw_shape_fields(resolve_checkpoint(args.run, args.checkpoint))
        problems = export_problems(fields, [])
        if problems:
            raise ConfigError(*problems)
    loaded = load_model(args.run, args.checkpoint, ema=args.ema)
    provenance = {"source": str(loaded.source), "ema": args.ema,
                  **{k: loaded.meta[k] for k in ("step", "tokens", "stage") if k in loaded.meta}}
    out = export_hf(loaded.model, loaded.tokenizer, args.hf, force=args.force, dtype=args.dtype,
                    provenance=provenance, shape_fields=fields)
    print(f"exported {loaded.describe()}")
    print(f"  -> {out} (LlamaForCausalLM, {args.dtype}); load with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0
