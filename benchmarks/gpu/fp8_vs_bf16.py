#!/usr/bin/env python
"""FP8 against bf16 (issue 32 §2): tokens/s, MFU, peak memory and the loss after N steps, one model per call.

Two arms, the same config but ``train.precision`` (bf16, then fp8 with ``--recipe``), each run through the real
trainer (:func:`gradus.train.trainer.train`, the code path of ``gradus train``) for ``--steps`` steps of one
stage (``--seq-len`` × ``--batch``), same seed, same data (WikiText-2 and the GPT-2 tokenizer from
``$GRADUS_SHARED_DATA``, else ``../shared/data``), evaluation and checkpoints off. The trainer's own step clock
(:class:`gradus.train.metrics.StepReport` ``seconds``: data wait + train step) gives tokens/s as the median over
the steps after the first quarter (torch.compile builds its graphs at set-up, before any of them); MFU divides the
model's FLOPs per token × tokens/s by the device's **bf16** peak for both arms, so their MFU ratio is their speed
ratio. The loss after N steps is the mean of the last tenth of the steps' training losses.

The file ``benchmarks/results/gpu/fp8_<model>.json`` carries ``fp8_vs_bf16_tokens_per_s`` (fp8 ÷ bf16) and
``loss_ratio`` (fp8 ÷ bf16) once both arms are in it; the goal at 270M is ≥ 1.3 and within 1% (0.99 to 1.01).
Safe to rerun: an arm already in the file with the same settings is read back, not run again, so a call killed
by the device's 10-minute limit after the bf16 arm continues with the fp8 one.

1B on one GPU: ``--activation-checkpointing full`` (FSDP shards only across 2+ processes; alone it trains
unsharded, so it is not asked for here).

``--device cpu --smoke``: the tiny model, a few steps, fp8 through torchao's emulation (``train.fp8.emulate``):
a dry run of this script for the test suite (its figures are no GPU figures).

Examples::

    python benchmarks/gpu/fp8_vs_bf16.py --model 124M --steps 60            # on the GPU (run.sh fp8-124M)
    python benchmarks/gpu/fp8_vs_bf16.py --device cpu --smoke --out /tmp/fp8_tiny.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import REPO, RESULTS, cuda_missing, git_revision, machine_info, read_result, write_result  # noqa: E402

GPU_RESULTS = RESULTS / "gpu"
ARMS = ("bf16", "fp8")
DEFAULTS = {  # model: (seq_len, batch rows, steps); about 2-3 minutes per arm on an H100 with compile
    "tiny": (32, 4, 6), "124M": (1024, 32, 60), "270M": (1024, 16, 50), "1B": (1024, 8, 30)}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="fp8_vs_bf16.py", description="FP8 against bf16: tokens/s, MFU, memory and "
                                "loss after N steps, through the trainer")
    p.add_argument("--model", choices=tuple(DEFAULTS), help="model size preset (default 124M; --smoke: tiny)")
    p.add_argument("--steps", type=int, help="steps per arm (default by model)")
    p.add_argument("--seq-len", type=int, help="sequence length (default by model)")
    p.add_argument("--batch", type=int, help="rows per step (default by model)")
    p.add_argument("--recipe", choices=("tensorwise", "rowwise"), default="tensorwise", help="train.fp8.recipe")
    p.add_argument("--activation-checkpointing", choices=("none", "full"), default="none")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--compile", choices=("on", "off"), help="torch.compile (default: on for cuda)")
    p.add_argument("--smoke", action="store_true", help="a dry run: tiny model, few steps (with --device cpu)")
    p.add_argument("--data", type=Path, help="folder with wikitext-2/ and gpt2-tokenizer/ (default: "
                   "$GRADUS_SHARED_DATA, else ../shared/data)")
    p.add_argument("--out", type=Path, help="result file (default benchmarks/results/gpu/fp8_<model>.json)")
    args = p.parse_args(argv)
    args.model = args.model or ("tiny" if args.smoke else "124M")
    seq, batch, steps = DEFAULTS[args.model]
    args.seq_len, args.batch, args.steps = args.seq_len or seq, args.batch or batch, args.steps or steps
    if args.steps < 4:
        p.error("--steps must be at least 4 (a quarter is skipped as warm-up)")
    args.compile = args.compile or ("on" if args.device == "cuda" else "off")
    args.data = args.data or Path(os.environ.get("GRADUS_SHARED_DATA", REPO.parent / "shared" / "data"))
    args.out = args.out or GPU_RESULTS / f"fp8_{args.model}.json"
    return args


def settings(args: argparse.Namespace) -> dict:
    """What both arms share; an arm in the file with other settings is run again."""
    return {"model": args.model, "steps": args.steps, "seq_len": args.seq_len, "batch": args.batch,
            "recipe": args.recipe, "activation_checkpointing": args.activation_checkpointing,
            "device": args.device, "compile": args.compile}


def arm_config(args: argparse.Namespace, precision: str) -> dict:
    """The run's config as plain data: one stage, evaluation and checkpoints off, a record every step."""
    tokens = args.steps * args.seq_len * args.batch
    return {
        "model": {"preset": args.model, "max_seq_len": args.seq_len},
        "data": {"sources": [{"name": "wiki", "path": str(args.data / "wikitext-2" / "train.jsonl")}],
                 "tokenizer": {"name_or_path": str(args.data / "gpt2-tokenizer")},
                 "validation": {"tokens": args.seq_len * 2, "max_documents": 50}},
        "curriculum": {"schedule": "wsd", "global_warmup_fraction": 0.1, "cooldown_fraction": 0.2,
                       "target_tokens": tokens,
                       "stages": [{"name": f"s{args.seq_len}", "seq_len": args.seq_len, "batch_size": args.batch,
                                   "tokens": tokens}]},
        "optim": {"base_lr": 6e-4 if args.model != "tiny" else 3e-3},
        "train": {"seed": 0, "device": args.device, "precision": precision, "compile": args.compile,
                  "max_steps": args.steps, "eval_every": 10**9, "eval_at_stage_change": False,
                  "checkpoint_every": None, "save_best": False, "early_stopping_patience": None,
                  "activation_checkpointing": args.activation_checkpointing,
                  "fp8": {"recipe": args.recipe, "emulate": args.device == "cpu"},
                  **({"threads": 1} if args.device == "cpu" else {})},
        "logging": {"log_every": 1, "tensorboard": False, "progress_bar": False},
    }


def run_arm(args: argparse.Namespace, precision: str, work: Path) -> dict:
    """Train one arm and summarise its steps."""
    import torch

    from gradus.config import from_dict
    from gradus.sizes import resolve_shape
    from gradus.train.runtime import peak_flops
    from gradus.train.trainer import train

    cfg = from_dict(arm_config(args, precision), f"fp8_vs_bf16 {precision}")
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reports = []
    result = train(cfg, work / precision, quiet=True, on_step=reports.append)
    peak_memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    steady = reports[len(reports) // 4:]
    tokens_per_step = reports[-1].tokens_per_step
    step_s = statistics.median(r.seconds for r in steady)
    tokens_per_s = tokens_per_step / step_s
    from gradus.data import load_tokenizer

    shape = resolve_shape(cfg.model, load_tokenizer(cfg.data, run_dir=work / precision).vocab_size)
    peak, source = peak_flops(device, None, "bf16")
    tail = [r.loss for r in reports[-max(1, len(reports) // 10):]]
    return {
        "precision": precision, "steps": result.step, "tokens_per_step": tokens_per_step,
        "step_time_s": step_s, "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * shape.flops_per_token(args.seq_len) / peak, "peak_flops": peak,
        "peak_flops_source": source, "peak_memory_bytes": peak_memory,
        "loss_after_n_steps": sum(tail) / len(tail), "losses": [r.loss for r in reports],
        "params_total": shape.params_total, "settings": settings(args),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the arms the file lacks, then write the ratios once both are in."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    if cuda_missing("fp8_vs_bf16.py", args.device):
        return 2
    report = read_result(args.out, "fp8_vs_bf16.py") if args.out.is_file() else {}
    arms = {k: v for k, v in report.get("arms", {}).items() if v.get("settings") == settings(args)}
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    report = {"benchmark": "fp8_vs_bf16", "command": "python benchmarks/gpu/fp8_vs_bf16.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "git": git_revision(), "machine": machine_info(device),
        "settings": settings(args), "arms": arms, "smoke": args.smoke}
    for precision in ARMS:
        if precision in arms:
            print(f"{precision}: read back from {args.out}", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix=f"fp8-{precision}-") as tmp:
            from gradus.errors import GradusError

            try:
                arms[precision] = run_arm(args, precision, Path(tmp))
            except GradusError as exc:
                print(f"fp8_vs_bf16.py: error: {exc}", file=sys.stderr)
                return 2
        a = arms[precision]
        arms[precision]["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        print(f"{precision}: {a['tokens_per_s']:,.0f} tokens/s, MFU {a['mfu']:.3f}, loss after {a['steps']} steps "
              f"{a['loss_after_n_steps']:.4f}", flush=True)
        write_result(args.out, report)  # after each arm: a killed call keeps what it finished
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if all(p in arms for p in ARMS):
        report["fp8_vs_bf16_tokens_per_s"] = arms["fp8"]["tokens_per_s"] / arms["bf16"]["tokens_per_s"]
        report["loss_ratio"] = arms["fp8"]["loss_after_n_steps"] / arms["bf16"]["loss_after_n_steps"]
        report["goal"] = "fp8_vs_bf16_tokens_per_s >= 1.3 at 270M with |loss_ratio - 1| <= 0.01"
        print(f"fp8 ÷ bf16: tokens/s {report['fp8_vs_bf16_tokens_per_s']:.3f}, loss {report['loss_ratio']:.4f}")
    write_result(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
