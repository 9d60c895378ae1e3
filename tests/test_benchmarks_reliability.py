"""The fast part of benchmarks/reliability.py: a few NaN-injection and save-fault cases, all N/N."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from builders import tiny_config

REPO = Path(__file__).resolve().parents[1]


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
