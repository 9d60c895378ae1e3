"""Throughput of the full data pipeline, and how long a consumer waits for it.

Full pipeline = read JSONL → template → held-out hash → tokenise (GPT-2 byte-level BPE) → shuffle
buffer (1,000 documents per source) → token-aware mixing → concat packing → int64 batches. Sources:
WikiText-2 train + GSM8K train + NetworkX Python code from ../shared/data, mixed 0.5 / 0.2 / 0.3, one
stage of seq_len 1024 × batch 64.

Arms, each in a fresh process (so CPU affinity and tokenizer threads are set before anything starts):

* ``one-core``: pinned to one CPU, ``TOKENIZERS_PARALLELISM=false``, no workers, batches made on the
  calling thread: the producer's own speed.
* ``rust-threads``: all CPUs, the Rust tokenizer's own thread pool, no workers.
* ``workers``: all CPUs, ``--workers`` tokenising processes.
* ``consumer-one-core``: pinned to one CPU, background prefetch thread, and a consumer that needs each
  batch for ``batch tokens / --consumer-rate`` seconds (a trainer on a GPU, sleeping while the GPU
  works) from its first batch on: the fraction of its time it waits inside ``next_batch`` (during the
  warm-up and in the steady state).

Throughput and waiting are measured in the steady state: after the first batch (start-up) and after the
shuffle buffers have filled (warm-up: they fill as they are used, reading two documents per one emitted
until full, so the same work as filling them up front, spread over the first batches); both are reported.

    python benchmarks/data_pipeline.py                 # all arms, a table
    python benchmarks/data_pipeline.py --json          # the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def build(seq_len: int, batch: int, steps: int, workers: int, prefetch: int):
    from gradus.config import from_dict
    from gradus.curriculum import resolve_schedule
    from gradus.data import DataPipeline, load_tokenizer

    cfg = from_dict({
        "data": {
            "sources": [
                {"name": "wiki", "path": str(SHARED / "wikitext-2" / "train.jsonl")},
                {"name": "gsm8k", "path": str(SHARED / "gsm8k" / "train.jsonl"), "template": "{question}\n{answer}"},
                {"name": "code", "path": str(SHARED / "python-code-networkx" / "networkx_py.jsonl")},
            ],
            "tokenizer": {"name_or_path": str(SHARED / "gpt2-tokenizer")},
            "num_workers": workers,
            "prefetch_batches": prefetch,
        },
        "curriculum": {"stages": [{"step": 0, "seq_len": seq_len, "batch_size": batch,
                                   "mix": {"wiki": 0.5, "gsm8k": 0.2, "code": 0.3}}]},
        "train": {"max_steps": steps + 1},
    })
    cur = resolve_schedule(cfg)
    tok = load_tokenizer(cfg.data)
    return DataPipeline(cfg.data, tok, cur, seed=0), cur


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (all their threads), from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def child(mode: str, args: argparse.Namespace) -> dict:
    """One arm, in this (fresh) process."""
    from gradus.curriculum import state_at

    if mode in ("one-core", "consumer-one-core"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    steps = max(2, args.tokens // (args.seq_len * args.batch))
    workers = args.workers if mode == "workers" else 0
    prefetch = 4 if mode == "consumer-one-core" else 0
    t_build = time.perf_counter()
    pipe, cur = build(args.seq_len, args.batch, steps, workers, prefetch)
    state = state_at(cur, 0, 0)
    first = pipe.next_batch(state)  # start-up: first reads, worker spawn
    t_first = time.perf_counter() - t_build
    # Warm-up: the shuffle buffers fill as they are used (two documents read per one emitted until they
    # hold `shuffle_buffer` documents), so the steady state starts once every source has emitted that many.
    step = 0
    t_warm = time.perf_counter()
    warm_tokens = 0
    size = pipe.cfg.shuffle_buffer
    while any(f.emitted < size for f in pipe._stream.feeds.values()):
        step += 1
        n = pipe.next_batch(state_at(cur, step, step * state.tokens_per_step)).num_tokens
        warm_tokens += n
        if mode == "consumer-one-core":
            time.sleep(n / args.consumer_rate)  # the consumer runs at its own pace from the start
    t_warm = time.perf_counter() - t_warm
    warm_wait = pipe.metrics()["data/wait_fraction"]
    pipe.reset_wait_clock()
    # CPU time of this process and of the tokenising workers: on a shared machine the wall-clock rate
    # depends on what else runs; tokens per CPU-second is what one free core would do.
    pool = getattr(pipe._encoder, "pool", None)
    pids = [os.getpid()] + ([p.pid for p in pool._pool] if pool is not None else [])
    cpu0 = cpu_seconds(pids)
    tokens = 0
    busy = 0.0
    t0 = time.perf_counter()
    warm_steps = step
    for step in range(warm_steps + 1, warm_steps + steps + 1):
        b = pipe.next_batch(state_at(cur, step, step * state.tokens_per_step))
        tokens += b.num_tokens
        if mode == "consumer-one-core":
            # The trainer's step: the GPU works (this thread sleeps, as it would in cuda synchronize).
            need = b.num_tokens / args.consumer_rate
            time.sleep(need)
            busy += need
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(pids) - cpu0
    m = pipe.metrics()
    pipe.close()
    out = {
        "mode": mode,
        "tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_sec": round(tokens / wall),
        "cpu_seconds": round(cpu, 2),
        "tokens_per_cpu_sec": round(tokens / cpu) if cpu > 0 else None,
        "startup_seconds": round(t_first, 3),
        "warmup_tokens": warm_tokens,
        "warmup_seconds": round(t_warm, 3),
        "first_batch_shape": list(first.inputs.shape),
        "cpus": len(os.sched_getaffinity(0)),
        "workers": workers,
        "share": {k.split("/")[-1]: round(m[f"data/tokens/{k.split('/')[-1]}"] / m["data/tokens_total"], 4)
                  for k in m if k.startswith("data/tokens/")},
    }
    if mode == "consumer-one-core":
        out["consumer_rate"] = args.consumer_rate
        out["wait_fraction"] = round(m["data/wait_fraction"], 5)
        out["wait_fraction_warmup"] = round(warm_wait, 5)
        out["wait_seconds"] = round(m["data/wait_seconds"], 3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=6_000_000, help="tokens drawn per arm (default 6M)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="tokenising processes in the workers arm")
    p.add_argument("--consumer-rate", type=float, default=500_000,
                   help="tokens/s the simulated trainer consumes (default 500k, the target)")
    p.add_argument("--arms", default="one-core,rust-threads,workers,consumer-one-core")
    p.add_argument("--repeats", type=int, default=1, help="runs of every arm, interleaved; medians are reported")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return 0
    results = []
    load_before = os.getloadavg()
    for _ in range(args.repeats):  # arms interleaved, so a burst of load elsewhere hits all of them
        for mode in args.arms.split(","):
            env = dict(os.environ)
            env["TOKENIZERS_PARALLELISM"] = "true" if mode == "rust-threads" else "false"
            if mode in ("one-core", "consumer-one-core"):
                env["RAYON_NUM_THREADS"] = "1"
            cmd = [sys.executable, __file__, "--child", mode, "--tokens", str(args.tokens), "--seq-len",
                   str(args.seq_len), "--batch", str(args.batch), "--workers", str(args.workers),
                   "--consumer-rate", str(args.consumer_rate)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    load_after = os.getloadavg()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
            f"{platform.python_implementation()} {platform.python_version()}",
            "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
            "seq_len": args.seq_len, "batch": args.batch, "repeats": args.repeats}
    summary = {}
    for mode in args.arms.split(","):
        rows = [r for r in results if r["mode"] == mode]
        summary[mode] = {k: statistics.median(r[k] for r in rows) for k in ("tokens_per_sec", "tokens_per_cpu_sec")}
        if "wait_fraction" in rows[0]:
            summary[mode]["wait_fraction"] = statistics.median(r["wait_fraction"] for r in rows)
            summary[mode]["wait_fraction_max"] = max(r["wait_fraction"] for r in rows)
    if args.json:
        print(json.dumps({"meta": meta, "results": results, "median": summary}, indent=2))
        return 0
    print(f"data pipeline benchmark — {meta['date']}, {meta['machine']}, load average {meta['load_average_1m']}; "
          f"seq_len {args.seq_len} × batch {args.batch}, WikiText-2 + GSM8K + Python code 0.5/0.2/0.3, GPT-2 tokenizer")
    print(f"{'arm':<20} {'cpus':>4} {'workers':>7} {'tokens':>10} {'tokens/s':>12} {'tok/CPU-s':>10} {'start-up':>9} "
          f"{'warm-up':>16}  extra")
    for r in results:
        extra = f"realised mix {r['share']}"
        if "wait_fraction" in r:
            extra = (f"consumer at {r['consumer_rate']:,.0f} tok/s waits {100 * r['wait_fraction']:.2f}% "
                     f"({r['wait_seconds']:.2f}s; {100 * r['wait_fraction_warmup']:.2f}% during warm-up); " + extra)
        print(f"{r['mode']:<20} {r['cpus']:>4} {r['workers']:>7} {r['tokens']:>10,} {r['tokens_per_sec']:>12,} "
              f"{r['tokens_per_cpu_sec'] or 0:>10,} "
              f"{r['startup_seconds']:>8.2f}s {r['warmup_tokens'] / 1e6:>5.1f}M in {r['warmup_seconds']:>5.1f}s  {extra}")
    print(f"median of {args.repeats}:")
    for mode, m in summary.items():
        wait = f", consumer waits {100 * m['wait_fraction']:.2f}% (max {100 * m['wait_fraction_max']:.2f}%)" \
            if "wait_fraction" in m else ""
        print(f"  {mode:<20} {m['tokens_per_sec']:>12,.0f} tokens/s  {m['tokens_per_cpu_sec']:>12,.0f} tokens/CPU-s{wait}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
