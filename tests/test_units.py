"""Token counts with units, and their human-readable forms."""

from __future__ import annotations

import pytest

from gradus.units import format_count, format_duration, format_lr, parse_count, parse_rate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10M", 10_000_000),
        ("1.5B", 1_500_000_000),
        ("32_768", 32_768),
        ("32k", 32_000),
        ("32K", 32_000),
        ("250M", 250_000_000),
        ("1B", 1_000_000_000),
        ("2e9", 2_000_000_000),
        ("1.005K", 1_005),  # exact: a float product would give 1004.999...
        ("1.1B", 1_100_000_000),
        (" 64 ", 64),
        (32_768, 32_768),
        (1e6, 1_000_000),
    ],
)
def test_parse_count(text, expected):
    assert parse_count(text) == expected


@pytest.mark.parametrize("bad", ["1.5", "ten", "10X", "-5", "", "1.5.5M", True, 2.5, float("inf")])
def test_parse_count_rejects(bad):
    with pytest.raises(ValueError, match="token count"):
        parse_count(bad)


def test_parse_count_names_what():
    with pytest.raises(ValueError, match="step count"):
        parse_count("2 steps", "step count")


def test_parse_rate_allows_fractions():
    assert parse_rate("12.5k") == 12_500.0
    assert parse_rate(1500) == 1500.0
    assert parse_rate("2M") == 2e6
    for bad in ("0", "-3", "fast"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_format_count():
    assert format_count(32_768) == "32.8K"
    assert format_count(1_000_000_000) == "1B"
    assert format_count(3_276_800_000) == "3.28B"
    assert format_count(999) == "999"
    assert format_count(0) == "0"
    # Just under a unit's thousand (a budget trained in whole steps): the next unit, never '1e+03K'.
    assert format_count(999_936) == "1M" and format_count(999_817_216) == "1B" and format_count(999.96) == "1K"


def test_format_lr_as_the_plans_write_it():
    assert format_lr(6e-4 * 11.3) == "6.78e-3"
    assert format_lr(6e-4) == "6e-4"
    assert format_lr(4.2e-4) == "4.2e-4"


def test_format_duration():
    assert format_duration(12.04) == "12.0s"
    assert format_duration(185) == "3m 05s"
    assert format_duration(3720) == "1h 02m"
    assert format_duration(2 * 86400 + 4 * 3600) == "2d 04h"
    assert format_duration(float("inf")) == "inf"


@pytest.mark.parametrize("value", ["1e30", "1001T", 10**16, 2e15])
def test_a_count_beyond_any_run_is_refused(value):
    from gradus.units import CountTooLarge

    with pytest.raises(CountTooLarge, match="at most 1,000T"):
        parse_count(value)
    assert parse_count("1000T") == 10**15  # the bound itself is a count
