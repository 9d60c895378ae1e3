"""The stage-throughput summaries on hand-made steps: steady means, transition seconds, the paired ratio,
the medians over repeats with their spread (the figures benchmarks/stage_throughput.py prints and writes)."""

from __future__ import annotations

import pytest

from gradus.experiments.throughput import RepeatRun, StageShape, StepRecord
from gradus.experiments.throughput_table import combine, format_table, summarize_repeat, transition_steps

STAGE = StageShape(index=0, source_index=2, name="s64", seq_len=64, batch=4, tokens_per_step=256, grad_clip=1.0,
                   peak_lr=1e-3)


def _repeat(fw_times: list[float], pl_times: list[float]) -> RepeatRun:
    fw = [StepRecord(wall_s=t, inner_s=t - 0.01, data_wait_s=0.002) for t in fw_times]
    pl = [StepRecord(wall_s=t) for t in pl_times]
    return RepeatRun(order="plain first", framework={0: fw}, plain={0: pl})


def test_transition_steps_is_a_quarter_between_one_and_three():
    assert [transition_steps(n) for n in (2, 4, 8, 12, 40)] == [1, 1, 2, 3, 3]


def test_one_repeat_gives_steady_means_transition_and_the_paired_ratio():
    # 4 steps: the first is the transition (max(1, min(3, 4 // 4)) = 1), the other three are steady.
    rep = _repeat([0.50, 0.20, 0.20, 0.20], [0.30, 0.18, 0.18, 0.18])
    row = summarize_repeat(rep, [STAGE], 4, {0: 1000.0}, peak=1e6, sampler=None)[0]
    fw, pl = row["framework"], row["plain"]
    assert fw["step_time_s"] == pytest.approx(0.20) and fw["tokens_per_sec"] == pytest.approx(1280.0)
    assert fw["transition_seconds"] == pytest.approx(0.30) and pl["transition_seconds"] == pytest.approx(0.12)
    assert fw["mfu"] == pytest.approx(1000.0 * 1280.0 / 1e6)
    assert fw["breakdown_s"]["train_step"] == pytest.approx(0.188)
    assert row["ratio"] == pytest.approx(0.9) and row["ratio_pair_median"] == pytest.approx(0.9)


def test_combine_takes_medians_over_repeats_and_keeps_their_spread():
    reps = [summarize_repeat(_repeat([0.5] + [t] * 3, [0.3] + [0.18] * 3), [STAGE], 4, {0: 1000.0}, 1e6, None)
            for t in (0.20, 0.24, 0.18)]
    (entry,) = combine([STAGE], reps, {0: 1000.0})
    assert entry["config_stage"] == 2 and entry["tokens_per_step"] == 256
    assert entry["ratio"] == pytest.approx(0.9) and entry["ratio_spread"]["min"] == pytest.approx(0.75)
    assert entry["tokens_per_sec"]["framework"] == pytest.approx(1280.0)
    assert entry["tokens_per_sec_spread"]["framework"]["max"] == pytest.approx(256 / 0.18)
    assert entry["transition_seconds_spread"]["plain"]["median"] == pytest.approx(0.12)
    table = format_table([entry], 1e6, "--peak", "process resident memory")
    assert "s64" in table and "0.900" in table
