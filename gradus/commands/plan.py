"""``gradus plan``: the compute-optimal worksheet, or the per-stage timeline of a config.

Worksheet (from a budget)::

    gradus plan --flops 2e22
    gradus plan --gpus 8 --gpu h100 --days 14 --mfu 0.4 [--write run.yaml] [--json]
    gradus plan --params 1B            gradus plan --tokens 20B          gradus plan --flops 1e21 --tokens 50B

Timeline (of a config)::

    gradus plan --config FILE | --preset NAME [--tokens-per-sec N | --measure | --gpu NAME]
                [--dataset-tokens N] [--device-memory 24GB] [--json]

torch is imported only for ``--measure``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gradus.commands.common import add_config_arguments, config_source, load_from_args
from gradus.errors import ConfigError
from gradus.files import check_new_file, write_new_file

WORKSHEET_FLAGS = ("flops", "days", "params", "tokens", "write", "ratio", "kappa", "seq_len", "long_seq_len",
                   "tokens_per_step", "warmup", "min_lr_ratio")
TIMELINE_FLAGS = ("tokens_per_sec", "measure", "dataset_tokens", "device_memory", "device", "precision",
                  "micro_batch", "measure_steps")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of this command."""
    add_config_arguments(parser, required=False)
    w = parser.add_argument_group("worksheet (a budget → N, D, shape, steps, LR, stages A–D)")
    w.add_argument("--flops", metavar="C", help="compute budget in FLOPs, e.g. 2e22")
    w.add_argument("--gpus", metavar="K", help="number of GPUs (with --gpu; default 1)")
    w.add_argument("--gpu", metavar="NAME", help="a100, h100, h200, rtx4090, l40s or a10g (peak dense bf16 from a table)")
    w.add_argument("--days", metavar="T", help="days of training: with --gpu this is the budget")
    w.add_argument("--mfu", metavar="U", help="model FLOPs utilisation, 0–1 (default 0.4)")
    w.add_argument("--params", metavar="N", help="plan around a fixed model size, e.g. 1B (non-embedding)")
    w.add_argument("--tokens", metavar="D", help="plan around a data budget, e.g. 20B (unique tokens available)")
    w.add_argument("--ratio", metavar="R", help="tokens per parameter, 10–30 (default 20)")
    w.add_argument("--kappa", metavar="K", help="FLOPs per parameter per token, 6–8 (default 6)")
    w.add_argument("--seq-len", metavar="L", help="base context length of stages B and D (default 2048)")
    w.add_argument("--long-seq-len", metavar="L", help="stage C's long context (default 4 × --seq-len)")
    w.add_argument("--tokens-per-step", metavar="N", help="global tokens per step (default by size, 32K–196K)")
    w.add_argument("--warmup", metavar="F", help="warmup fraction of the steps, 0.01–0.02 (default 0.01)")
    w.add_argument("--min-lr-ratio", metavar="F", help="cosine floor as a fraction of the peak, 0.1–0.2 (default 0.1)")
    w.add_argument("--vocab-size", metavar="V", help="vocabulary size (default: the config's tokenizer, else 50257)")
    w.add_argument("--write", metavar="FILE", help="write the stages A–C curriculum config for gradus train")
    t = parser.add_argument_group("timeline (a config → time, coverage and memory per stage)")
    t.add_argument("--tokens-per-sec", metavar="N", help="throughput to time the stages with, e.g. 85k")
    t.add_argument("--measure", action="store_true", help="time a few real steps of every stage's shape here")
    t.add_argument("--measure-steps", metavar="K", help="timed steps per stage with --measure (default 3)")
    t.add_argument("--device", help="device for --measure (default: the config's train.device)")
    t.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16", "fp8"),
                   help="precision for memory and --measure (default: the config's; auto = bf16, fp32 on CPU)")
    t.add_argument("--micro-batch", metavar="M", help="micro-batch for memory and --measure (default: fitted)")
    t.add_argument("--dataset-tokens", metavar="N", help="dataset size in tokens, for coverage per stage")
    t.add_argument("--device-memory", metavar="SIZE", help="device memory to check stages against, e.g. 24GB")
    parser.add_argument("--forecast-from", metavar="COMPARE.json",
                        help="the compare.json of a `gradus compare --budgets` run on your data: print the "
                             "curriculum's forecast speedup at this plan's token budget")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    out = []
    for name in names:
        value = getattr(args, name, None)
        if value not in (None, False):
            out.append("--" + name.replace("_", "-"))
    return out


def run(args: argparse.Namespace) -> int:
    """Print the worksheet or the timeline."""
    has_config = bool(args.config or getattr(args, "config_flag", None) or args.preset)
    if has_config:
        clash = _given(args, WORKSHEET_FLAGS)
        if clash:
            raise ConfigError(
                f"{', '.join(clash)}: worksheet option(s) (planning from a budget), but a config was given "
                f"for a timeline; drop the config to fill the worksheet, or drop {clash[0]}"
            )
        return _timeline(args)
    timeline_only = _given(args, TIMELINE_FLAGS)
    if timeline_only:
        raise ConfigError(
            f"{timeline_only[0]} is a timeline option and needs a config: add --config FILE or --preset NAME"
        )
    if args.overrides:
        raise ConfigError("--set needs a config: add --config FILE or --preset NAME")
    return _worksheet(args)


# ------------------------------------------------------------------------------------- worksheet
def _hardware(args: argparse.Namespace, *, need_days: bool) -> Any:
    from gradus.plan.hardware import gpu_spec, parse_float
    from gradus.plan.inputs import Hardware

    if args.gpu is None:
        orphan = _given(args, ("gpus", "mfu")) + (_given(args, ("days",)) if need_days else [])
        if orphan:
            raise ConfigError(f"{orphan[0]} needs --gpu NAME (a100, h100, h200, rtx4090, l40s or a10g)")
        return None
    gpus = parse_float(args.gpus, "--gpus") if args.gpus is not None else 1
    if gpus != int(gpus):
        raise ConfigError(f"--gpus {args.gpus}: must be a whole number of GPUs")
    mfu = parse_float(args.mfu, "--mfu") if args.mfu is not None else 0.4
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu {args.mfu}: a utilisation between 0 and 1 (0.3–0.5 is typical)")
    days = parse_float(args.days, "--days") if need_days and args.days is not None else None
    return Hardware(gpu=gpu_spec(args.gpu), gpus=int(gpus), mfu=mfu, days=days)


def _int_flag(value: str | None, flag: str) -> int | None:
    from gradus.plan.hardware import parse_amount

    if value is None:
        return None
    x = parse_amount(value, flag)
    if x != int(x) or x < 1:
        raise ConfigError(f"{flag} {value}: must be a positive whole number")
    return int(x)


def _worksheet(args: argparse.Namespace) -> int:
    from gradus.plan.hardware import parse_amount, parse_float
    from gradus.plan.inputs import PlanInputs
    from gradus.plan.worksheet import make_plan
    from gradus.plan.worksheet_text import plan_config_yaml, render_plan

    fields: dict[str, Any] = {}
    if args.flops is not None:
        fields["flops"] = parse_float(args.flops, "--flops")
    if args.params is not None:
        fields["params"] = parse_amount(args.params, "--params")
    if args.tokens is not None:
        fields["tokens"] = parse_amount(args.tokens, "--tokens")
    for flag, key in (("ratio", "ratio"), ("kappa", "kappa"), ("warmup", "warmup_fraction"),
                      ("min_lr_ratio", "min_lr_ratio")):
        value = getattr(args, flag)
        if value is not None:
            fields[key] = parse_float(value, "--" + flag.replace("_", "-"))
    for flag, key in (("seq_len", "seq_len"), ("long_seq_len", "long_seq_len"),
                      ("tokens_per_step", "tokens_per_step"), ("vocab_size", "vocab_size")):
        value = _int_flag(getattr(args, flag), "--" + flag.replace("_", "-"))
        if value is not None:
            fields[key] = value
    hardware = _hardware(args, need_days=True)
    if hardware is not None:
        fields["hardware"] = hardware
    if args.write:
        check_new_file(args.write, "--write")
    plan = make_plan(PlanInputs(**fields))
    fc, fc_annealed = _forecast(args, plan.tokens)  # a bad --forecast-from fails before anything is written
    if args.write:
        write_new_file(args.write, plan_config_yaml(plan, command=_command_line(args)), "--write")
    if args.json:
        print(json.dumps({**plan.to_json(), **_forecast_json(fc, fc_annealed)}, indent=2))
    else:
        print(render_plan(plan))
        _print_forecast(args, fc, fc_annealed)
    if args.write:
        print(f"wrote {args.write}: stages A–C; check it with `gradus schedule {args.write}`",
              file=sys.stderr if args.json else sys.stdout)
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The worksheet's flags as typed (rebuilt from the parsed arguments: cli.py alone reads argv)."""
    parts = ["gradus plan"]
    for name in ("flops", "gpus", "gpu", "days", "mfu", "params", "tokens", "ratio", "kappa", "seq_len",
                 "long_seq_len", "tokens_per_step", "warmup", "min_lr_ratio", "vocab_size", "write"):
        value = getattr(args, name, None)
        if value is not None:
            parts.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(parts)


# -------------------------------------------------------------------------------------- timeline
def guess_vocab_size(cfg: Any) -> tuple[int, str]:
    """(vocab size, where it came from) without loading a tokenizer library: the model's vocab_size, the
    BPE to train, a local tokenizer.json / vocab.json, else GPT-2's 50,257."""
    from gradus.sizes import GPT2_VOCAB_SIZE

    if cfg.model.vocab_size is not None:
        return cfg.model.vocab_size, "model.vocab_size"
    tok = cfg.data.tokenizer
    if tok.train_vocab_size is not None:
        return tok.train_vocab_size, "data.tokenizer.train_vocab_size"
    name = tok.name_or_path
    if name in ("gpt2", "openai-community/gpt2"):
        return GPT2_VOCAB_SIZE, f"the {name} tokenizer"
    if name:
        p = Path(name)
        for candidate in (p, p / "tokenizer.json", p / "vocab.json"):
            if candidate.is_file() and candidate.suffix == ".json":
                try:
                    data = json.loads(candidate.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    break
                if candidate.name == "vocab.json" and isinstance(data, dict):
                    return len(data), str(candidate)
                vocab = data.get("model", {}).get("vocab", {}) if isinstance(data, dict) else {}
                added = {t.get("id") for t in data.get("added_tokens", [])} if isinstance(data, dict) else set()
                ids = set(vocab.values()) | added if isinstance(vocab, dict) else added
                if ids:
                    return max(ids) + 1, str(candidate)
    return GPT2_VOCAB_SIZE, (f"assumed GPT-2's: data.tokenizer.name_or_path={name!r} is not loaded here; "
                             "pass --vocab-size for the exact count")


def _timeline(args: argparse.Namespace) -> int:
    from gradus.plan.hardware import GPUS, parse_amount, parse_bytes, parse_float
    from gradus.plan.timeline import build_timeline, render_timeline
    from gradus.sizes import resolve_shape

    if args.measure and args.tokens_per_sec is not None:
        raise ConfigError("--measure and --tokens-per-sec both give the throughput; keep one")
    cfg = load_from_args(args)
    vocab = _int_flag(args.vocab_size, "--vocab-size")
    if vocab is None:
        vocab, _ = guess_vocab_size(cfg)
    shape = resolve_shape(cfg.model, vocab)
    hardware = _hardware(args, need_days=False)
    tokens_per_sec = parse_float(args.tokens_per_sec, "--tokens-per-sec") if args.tokens_per_sec else None
    dataset_tokens = int(parse_amount(args.dataset_tokens, "--dataset-tokens")) if args.dataset_tokens else None
    device_memory = parse_bytes(args.device_memory) if args.device_memory else None
    if device_memory is None and hardware is not None:
        device_memory = GPUS[hardware.gpu.name].memory_bytes
    micro_batch = _int_flag(args.micro_batch, "--micro-batch")
    steps = _int_flag(args.measure_steps, "--measure-steps") or 3

    precision = args.precision or cfg.train.precision
    measure = None
    label = "measured"
    if args.measure:
        device = _measure_device(args.device or cfg.train.device)
        if precision == "auto":
            precision = "fp32" if device == "cpu" else "bf16"
        if precision == "fp8":
            raise ConfigError("gradus plan --measure times fp32, bf16 or fp16 steps; for fp8 give --precision bf16 "
                              "(the memory estimate is the same) or measure with benchmarks/gpu/fp8_vs_bf16.py")
        if micro_batch is None and cfg.train.micro_batch_size is None and device_memory is None:
            micro_batch = 16  # measuring a whole large batch on a laptop takes long; 16 gives the rate
        from gradus.train.measure import measure_stage_throughput

        def measure(stage: Any, m: int) -> dict[str, Any]:
            print(f"measuring stage {stage.index} ({stage.name}): {m} × {stage.seq_len} on {device}, {precision} …",
                  file=sys.stderr, flush=True)
            return measure_stage_throughput(shape, stage.seq_len, m, device=device, precision=precision,
                                            steps=steps, warmup=1, seed=cfg.train.seed, optim=cfg.optim)

        label = f"measured on {device} ({precision}), {steps} steps per stage after 1 warmup step"
    elif precision == "auto":
        precision = "bf16"  # planning for an accelerator: bf16 autocast is the trainer's default on CUDA
    title = cfg.name or (f"preset {args.preset}" if args.preset else str(config_source(args)))
    timeline = build_timeline(
        cfg, shape, title=title, tokens_per_sec=tokens_per_sec, hardware=hardware, measure=measure,
        measure_label=label, dataset_tokens=dataset_tokens, device_memory=device_memory,
        precision=precision, micro_batch=micro_batch,
    )
    fc, fc_annealed = _forecast(args, timeline.total_tokens)
    if args.json:
        print(json.dumps({**timeline.to_json(), **_forecast_json(fc, fc_annealed)}, indent=2))
    else:
        print(render_timeline(timeline))
        _print_forecast(args, fc, fc_annealed)
    return 0


def _forecast(args: argparse.Namespace, tokens: float) -> tuple[Any, Any]:
    """The curriculum's forecast speedups at ``tokens`` from ``--forecast-from``: the first-crossing one and the
    annealed reading's (None where the comparison has none); (None, None) without the flag."""
    if not args.forecast_from:
        return None, None
    from gradus.experiments.trend import forecasts_from_file

    return forecasts_from_file(args.forecast_from, tokens)


def _forecast_json(fc: Any, fc_annealed: Any) -> dict:
    """The forecasts' JSON keys (none without ``--forecast-from``)."""
    out = {"forecast": fc.to_json()} if fc is not None else {}
    if fc_annealed is not None:
        out["forecast_annealed"] = fc_annealed.to_json()
    return out


def _print_forecast(args: argparse.Namespace, fc: Any, fc_annealed: Any) -> None:
    """The forecast lines under the plan or the timeline."""
    if fc is not None:
        print(f"curriculum forecast (from {args.forecast_from}), first crossing: {fc.sentence}")
    if fc_annealed is not None:
        print(f"curriculum forecast, annealed runs (the budget a complete curriculum run needs): {fc_annealed.sentence}")


def _measure_device(name: str) -> str:
    """Resolve ``auto`` to cuda when available, else cpu, and refuse a device that is not here (imports torch:
    only for --measure)."""
    from gradus.model.device import pick_device

    return str(pick_device(name, "--device", "--device cpu"))
