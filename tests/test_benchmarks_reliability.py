"""The fast part of benchmarks/reliability.py: a few NaN-injection and save-fault cases, all N/N."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from builders import tiny_config

REPO = Path(__file__).resolve().parents[1]


# Eleven gradus train processes (~5 s of start-up each, ~60 s on a loaded 2-core box). The default run covers the
# same cases in-process in tests/test_reliability.py: a batch bad at any LR stops with one line and exit 3
# (test_a_batch_bad_at_any_lr_stops_with_one_line_exit_3), skip_bad_batches finishes past nan@9,inf@10,nan@11
# (test_skip_bad_batches_records_the_data_positions_and_finishes), a save failing at each point is one line and
# keeps the previous checkpoint (test_every_failure_of_a_save_is_one_line_and_keeps_the_previous,
# test_a_full_disk_through_the_cli_exits_2_without_a_partial_folder), a kill's leftovers are cleaned
# (test_leftovers_of_kills_are_cleaned_and_best_restored) and a resume logs every step once; a real SIGKILL
# inside a save and the resume after it in tests/test_parallel.py (test_killed_after_a_sharded_checkpoint_...).
# benchmarks/reliability.py runs every family in full.
@pytest.mark.slow
def test_reliability_quick_is_all_passed(tmp_path, offline_data):
    config = tmp_path / "tiny.yaml"
    raw = tiny_config(offline_data)
    raw["logging"]["log_every"] = 1
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "reliability.py"), "--config", str(config),
                           "--quick", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert figures == {"faults": {"passed": 2, "total": 2}, "save": {"passed": 3, "total": 3}}
    assert "faults     2/2" in proc.stdout and "save       3/3" in proc.stdout
