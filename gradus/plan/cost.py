"""The cost model: FLOPs per token at each stage's length, projected time on a named GPU at a stated MFU,
and the projected speedup of a curriculum arm from its measured tokens to a target.

Pure Python (no torch). FLOPs per token come from :meth:`gradus.sizes.ModelShape.flops_per_token`, which
counts training (forward + backward) matmul FLOPs::

    6·N_mm + 6·n_layers·seq_len·d_model

``6·N_mm`` covers every weight used in a matmul (the non-embedding parameters plus the output head), and
the second term is causal attention (QKᵀ and A·V, averaged over the (seq_len+1)/2 positions a token
attends to). Norms, softmax, RoPE and the embedding lookup are left out (under 1%). The attention term is
what makes a short stage cheaper per token: at seq_len 64 it is 32× smaller than at 2048.

Time is FLOPs / (peak bf16 FLOP/s × MFU). One MFU for every length is an assumption: short sequences
often reach a lower MFU on a real GPU (smaller matmuls), so projected gains of short stages are an upper
bound until measured (``benchmarks/gpu/``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gradus.curriculum import Schedule
from gradus.errors import ConfigError
from gradus.plan.hardware import GPUSpec
from gradus.sizes import ModelShape

StageTokens = Sequence[tuple[int, int]]
"""A run's stage mix as (seq_len, tokens) pairs, in training order."""


@dataclass(frozen=True)
class StageCost:
    """One stage's projected cost."""

    index: int
    """Stage index (0-based)."""
    name: str
    """Stage name."""
    seq_len: int
    """Sequence length of the stage."""
    tokens: int
    """Training tokens of the stage."""
    flops_per_token: float
    """Training FLOPs per token at this length (matmuls and attention)."""
    flops: float
    """tokens × flops_per_token."""
    seconds: float
    """Projected time: flops / (peak × MFU)."""


def check_mfu(mfu: float, flag: str = "--mfu") -> float:
    """``mfu`` when it is a fraction in (0, 1]; otherwise a one-line ConfigError naming the flag."""
    if not (math.isfinite(mfu) and 0.0 < mfu <= 1.0):
        raise ConfigError(f"{flag} {mfu:g}: model FLOPs utilisation is a fraction in (0, 1]; write e.g. 0.4")
    return mfu


def seconds_for(flops: float, gpu: GPUSpec, mfu: float) -> float:
    """Seconds that ``flops`` training FLOPs take on ``gpu`` at ``mfu`` of its peak bf16 rate."""
    return flops / (gpu.peak_bf16_flops * check_mfu(mfu))


def stage_costs(schedule: Schedule, shape: ModelShape, gpu: GPUSpec, mfu: float) -> list[StageCost]:
    """FLOPs and projected time of every stage of ``schedule`` for the model ``shape``."""
    out = []
    for s in schedule.stages:
        per_token = shape.flops_per_token(s.seq_len)
        flops = s.tokens * per_token
        out.append(StageCost(index=s.index, name=s.name, seq_len=s.seq_len, tokens=s.tokens,
                             flops_per_token=per_token, flops=flops, seconds=seconds_for(flops, gpu, mfu)))
    return out


def first_tokens(stages: StageTokens, tokens: int) -> list[tuple[int, int]]:
    """The first ``tokens`` of a run split over its stages in order, as (seq_len, tokens) pairs: where a
    run that reached its target after ``tokens`` spent them. Past the last stage, its length continues."""
    if tokens < 0:
        raise ValueError(f"tokens={tokens}: must be ≥ 0")
    out: list[tuple[int, int]] = []
    left = tokens
    for seq_len, stage_tokens in stages:
        take = min(left, stage_tokens)
        if take:
            out.append((seq_len, take))
        left -= take
    if left:
        if not stages:
            raise ValueError("no stages to spend the tokens in")
        last_len = stages[-1][0]
        if out and out[-1][0] == last_len:  # the last stage runs on: one pair, not two
            out[-1] = (last_len, out[-1][1] + left)
        else:
            out.append((last_len, left))
    return out


def projected_flops(stages: StageTokens, shape: ModelShape) -> float:
    """Training FLOPs of a stage mix: Σ tokens × flops_per_token(seq_len)."""
    return sum(tokens * shape.flops_per_token(seq_len) for seq_len, tokens in stages)


def projected_speedup(shape: ModelShape, arm: StageTokens, arm_tokens: int,
                      baseline: StageTokens, baseline_tokens: int) -> float:
    """Projected wall-clock speedup of an arm over the baseline, both to the same target loss: the
    baseline's FLOPs for its first ``baseline_tokens`` divided by the arm's for its first ``arm_tokens``
    (each split over its own stage mix by :func:`first_tokens`).

    At one MFU for every length the GPU's peak and the MFU cancel, so this is the speedup on any GPU that
    runs short and long sequences equally well; what a benchmark prints next to its measured CPU figures."""
    arm_flops = projected_flops(first_tokens(arm, arm_tokens), shape)
    if arm_flops <= 0:
        raise ValueError("the arm spends no tokens; give its measured tokens to the target")
    return projected_flops(first_tokens(baseline, baseline_tokens), shape) / arm_flops
