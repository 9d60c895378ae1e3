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


SEQ_BATCH_MAX_LENGTH_FACTOR = 4.0
"""seq_batch: the most a short sequence multiplies the LR by (max_seq_len / seq_len, capped here)."""
SEQ_BATCH_REFERENCE_BATCH = 32
"""seq_batch: the batch at which the width factor is 1 (it grows as sqrt(batch / this))."""


def seq_batch_words(seq_len: object = "seq_len", batch: object = "batch",
                    max_seq_len: object = "max_seq_len") -> tuple[str, str]:
    """The seq_batch rule's two factors in words, (length, width), with the names (the default) or a stage's
    values filled in: ``min(max_seq_len/seq_len, 4)``, ``sqrt(batch/32)``. The one spelling of the rule: every
    message, note and table takes its words from here (:data:`SEQ_BATCH_MULTIPLIER`, :data:`SEQ_BATCH_RULE`)."""
    return (f"min({max_seq_len}/{seq_len}, {SEQ_BATCH_MAX_LENGTH_FACTOR:g})",
            f"sqrt({batch}/{SEQ_BATCH_REFERENCE_BATCH})")


SEQ_BATCH_MULTIPLIER = " × ".join(seq_batch_words())
"""The seq_batch rule's multiplier in words (``min(max_seq_len/seq_len, 4) × sqrt(batch/32)``)."""
SEQ_BATCH_RULE = f"base × {SEQ_BATCH_MULTIPLIER}"
"""The seq_batch rule in words, the peak LR it gives (``base × min(max_seq_len/seq_len, 4) × sqrt(batch/32)``).
The config's field description (layer 0, which cannot import this) spells it too; ``tests/test_curriculum.py``
checks that it says this and that no other module spells it."""


def seq_batch_factors(seq_len: int, batch: int, max_seq_len: int) -> tuple[float, float]:
    """The seq_batch rule's two factors, (length, width): min(max_seq_len / seq_len, 4) and sqrt(batch / 32);
    the multiplier is their product (:func:`seq_batch_multiplier`)."""
    length = min(max_seq_len / seq_len, SEQ_BATCH_MAX_LENGTH_FACTOR)
    width = math.sqrt(batch / float(SEQ_BATCH_REFERENCE_BATCH))
    return length, width


def seq_batch_multiplier(seq_len: int, batch: int, max_seq_len: int) -> float:
    """The plans' LR rule (:data:`SEQ_BATCH_RULE`): min(max_seq_len / seq_len, 4) × sqrt(batch / 32)."""
    length, width = seq_batch_factors(seq_len, batch, max_seq_len)
    return length * width


def clip_by_length(seq_len: int) -> float:
    """The plans' clip rule: seq_len ≤ 128 → 5.0, ≤ 512 → 1.0, else 0.5."""
    for limit, clip in CLIP_BY_LENGTH:
        if seq_len <= limit:
            return clip
    return CLIP_BY_LENGTH_LONG
