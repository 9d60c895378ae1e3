#!/usr/bin/env python
"""What measuring the gradient noise scale costs a step (issue 30 §1: at most 1% of step time).

For each shape (``SEQxROWS:K``: rows of SEQ tokens in K micro-batches) it times
:func:`gradus.train.step.optimizer_step` on one model with the measurement off and on; "on" includes what
the trainer adds per step (reading the :class:`~gradus.train.noise_scale.NoiseSample` and one
:meth:`~gradus.train.noise_scale.GradientNoiseScale.update`). The two arms run **interleaved in pairs**
(off, on, on, off, ...: the order alternates so neither arm always follows the other), so load from other
processes on the machine falls on both alike; the overhead is the median of the paired differences over
the median step, with the spread of the paired ratios. Independent medians of each arm are printed too.

Because an end-to-end difference of a fraction of a percent sits inside a loaded machine's noise, the
script also times the added work alone (``direct``): the per-parameter norm reductions of K micro-batches
(what the hooks run) and the sample's arithmetic, on gradients of the model's size, divided by the median
step (the hooks are registered once per run, not per step), and times that same code inside the real "on" steps (``in_step``: the hooks, the sample, the read and
the update, each call timed). Those figures are what the measurement costs; the paired one checks that
nothing else changed, within what the machine's noise can resolve.

A shape of one micro-batch (``:1``) has no smaller batch to measure against on one process: its "on" arm
splits it into two micro-batches (what ``train.noise_scale.micro_batches: 2`` does), so its figure is the
split's cost, the price a single-process run pays for the noise scale.

Example (the figures in BENCHMARKS.md)::

    python benchmarks/noise_scale_overhead.py --model-preset small --shapes 1024x2:2,64x32:4 --pairs 12
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, git_revision, machine_info, write_result  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-preset", default="small", help="a model size preset (default: small)")
    p.add_argument("--vocab", type=int, default=50257, help="vocabulary size (default: GPT-2's 50257)")
    p.add_argument("--shapes", default="1024x2:2,64x32:4",
                   help="comma-separated SEQxROWS:MICRO_BATCHES (default: 1024x2:2,64x32:4)")
    p.add_argument("--pairs", type=int, default=12, help="interleaved (off, on) pairs per shape (default: 12)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each arm first (default: 2)")
    p.add_argument("--direct-repeats", type=int, default=20, help="repeats of the direct timing (default: 20)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the model with FSDP2 over the processes (ROWS per process) and time "
                        "the measurement from the sharded gradients")
    p.add_argument("--out", type=Path, default=RESULTS / "noise_scale_overhead.json", help="result JSON")
    return p.parse_args(argv)


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """``"1024x2:2,64x32:4"`` -> [(1024, 2, 2), (64, 32, 4)]: (seq_len, rows, micro-batches)."""
    shapes = []
    for part in text.split(","):
        dims, k = part.strip().split(":")
        seq, rows = dims.split("x")
        seq, rows, k = int(seq), int(rows), int(k)
        if rows % k:
            raise SystemExit(f"--shapes {part}: {rows} rows do not split into {k} micro-batches")
        shapes.append((seq, rows, k))
    return shapes


def _sync(device) -> None:
    """Wait for the device (CUDA) so a timing covers the work, not its launch."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_shape(args, seq: int, rows: int, k: int, device) -> dict:
    """Paired and direct timings of one shape; returns its result row."""
    import torch

    from gradus.config.fields import SIZE_PRESETS
    from gradus.model import GPT
    from gradus.sizes import ModelShape
    from gradus.train.noise_scale import GradientNoiseScale, MicroBatchNorms, ShardedMicroBatchNorms
    from gradus.train.runtime import Runtime
    from gradus.train.step import optimizer_step

    torch.manual_seed(0)
    shape = ModelShape(**SIZE_PRESETS[args.model_preset], vocab_size=args.vocab, max_seq_len=seq)
    model = GPT(shape).to(device)
    rank, world = _rank_world()
    rt = Runtime(device=device, precision="fp32", rank=rank, world_size=world)
    if args.fsdp:
        from gradus.train.parallel import shard_model

        shard_model(model, rt)  # every block and the root, as a run under parallel: fsdp
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(1 + rank)  # (under FSDP each rank its own rows)
    inputs = torch.randint(0, args.vocab, (rows, seq), generator=gen)
    labels = torch.randint(0, args.vocab, (rows, seq), generator=gen)
    gns = GradientNoiseScale()
    added = instrument_added_work()
    # A run builds them once and keeps them registered; under FSDP2 the sharded gradients are read instead.
    hooks = ShardedMicroBatchNorms(model.parameters()) if args.fsdp else MicroBatchNorms(model.parameters())

    def step(measure: bool) -> tuple[float, float]:
        """One step: (wall seconds, this thread's CPU seconds). With one torch thread on CPU the whole step
        runs on this thread, and its CPU time does not count the time the scheduler gave other processes.
        Off is a run with the measurement disabled (no hooks on the parameters); on, one that keeps them
        registered (put back before the clock starts, as a run registers them once)."""
        if measure:
            hooks.register()
        else:
            hooks.close()
        _sync(device)
        t0, c0 = time.perf_counter(), time.thread_time()
        # One micro-batch (k = 1) cannot be measured as it is: "on" splits it in two, as a run with
        # train.noise_scale.micro_batches: 2 does on one process, so the figure is what that split costs.
        micro = rows // 2 if measure and k == 1 else rows // k
        out = optimizer_step(model, model, optimizer, None, inputs, labels, lr=1e-4, clip=1.0, micro=micro,
                             rt=rt, noise_hooks=hooks if measure else None)
        if measure:
            _, sample = out
            t1 = time.perf_counter()
            gns.update(sample.read())  # what the trainer adds when it reads the step's figures
            added.append(time.perf_counter() - t1)
        _sync(device)
        return time.perf_counter() - t0, time.thread_time() - c0

    for _ in range(args.warmup):
        step(False)
        step(True)
    off, on, cpu_off, cpu_on, in_step = [], [], [], [], []
    for i in range(args.pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        t = {}
        for m in order:
            added.clear()
            t[m] = step(m)
            if m:
                in_step.append(sum(added))
        off.append(t[False][0])
        on.append(t[True][0])
        cpu_off.append(t[False][1])
        cpu_on.append(t[True][1])
    diffs = [b - a for a, b in zip(off, on, strict=True)]
    ratios = sorted(b / a for a, b in zip(off, on, strict=True))
    median_off = statistics.median(off)
    cpu_diffs = [b - a for a, b in zip(cpu_off, cpu_on, strict=True)]

    # The added work alone: K micro-batches of per-parameter norms (the hooks) and the sample's arithmetic;
    # under FSDP, per micro-batch a copy of this rank's shard, a difference and its norm.
    grads = [torch.randn_like(p.to_local() if hasattr(p, "to_local") else p) for p in model.parameters()]
    direct = []
    for _ in range(args.direct_repeats):
        _sync(device)
        t0 = time.perf_counter()
        per_micro = []
        for _ in range(max(k, 2)):
            if args.fsdp:
                copies = [g.clone() for g in grads]
                norms = [torch.linalg.vector_norm(g - c, dtype=torch.float32) for g, c in zip(grads, copies, strict=True)]
            else:
                norms = [torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]
            per_micro.append(torch.stack(norms).square().sum())
        micro = torch.stack(per_micro).double() * (1.0 / 0.25)
        torch.stack([micro.mean(), micro.sum(), micro.max(), micro.min()]).tolist()
        _sync(device)
        direct.append(time.perf_counter() - t0)
    direct_s = statistics.median(direct)
    q = len(ratios) // 4
    row = {"seq_len": seq, "rows": rows, "micro_batches": k, "tokens": seq * rows,
           "params": sum(p.numel() for p in model.parameters()),
           "median_step_off_s": median_off, "median_step_on_s": statistics.median(on),
           "median_paired_diff_s": statistics.median(diffs),
           "paired_overhead_pct": 100 * statistics.median(diffs) / median_off,
           "paired_ratio_iqr": [ratios[q], ratios[-1 - q]],
           "paired_overhead_pct_90ci": [100 * x / median_off for x in bootstrap_median(diffs)],
           "cpu_paired_overhead_pct": 100 * statistics.median(cpu_diffs) / statistics.median(cpu_off),
           "cpu_paired_overhead_pct_90ci": [100 * x / statistics.median(cpu_off) for x in bootstrap_median(cpu_diffs)],
           "independent_overhead_pct": 100 * (statistics.median(on) / median_off - 1),
           "direct_added_s": direct_s, "direct_overhead_pct": 100 * direct_s / median_off,
           "in_step_added_s": statistics.median(in_step),
           "in_step_overhead_pct": 100 * statistics.median(in_step) / median_off,
           "steps_off_s": off, "steps_on_s": on, "cpu_off_s": cpu_off, "cpu_on_s": cpu_on,
           "measured_as": f"{max(k, 2)} micro-batches of {rows // max(k, 2)} rows" + (" (split)" if k == 1 else ""),
           # (random tokens: no signal, so often inf; None in the JSON, which has no infinity)
           "b_simple_tokens": gns.b_simple if math.isfinite(gns.b_simple) else None}
    return row


_SPENT: list[float] = []
"""Seconds of each call of the measurement's own code (:func:`instrument_added_work`)."""


def instrument_added_work() -> list[float]:
    """Time the measurement's own code inside real steps: every call of the hooks, of
    :class:`~gradus.train.noise_scale.MicroBatchNorms`' methods and of ``noise_sample`` appends its seconds to
    the returned list (on CPU the work is done when the call returns). Summed per step, this is what the
    measurement adds there, free of the other arm's noise (not counted: autograd's own cost of calling a
    Python hook, a few microseconds per parameter and micro-batch)."""
    import gradus.train.noise_scale as ns

    spent = _SPENT  # one list for every shape: the methods are wrapped once, their time goes here

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - t0)
        return wrapper

    for cls, names in ((ns.MicroBatchNorms, ("start", "_hook", "end_micro_batch", "stop", "sample")),
                       (ns.ShardedMicroBatchNorms, ("start", "end_micro_batch", "stop", "sample"))):
        for name in names:
            if not hasattr(getattr(cls, name), "_timed"):  # (once, however many shapes are timed)
                wrapped = timed(getattr(cls, name))
                wrapped._timed = True
                setattr(cls, name, wrapped)
    return spent


def bootstrap_median(values: list[float], draws: int = 2000, seed: int = 0) -> list[float]:
    """A 90% percentile-bootstrap interval of the median of ``values`` (the paired differences): how far
    the machine's noise leaves the overhead undetermined."""
    import random

    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return [medians[int(0.05 * draws)], medians[int(0.95 * draws) - 1]]


def _rank_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 unless a process group is up)."""
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def main(argv: list[str] | None = None) -> int:
    """Time every shape, print the table, and write the result JSON (under --fsdp: rank 0 writes)."""
    import torch

    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.fsdp:
        import os

        import torch.distributed as dist

        if int(os.environ.get("WORLD_SIZE", "1")) < 2:
            raise SystemExit("noise_scale_overhead: --fsdp needs 2+ processes: run it under torchrun "
                             "--nproc_per_node 2 (or more)")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = _rank_world()
    say = print if rank == 0 else (lambda *a, **k: None)
    rows = []
    for seq, n, k in parse_shapes(args.shapes):
        row = time_shape(args, seq, n, k, device)
        rows.append(row)
        say(f"{seq}x{n} in {k} micro-batches: step {row['median_step_off_s'] * 1e3:.0f} ms off, "
              f"{row['median_step_on_s'] * 1e3:.0f} ms on; paired overhead {row['paired_overhead_pct']:+.2f}% "
              f"(90% CI {row['paired_overhead_pct_90ci'][0]:+.2f}…{row['paired_overhead_pct_90ci'][1]:+.2f}), "
              f"CPU time {row['cpu_paired_overhead_pct']:+.2f}% (90% CI {row['cpu_paired_overhead_pct_90ci'][0]:+.2f}…"
              f"{row['cpu_paired_overhead_pct_90ci'][1]:+.2f}), independent "
              f"{row['independent_overhead_pct']:+.2f}%; direct cost {row['direct_added_s'] * 1e3:.2f} ms = "
              f"{row['direct_overhead_pct']:.2f}%; in the steps {row['in_step_added_s'] * 1e3:.2f} ms = "
              f"{row['in_step_overhead_pct']:.2f}%", flush=True)
    if args.fsdp:
        import torch.distributed as dist

        dist.destroy_process_group()
        if rank != 0:
            return 0
    report = {"model_preset": args.model_preset, "vocab": args.vocab, "threads": args.threads,
              "pairs": args.pairs, "device": args.device, "target_pct": 1.0, "shapes": rows,
              "parallel": f"FSDP2 over {world} processes (rows per process)" if args.fsdp else "one process",
              "machine": machine_info(device), "git": git_revision(),
              "command": "python benchmarks/noise_scale_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    print(f"wrote {write_result(args.out, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
