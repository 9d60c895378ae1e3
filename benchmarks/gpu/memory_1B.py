#!/usr/bin/env python
"""1B peak memory per stage against ``gradus plan``'s estimate, on one GPU (issue 32 §2).

The stages are the ``1b-compact`` preset's (the 1B size preset; the only preset at 1B parameters:
``streaming-1b`` plans a 270M model over 1B tokens): A and B at 2048, C at 8192, 65,536 tokens per step, bf16,
dropout 0.1, activation checkpointing as the preset has it (none; ``--activation-checkpointing full`` measures
with it instead). For each stage, ``gradus plan``'s own timeline (:func:`gradus.plan.timeline.build_timeline`,
what ``gradus plan --preset 1b-compact --device-memory 80GiB`` prints) gives the micro-batch that fits one 80 GiB
GPU and its memory estimate; then a few real steps at that micro-batch
(:func:`gradus.train.measure.measure_stage_throughput`, what ``gradus plan --measure`` times: forward, backward,
clip and AdamW of the model the trainer builds, eager) give the allocator's peak. The file has per stage the
estimate, the measured peak, their ratio (measured ÷ estimate) and whether the peak fits 80 GiB; a stage that
runs out of memory is written as not fitting (``oom: true``). Stages of the same shape (A and B) are measured
once. Safe to rerun: a stage already in the file with the same settings is read back.

``--device cpu --smoke``: the tiny model at the same stages' lengths ÷ 256; the "peak" on CPU is the growth of
the process's resident memory (an approximation): a dry run for the test suite, no GPU figure.

Examples::

    python benchmarks/gpu/memory_1B.py                      # on the GPU (run.sh 1B-memory)
    python benchmarks/gpu/memory_1B.py --device cpu --smoke --out /tmp/memory_tiny.json
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS, cuda_missing, git_revision, machine_info, read_result, write_result  # noqa: E402

GPU_RESULTS = RESULTS / "gpu"
DEVICE_MEMORY = 80 * 2**30
"""One 80 GiB GPU (an H100 80GB: ``gradus.plan.hardware.GPUS['h100']``), what the plan is checked against."""
PRESET = "1b-compact"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="memory_1B.py", description="1B peak memory per stage against gradus plan's "
                                "estimate, at the micro-batch the plan fits to one 80 GiB GPU")
    p.add_argument("--activation-checkpointing", choices=("preset", "none", "full"), default="preset",
                   help="train.activation_checkpointing (default: as the preset has it)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per stage after 1 warm-up step (default 2)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--smoke", action="store_true", help="a dry run: tiny model, lengths ÷ 256 (with --device cpu)")
    p.add_argument("--out", type=Path, help="result file (default benchmarks/results/gpu/memory_1B.json)")
    args = p.parse_args(argv)
    args.out = args.out or GPU_RESULTS / ("memory_tiny.json" if args.smoke else "memory_1B.json")
    return args


def plan_config(args: argparse.Namespace):
    """The preset as ``gradus plan`` reads it (for the smoke run: the tiny model, lengths and batches ÷ 256)."""
    from gradus.config import from_dict, to_dict
    from gradus.presets import load_preset

    cfg = load_preset(PRESET)
    raw = to_dict(cfg)
    if args.activation_checkpointing != "preset":
        raw["train"]["activation_checkpointing"] = args.activation_checkpointing
    raw["train"]["precision"] = "bf16" if args.device == "cuda" else "fp32"
    if args.smoke:
        raw["model"].update({"preset": "tiny", "max_seq_len": raw["model"]["max_seq_len"] // 256})
        for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_hidden"):
            raw["model"].pop(k, None)
        for st in raw["curriculum"]["stages"]:
            st["seq_len"] //= 256
            st["tokens_per_batch"] = int(st["tokens_per_batch"]) // 256
            st.pop("batch_size", None)
    return from_dict(raw, f"preset {PRESET}")


def settings(args: argparse.Namespace, cfg) -> dict:
    """What a stage's figures depend on; a stage in the file with other settings is measured again."""
    return {"preset": PRESET, "model": cfg.model.preset, "activation_checkpointing": cfg.train.activation_checkpointing,
            "precision": cfg.train.precision, "steps": args.steps, "device": args.device,
            "device_memory_planned": DEVICE_MEMORY}


def main(argv: list[str] | None = None) -> int:
    """Plan the stages, measure the ones the file lacks, write the ratios."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    if cuda_missing("memory_1B.py", args.device):
        return 2
    from gradus.commands.plan import guess_vocab_size
    from gradus.plan.timeline import build_timeline
    from gradus.sizes import resolve_shape
    from gradus.train.measure import measure_stage_throughput

    cfg = plan_config(args)
    vocab, _ = guess_vocab_size(cfg)
    shape = resolve_shape(cfg.model, vocab)
    precision = cfg.train.precision
    timeline = build_timeline(cfg, shape, title=PRESET, device_memory=DEVICE_MEMORY, precision=precision)
    now = settings(args, cfg)
    previous = read_result(args.out, "memory_1B.py") if args.out.is_file() else {}
    done = {s["name"]: s for s in previous.get("stages", []) if s.get("settings") == now and "peak_bytes" in s}
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    report = {"benchmark": "memory_1B", "command": "python benchmarks/gpu/memory_1B.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "git": git_revision(), "machine": machine_info(device),
        "settings": now, "params_total": shape.params_total, "plan_checkpointed_blocks": timeline.checkpointed,
        "plan_warnings": timeline.warnings, "smoke": args.smoke, "stages": []}
    if device.type == "cuda":
        report["device_memory_total"] = torch.cuda.get_device_properties(device).total_memory
    by_shape: dict[tuple[int, int], dict] = {}
    for st in timeline.stages:
        row = {"name": st.name, "index": st.index, "seq_len": st.seq_len, "batch_size": st.batch_size,
               "micro_batch": st.micro_batch, "accumulation": st.accumulation, "estimate_bytes": st.memory.total,
               "estimate": {"weights": st.memory.weights, "gradients": st.memory.gradients,
                            "optimizer": st.memory.optimizer, "activations": st.memory.activations},
               "plan_fits_80GiB": st.fits, "settings": now}
        key = (st.seq_len, st.micro_batch)
        if st.name in done:
            row.update({k: done[st.name][k] for k in ("peak_bytes", "oom", "step_time_s", "tokens_per_sec",
                                                       "measured_as") if k in done[st.name]})
            print(f"{st.name}: read back from {args.out}", flush=True)
        elif key in by_shape:
            row.update({k: by_shape[key][k] for k in ("peak_bytes", "oom", "step_time_s", "tokens_per_sec")})
            row["measured_as"] = f"same shape as {by_shape[key]['name']} (measured once)"
        else:
            print(f"{st.name}: {st.micro_batch} × {st.seq_len} on {device} ({precision}) …", flush=True)
            try:
                m = measure_stage_throughput(shape, st.seq_len, st.micro_batch, device=str(device),
                                             precision=precision, steps=args.steps, warmup=1,
                                             seed=cfg.train.seed, optim=cfg.optim,
                                             activation_checkpointing=cfg.train.activation_checkpointing,
                                             checkpointing_every_k=cfg.train.activation_checkpointing_every_k)
                row.update({"peak_bytes": m["peak_memory_bytes"], "oom": False, "step_time_s": m["step_time_s"],
                            "tokens_per_sec": m["tokens_per_sec"]})
            except torch.cuda.OutOfMemoryError:
                row.update({"peak_bytes": None, "oom": True, "step_time_s": None, "tokens_per_sec": None})
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            row["measured_as"] = "measured"
        by_shape.setdefault(key, row)
        peak = row.get("peak_bytes")
        row["ratio_measured_to_estimate"] = peak / row["estimate_bytes"] if peak else None
        row["fits_80GiB"] = bool(peak is not None and not row["oom"] and peak <= DEVICE_MEMORY)
        report["stages"].append(row)
        write_result(args.out, report)  # after each stage: a killed call keeps what it finished
        gib = f"{peak / 2**30:.1f} GiB" if peak else "out of memory"
        print(f"  {st.name}: measured {gib}, estimate {row['estimate_bytes'] / 2**30:.1f} GiB"
              + (f", ratio {row['ratio_measured_to_estimate']:.2f}" if peak else ""), flush=True)
    misfits = [s["name"] for s in report["stages"] if not s["fits_80GiB"]]
    report["fits_one_80GiB_gpu"] = not misfits
    report["stages_not_fitting"] = misfits
    write_result(args.out, report)
    print("every stage fits one 80 GiB GPU" if not misfits else f"does not fit one 80 GiB GPU: {', '.join(misfits)}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
