"""Dry run of benchmarks/gpu/fp8_vs_bf16.py on CPU (``--device cpu --smoke``: the tiny model, fp8 through torchao's
emulation): both arms run, the file carries the two ratios, and a rerun reads the finished arms back. The figures
are CPU figures of a dry run; the GPU's are measured on the GPU (benchmarks/gpu/README.md)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from builders import load_benchmark

from gradus.train.fp8 import torchao_available

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu" / "fp8_vs_bf16.py"


@pytest.mark.skipif(not torchao_available(), reason="torchao is not installed (pip install 'gradus-lm[fp8]')")
def test_fp8_vs_bf16_smoke_writes_both_ratios_and_reads_finished_arms_back(tmp_path, offline_data, capsys):
    out = tmp_path / "fp8_tiny.json"
    args = ["--device", "cpu", "--smoke", "--steps", "4", "--data", str(offline_data), "--out", str(out)]
    first = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["smoke"] is True and result["settings"]["model"] == "tiny" and result["settings"]["steps"] == 4
    for precision in ("bf16", "fp8"):
        arm = result["arms"][precision]
        assert arm["steps"] == 4 and len(arm["losses"]) == 4 and arm["tokens_per_step"] == 32 * 4
        assert arm["tokens_per_s"] * arm["step_time_s"] == pytest.approx(arm["tokens_per_step"])
        assert 0 < arm["mfu"] < 1 and math.isfinite(arm["loss_after_n_steps"])
    bf16, fp8 = result["arms"]["bf16"], result["arms"]["fp8"]
    assert result["fp8_vs_bf16_tokens_per_s"] == pytest.approx(fp8["tokens_per_s"] / bf16["tokens_per_s"])
    assert result["loss_ratio"] == pytest.approx(fp8["loss_after_n_steps"] / bf16["loss_after_n_steps"])
    assert abs(result["loss_ratio"] - 1) < 0.02  # same data and init; float8 rounding only

    # The rerun in this process (its start-up, torchao's import above all, is most of a call that trains nothing).
    capsys.readouterr()
    assert load_benchmark("fp8_vs_bf16", "gpu").main(args) == 0
    again = capsys.readouterr().out
    assert "bf16: read back" in again and "fp8: read back" in again
    assert json.loads(out.read_text(encoding="utf-8"))["arms"] == result["arms"]


def test_fp8_vs_bf16_without_a_gpu_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "124M", "--out", str(tmp_path / "x.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "no CUDA device" in proc.stderr and "--device cpu --smoke" in proc.stderr
