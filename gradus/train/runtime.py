"""Where and how the math runs: device, precision, seeds, and the torchrun process group.

Kept apart from the loop so that the trainer reads as a sequence of decisions, not set-up code.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from gradus.config import TrainConfig
from gradus.errors import ConfigError
from gradus.model.device import pick_device
from gradus.plan.hardware import gpu_for_device
from gradus.train.resident_memory import resident_bytes


@dataclass
class Runtime:
    """Device, precision and process-group facts for one process."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16 | fp8 (float8 linear layers, bf16 autocast around them)
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def autocast_precision(self) -> str:
        """The autocast dtype's name: fp8 runs what its float8 layers do not compute under bf16 autocast."""
        return "bf16" if self.precision == "fp8" else self.precision

    def autocast(self):
        """Autocast context for the forward pass (a no-op in fp32; bf16 under fp8)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def barrier(self) -> None:
        """Wait for every rank (no-op when alone)."""
        if self.distributed:
            dist.barrier()

    def min_over_ranks(self, value: int) -> int:
        """The smallest of an integer over ranks (itself when alone): what every rank can agree on, e.g.
        a micro-batch that fits on every GPU, so all ranks run the same number of gradient all-reduces."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def any_over_ranks(self, flag: bool) -> bool:
        """True when the flag is set on any rank (itself when alone)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def peak_memory_bytes(self) -> int:
        """Peak memory so far: the CUDA allocator's peak on a GPU, the process's peak resident set on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), by rank, on every rank; ``[value]`` when alone."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def raise_together(self, problem: str | None) -> None:
        """A start-up check's outcome, agreed over ranks: when any rank found a problem, every rank raises a
        ConfigError, so none is left waiting in a collective for a rank that has left; the lowest rank
        that found it says it and the others exit silently, so a launch of eight processes prints one
        line, not eight, and a problem only one node has (its own copy of the config) is still said."""
        problems = self.gather(problem)
        first = next((r for r, p in enumerate(problems) if p), None)
        if first is not None:
            raise ConfigError(problems[first], silent=first != self.rank, agreed=True)

    def mean_tensor(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a scalar tensor over ranks, left on the device (no host sync; itself when alone)."""
        if not self.distributed:
            return value
        t = value.detach().clone()
        dist.all_reduce(t)
        return t / self.world_size

    def mean_floats(self, values: list[float]) -> list[float]:
        """Element-wise mean of a list of floats over ranks (in float64; one collective); itself when alone."""
        if not self.distributed or not values:
            return list(values)
        return self.mean_tensor(torch.tensor(values, dtype=torch.float64, device=self.device)).tolist()

    def mean(self, value: float) -> float:
        """Mean of a float over ranks (in float64)."""
        if not self.distributed:
            return value
        return float(self.mean_tensor(torch.tensor(value, dtype=torch.float64, device=self.device)))


# Set by setup_runtime when it joins a process group; it stays set after the teardown (see joined_process_group).
_joined_group = False


def joined_process_group() -> bool:
    """Whether :func:`setup_runtime` joined a process group in this process, even one left since: the
    backend's worker threads may still be alive (:func:`gradus.cli.entry` reads this to leave safely)."""
    return _joined_group


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Pick the device and precision and, under torchrun, join the process group (gloo on CPU, NCCL on
    GPU). Each rank of a GPU run takes the GPU of its LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg.device, "train.device", "--set train.device=cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)  # each rank of a launch its own GPU
    if device.type == "cuda":
        torch.cuda.set_device(device)
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    if precision == "fp8":
        from gradus.train.fp8 import fp8_problem

        problem = fp8_problem(device, cfg.fp8.emulate)
        if problem:
            raise ConfigError(problem)
    if world > 1 and not dist.is_initialized():
        # torch._dynamo imported while a group exists keeps a reference to it that nothing releases (DDP imports
        # it when first built), so destroy_process_group could never end gloo's worker threads: import it first.
        importlib.import_module("torch._dynamo")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        global _joined_group
        _joined_group = True
    return Runtime(device=device, precision=precision, rank=rank, local_rank=local_rank, world_size=world)


def cgroup_free_bytes(proc_cgroup: Path = Path("/proc/self/cgroup"),
                      root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes left under this process's cgroup memory limit (a container's, a Slurm job's), counting the
    reclaimable page cache as free; None when no limit is set or none can be read. MemAvailable describes
    the whole machine, so inside a limit it promises memory the kernel will not give (cgroup v2's
    ``memory.max``, or v1's ``memory.limit_in_bytes``; the tightest when several apply)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    free: int | None = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base, files = root / path.lstrip("/"), ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base = root / "memory" / path.lstrip("/")
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        try:
            raw = (base / files[0]).read_text().strip()
            if raw == "max" or int(raw) >= 2**60:  # v1 writes "unlimited" as a huge number
                continue
            usage = int((base / files[1]).read_text())
        except (OSError, ValueError):
            continue
        reclaimable = 0
        with contextlib.suppress(OSError, ValueError):
            stat = dict(ln.split(maxsplit=1) for ln in (base / "memory.stat").read_text().splitlines() if " " in ln)
            reclaimable = int(stat.get(files[2], 0))
        left = max(0, int(raw) - usage + reclaimable)
        free = left if free is None else min(free, left)
    return free


def host_memory_budget() -> int | None:
    """Bytes of host memory this process may fill: what the OS reports available (``MemAvailable``, or
    what is left under the process's cgroup limit when that is less), shared equally among the processes
    torchrun started on this machine, plus what this process already holds (its resident set, where the
    model's weights already are). None where ``/proc`` is missing."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f}
        available = int(info["MemAvailable"]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None
    limited = cgroup_free_bytes()
    if limited is not None:
        available = min(available, limited)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return available // local + resident_bytes()


def teardown_runtime(rt: Runtime, clean: bool = False) -> None:
    """Leave the process group. ``clean`` (every rank got here by finishing or stopping, not by an error):
    wait for all ranks first, so that no rank tears its gloo/NCCL threads down while another still talks to
    it (a rank that left early was seen to abort the other at exit: "terminate called without an active
    exception"). After an error there is no barrier: the other ranks may never arrive. The group (and with it
    gloo's worker threads) ends here only if nothing else holds it: the trainer releases its parts first (DDP's
    reducer holds the group) and :func:`setup_runtime` imports torch._dynamo before joining (imported later,
    it keeps a reference). FSDP2 still holds it inside torch, so the command line leaves without interpreter
    finalisation (:func:`gradus.cli.entry`), and a script that calls :func:`gradus.train.train` under
    torchrun with ``parallel: fsdp`` should end the same way."""
    if rt.distributed and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count when ``threads`` is given; returns the count before, to restore."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    return before


@contextlib.contextmanager
def quick_thread_switch(interval: float = 0.0005) -> Iterator[None]:
    """Shorten Python's GIL switch interval while training. The data thread packs in Python; with the
    default 5 ms interval a short training step can stall that long waiting for it (measured by
    ``benchmarks/stage_throughput.py``)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, interval))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG state, for a checkpoint."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def peak_flops(device: torch.device, configured: float | None, precision: str) -> tuple[float, str]:
    """Peak FLOP/s for MFU and where the figure comes from: the config, the planner's GPU table
    (:data:`gradus.plan.hardware.GPUS`, found by the device's name), or (CPU, a GPU not in the table) a
    measured matmul rate, since CPUs have no data-sheet figure worth trusting."""
    if configured:
        return configured, "logging.peak_flops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        spec = gpu_for_device(name)
        if spec is not None:
            # TF32 is about half the bf16 rate. fp8 is measured against the bf16 peak too, so an fp8 run's
            # MFU and a bf16 run's compare directly (their ratio is the tokens/s ratio).
            scale = 1.0 if precision in ("bf16", "fp16", "fp8") else 0.5
            return spec.peak_bf16_flops * scale, f"table ({name}, {'bf16' if scale == 1 else 'tf32'})"
    return measure_matmul_flops(device), "measured matmul"


def measure_matmul_flops(device: torch.device, n: int = 1024, repeats: int = 8,
                         dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a square ``n`` × ``n`` matmul in ``dtype`` on this device, the best of ``repeats``: the one
    matmul peak measurement (the MFU of a CPU run, and the throughput benchmark's ``--peak measured`` in the
    training precision)."""
    import time

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        (a @ b).float().sum().item()  # .float() is a no-op in fp32; bf16 sums in fp32
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
