"""Peak GPU memory per stage against ``gradus plan``'s estimate, with and without activation checkpointing.

Run on a GPU under torchrun (one process is enough to compare the memory estimate, which then describes
an unsharded run; with several, FSDP shards over them)::

    torchrun --nproc_per_node 1 benchmarks/fsdp_memory.py --preset 270M --out results/fsdp_memory

It trains a few steps of a two-stage curriculum (seq_len 512 then 2048) on generated offline corpora
(tests/offline_corpora.py) for each ``train.activation_checkpointing`` mode, with ``train.parallel: fsdp``,
and prints per stage: the micro-batch the probe chose, the measured peak (the CUDA allocator's, cumulative
over the run), the planner's estimate for that micro-batch and layout, and tokens/s. One JSON line per
row goes to ``OUT/fsdp_memory.jsonl``. On one process it also checks the FSDP2 path itself (bf16
mixed-precision policy, sharded save and load) on a one-rank process group.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def config(data: Path, preset: str, mode: str, steps_per_stage: int, tokens_per_batch: int) -> dict:
    """The two-stage curriculum at ``tokens_per_batch`` tokens per step, ``steps_per_stage`` steps each."""
    stages = [{"name": f"s{n}", "seq_len": n, "tokens_per_batch": tokens_per_batch,
               "tokens": steps_per_stage * tokens_per_batch} for n in (512, 2048)]
    return {
        "model": {"preset": preset, "max_seq_len": 2048},
        "data": {"sources": [{"name": "wiki", "path": str(data / "wikitext-2" / "train.jsonl")},
                             {"name": "code", "path": str(data / "python-code-networkx" / "networkx_py.jsonl")}],
                 "tokenizer": {"name_or_path": str(data / "gpt2-tokenizer")},
                 "validation": {"tokens": 4096, "max_documents": 8}},
        "curriculum": {"stages": stages, "schedule": "per_stage"},
        "optim": {"base_lr": 3e-4},
        "train": {"parallel": "fsdp", "activation_checkpointing": mode, "precision": "bf16", "compile": "off",
                  "checkpoint_every": None, "eval_every": 10**6, "eval_at_stage_change": False,
                  "early_stopping_patience": None},
        "logging": {"log_every": 1, "tensorboard": False, "progress_bar": False},
    }


def check_fsdp_path(out: Path) -> dict:
    """On a one-rank NCCL group: shard the 124M model with the bf16 policy, train 3 steps, save and load
    a sharded checkpoint. Returns the losses and whether the reload gave the same weights."""
    import torch
    import torch.distributed as dist

    from gradus.config import ModelConfig, OptimConfig
    from gradus.model.gpt import GPT
    from gradus.sizes import resolve_shape
    from gradus.train.build import build_optimizer
    from gradus.train.parallel import is_sharded, shard_model
    from gradus.train.runtime import Runtime
    from gradus.train.storage.sharded_checkpoint import ShardedCheckpointManager

    if not dist.is_initialized():
        dist.init_process_group("nccl")
    rt = Runtime(device=torch.device("cuda", 0), precision="bf16", world_size=1)
    shape = resolve_shape(ModelConfig(preset="124M", max_seq_len=1024), 8192)
    torch.manual_seed(0)
    model = GPT(shape).cuda()
    shard_model(model, rt)
    opt = build_optimizer(model, OptimConfig(base_lr=3e-4), rt.device)
    x = torch.randint(0, 8192, (4, 1024), device="cuda")
    losses = []
    for _ in range(3):
        with rt.autocast():
            _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    ckpt = ShardedCheckpointManager(out / "fsdp_path_ckpt", keep_last=1, rt=rt)
    path = ckpt.save(3, model=model, optimizer=opt, state={"x": 1}, meta={"step": 3,
                     "model_shape": shape.to_dict()}, config_yaml="")
    def whole(v):
        return v.full_tensor() if hasattr(v, "full_tensor") else v

    before = {k: whole(v).clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    ckpt.load(path, model=model, optimizer=opt)
    same = all(torch.equal(before[k], whole(v)) for k, v in model.state_dict().items())
    return {"sharded": is_sharded(model), "param_dtype_in_forward": "bf16", "losses": losses, "reload_equal": same}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="270M")
    parser.add_argument("--out", default="results/fsdp_memory")
    parser.add_argument("--steps", type=int, default=4, help="steps per stage")
    parser.add_argument("--tokens-per-batch", type=int, default=65536)
    parser.add_argument("--modes", default="none,full")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from offline_corpora import write_offline_corpora

    from gradus.config import from_dict
    from gradus.plan.memory import estimate_memory, memory_layout
    from gradus.sizes import resolve_shape
    from gradus.train.metrics import read_metrics
    from gradus.train.trainer import train

    rank = int(os.environ.get("RANK", "0"))
    data = out / "data"
    if rank == 0 and not (data / "gpt2-tokenizer").is_dir():
        write_offline_corpora(data)
    rows = []
    for mode in args.modes.split(","):
        cfg = from_dict(config(data, args.preset, mode, args.steps, args.tokens_per_batch))
        run = out / f"{args.preset}-{mode}"
        train(cfg, run, resume=False, quiet=True)
        shape = resolve_shape(cfg.model, 8192)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        layout = memory_layout(cfg.train, shape.n_layers, world)
        records = [r for r in read_metrics(run / "metrics.jsonl") if "memory/peak_bytes" in r]
        for seq_len in (512, 2048):
            at = [r for r in records if r["curriculum/current_seq_len"] == seq_len]
            micro = at[-1]["curriculum/micro_batch_size"]
            est = estimate_memory(shape, seq_len, micro, "bf16", **layout).total
            tps = sorted(r["tokens_per_sec"] for r in at[1:] or at)[len(at[1:] or at) // 2]
            rows.append({"preset": args.preset, "activation_checkpointing": mode, "world_size": world,
                         "seq_len": seq_len, "micro_batch": micro, "peak_gib": at[-1]["memory/peak_bytes"] / 2**30,
                         "estimate_gib": est / 2**30, "tokens_per_sec": tps})
    if rank == 0:
        with open(out / "fsdp_memory.jsonl", "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
                print(f"{row['preset']:>5} ac={row['activation_checkpointing']:<5} seq {row['seq_len']:>5} "
                      f"micro {row['micro_batch']:>3}: peak {row['peak_gib']:6.2f} GiB, estimate "
                      f"{row['estimate_gib']:6.2f} GiB, {row['tokens_per_sec']:,.0f} tokens/s")
        import torch

        if int(os.environ.get("WORLD_SIZE", "1")) == 1 and torch.cuda.is_available():
            print("fsdp path (1-rank group, bf16 policy):", json.dumps(check_fsdp_path(out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
