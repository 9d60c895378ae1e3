"""The plans' small rules: examples per step from a token budget, the seq_batch LR rule, the clip rule.

Pure arithmetic (layer 1), shared by the schedule's resolution, the LR finder and the benchmarks.
"""

from __future__ import annotations

import math

CLIP_BY_LENGTH = ((128, 5.0), (512, 1.0))
"""clip_rule by_length: (max seq_len, clip) pairs; longer sequences get 0.5."""
CLIP_BY_LENGTH_LONG = 0.5


def _round_half_up(x: float) -> int:
    # Python's round() goes to the even neighbour (round(2.5) == 2); a batch size should not depend on that.
    return math.floor(x + 0.5)


def derive_batch(tokens_per_batch: int, seq_len: int, multiple: int) -> int:
    """Examples per step for a token budget per step: rounded to the nearest multiple of ``multiple``;
    when that budget holds fewer than ``multiple`` examples, the nearest whole number (never below 1)."""
    raw = tokens_per_batch / seq_len
    if raw >= multiple:
        return max(multiple, _round_half_up(raw / multiple) * multiple)
    return max(1, _round_half_up(raw))


def seq_batch_multiplier(seq_len: int, batch: int, max_seq_len: int) -> float:
    """The plans' LR rule: min(max_seq_len / seq_len, 4) × sqrt(batch / 32)."""
    return min(max_seq_len / seq_len, 4.0) * math.sqrt(batch / 32.0)


def clip_by_length(seq_len: int) -> float:
    """The plans' clip rule: seq_len ≤ 128 → 5.0, ≤ 512 → 1.0, else 0.5."""
    for limit, clip in CLIP_BY_LENGTH:
        if seq_len <= limit:
            return clip
    return CLIP_BY_LENGTH_LONG
