"""Token counts with units: ``10M``, ``1.5B``, ``32_768``, ``32k``; and their human-readable form.

Pure Python (layer 0): used by the config schema, the curriculum engine and the planner.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

MAX_COUNT = 10**15
"""The largest count accepted (tokens, steps, documents): 1,000T, some 30× the largest training runs' token
counts; a bigger one is a typo (``1e30``) that would otherwise plan a schedule of 10^26 steps."""

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_PATTERN = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9_]+)?(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*$")


class CountTooLarge(ValueError):
    """A count above :data:`MAX_COUNT`: a number, but not a real run's."""


def parse_count(value: int | float | str, what: str = "token count", *, bounded: bool = True) -> int:
    """Parse a count such as ``10M``, ``1.5B``, ``32_768``, ``2e9`` or ``32k`` into an int.

    Raises ValueError with a message that says which forms are accepted; above :data:`MAX_COUNT`,
    :class:`CountTooLarge` (``bounded=False``: no bound, for quantities that are not counts of tokens,
    steps or documents, such as FLOPs written ``2000T``).
    """
    count = _whole(value, what)
    if bounded and abs(count) > MAX_COUNT:
        raise CountTooLarge(f"{what} must be at most 1,000T (10^15), got {value!r}")
    return count


def _whole(value: int | float | str, what: str) -> int:
    """:func:`parse_count` before its bound."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number such as 10M, 1.5B or 32_768, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{what} must be a whole number, got {value!r}")
        return int(value)
    if isinstance(value, str):
        m = _PATTERN.match(value)
        if m:
            # Decimal, not float: 1.005K must be exactly 1005, which binary floating point misses.
            try:
                result = Decimal(m.group(1).replace("_", "")) * _SUFFIX[m.group(2).upper()]
            except InvalidOperation:
                result = Decimal("NaN")
            if result.is_finite() and result == result.to_integral_value():
                return int(result)
            raise ValueError(f"{what} must be a whole number, got {value!r}")
    raise ValueError(f"{what} must be a number such as 10M, 1.5B or 32_768, got {value!r}")


def parse_rate(value: int | float | str, what: str = "rate") -> float:
    """Parse a positive quantity that may be fractional: ``1500``, ``12.5k``, ``2.1M`` (tokens per second)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        m = _PATTERN.match(str(value))
        if not m:
            raise ValueError(f"{what} must be a number such as 1500, 12.5k or 2M, got {value!r}")
        number = float(m.group(1).replace("_", "")) * _SUFFIX[m.group(2).upper()]
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return number


def format_count(n: float, digits: int = 3) -> str:
    """Short human form: 32768 -> '32.8K', 1_000_000_000 -> '1B', 999 -> '999', 999_936 -> '1M'."""
    # Rounded to its significant digits first, so a count just under a unit's 1,000 is said in the next unit
    # ('1M', not '1e+03K': a budget trained in whole steps lands just under the one asked for).
    n = float(f"{float(n):.{digits}g}")
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            text = f"{n / scale:.{digits}g}"
            return f"{text}{suffix}"
    return f"{n:.{digits}g}" if n != int(n) else str(int(n))


def format_lr(lr: float) -> str:
    """Compact scientific form, as the plans write learning rates: 0.00678 -> '6.78e-3', 0.0006 -> '6e-4'."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def format_duration(seconds: float) -> str:
    """'1h 02m', '3m 05s', '12.0s', '2d 04h'."""
    if not math.isfinite(seconds):
        return "inf"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    if days:
        return f"{days}d {h:02d}h"
    if hours:
        return f"{hours}h {m:02d}m"
    return f"{m}m {s:02d}s"
