"""Measure training throughput of one stage shape: the trainer's own optimizer step on a fresh :class:`GPT`.

Used by ``gradus plan --measure``. The model, AdamW and scaler come from the trainer's builder
(:func:`gradus.train.build.build_training_parts`) and each step is the trainer's
(:func:`gradus.train.step.optimizer_step`: the batch copied from the host, forward under the precision's
autocast, backward, unscale, clip, AdamW), so the figure is what a run of that shape steps at. torch is
imported inside the function, so importing this module (and listing commands) stays cheap.
"""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING, Any

from gradus.sizes import ModelShape
from gradus.train.resident_memory import RssSampler

if TYPE_CHECKING:
    from gradus.config import OptimConfig

_PRECISIONS = ("fp32", "bf16", "fp16")


def measure_stage_throughput(
    shape: ModelShape,
    seq_len: int,
    micro_batch: int,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    steps: int = 3,
    warmup: int = 1,
    seed: int = 0,
    optim: OptimConfig | None = None,
    activation_checkpointing: str = "none",
    checkpointing_every_k: int = 1,
) -> dict[str, Any]:
    """Time ``steps`` training steps (after ``warmup`` untimed ones) of a fresh GPT at one micro-batch of
    ``micro_batch`` × ``seq_len`` random tokens: the trainer's step (:func:`gradus.train.step.optimizer_step`:
    forward, loss, backward, gradient clip at 1 and an AdamW step at ``optim.base_lr``). The model, AdamW
    (``optim``, default: the config defaults) and scaler are built as the trainer builds them
    (:func:`gradus.train.build.build_training_parts`, seeded with ``seed``).

    Returns ``tokens_per_sec`` (micro_batch·seq_len / median step time), ``step_time_s`` (that median)
    and ``peak_memory_bytes``: on CUDA the allocator's peak (weights, optimizer state, activations); on CPU
    the growth of the process's resident memory during the run, an approximation.
    ``precision``: fp32, bf16 (autocast) or fp16 (autocast with a gradient scaler).
    ``activation_checkpointing`` (``none``, ``full`` or ``every_k`` with ``checkpointing_every_k``): the
    blocks' activations recomputed in the backward pass, as ``train.activation_checkpointing`` does.
    """
    import torch

    from gradus.config import OptimConfig
    from gradus.train.build import build_training_parts
    from gradus.train.runtime import Runtime
    from gradus.train.step import optimizer_step

    if precision not in _PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(_PRECISIONS)}")
    if steps < 1 or warmup < 0 or micro_batch < 1:
        raise ValueError("steps ≥ 1, warmup ≥ 0 and micro_batch ≥ 1 are required")
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    rt = Runtime(device=dev, precision=precision)  # one process: autocast as the precision says
    optim = optim or OptimConfig()

    def run() -> tuple[list[float], int | None]:
        # Everything the steps allocate lives in this frame and is freed when it returns.
        generator = torch.Generator().manual_seed(seed)
        prepare = None
        if activation_checkpointing != "none":
            from gradus.train.parallel import apply_activation_checkpointing

            def prepare(model) -> None:
                apply_activation_checkpointing(model, activation_checkpointing, checkpointing_every_k)

        parts = build_training_parts(shape, optim, dev, precision, seed, prepare=prepare)
        parts.model.train()
        # On the host, as the data pipeline hands a batch to the trainer (pinned on CUDA, as it pins them).
        tokens = torch.randint(0, shape.vocab_size, (micro_batch, seq_len + 1), generator=generator)
        inputs, labels = tokens[:, :-1], tokens[:, 1:]
        if cuda:
            inputs, labels = inputs.pin_memory(), labels.pin_memory()

        def step() -> None:
            optimizer_step(parts.model, parts.model, parts.optimizer, parts.scaler, inputs, labels, lr=optim.base_lr,
                           clip=1.0, micro=micro_batch, rt=rt)

        for _ in range(warmup):
            step()
        times = []
        for _ in range(steps):
            if cuda:
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
        return times, (torch.cuda.max_memory_allocated(dev) if cuda else None)

    gc.collect()
    base = 0
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    with RssSampler() as sampler:
        start_rss = sampler.peak
        times, cuda_peak = run()
    peak = cuda_peak - base if cuda_peak is not None else max(0, sampler.peak - start_rss)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    step_time = sorted(times)[len(times) // 2]
    return {
        "tokens_per_sec": micro_batch * seq_len / step_time,
        "step_time_s": step_time,
        "peak_memory_bytes": int(peak),
    }
