"""Dry runs on CPU of the two GPU measurements of issue 32 §2 that run several pieces per call:
benchmarks/gpu/compare_124M.py (curriculum against the full- and half-batch baselines, ``--device cpu --smoke``)
and benchmarks/gpu/memory_1B.py (peak memory per stage against gradus plan's estimate). Each writes its JSON, and
a rerun reads finished work back instead of doing it again. The figures are CPU figures of a dry run; the GPU's
are measured on the GPU (benchmarks/gpu/README.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from builders import load_benchmark

REPO = Path(__file__).resolve().parents[1]
COMPARE = REPO / "benchmarks" / "gpu" / "compare_124M.py"
MEMORY = REPO / "benchmarks" / "gpu" / "memory_1B.py"


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _rerun(script: Path, args: list[str], capsys) -> str:
    """The script's main() again, in this process: what it prints. A rerun that reads finished work back is
    mostly the start-up of a process (torch, gradus) the first call, a process of its own, already paid."""
    capsys.readouterr()
    assert load_benchmark(script.stem, "gpu").main(args) == 0
    return capsys.readouterr().out


def test_compare_124M_smoke_adds_runs_until_complete_and_reads_them_back(tmp_path, offline_data, capsys):
    out, work = tmp_path / "compare_tiny.json", tmp_path / "work"
    args = ["--device", "cpu", "--smoke", "--seeds", "0", "--lrs", "3e-3", "--data", str(offline_data),
            "--work", str(work), "--out", str(out)]
    _run([str(COMPARE), *args, "--max-runs", "2"])  # a call that stops before the grid is complete
    first = json.loads(out.read_text(encoding="utf-8"))
    assert first["complete"] is False and first["missing"] == ["curriculum lr 0.003 seed 0"]
    assert first["trained_this_call"] == 2 and len(first["runs"]) == 2 and "--max-runs" in first["stopped"]
    assert first["arms"]["baseline"]["lr_grid"]["0.003"][0] is not None and "note" in first

    shutil.rmtree(work)  # a fresh machine: the finished runs come back from the file
    second = _rerun(COMPARE, args, capsys)  # (its one run still trains in a gradus train process)
    assert "2 finished run(s) restored" in second and second.count("(read back)") == 2
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["complete"] is True and result["missing"] == [] and result["trained_this_call"] == 1
    assert set(result["arms"]) == {"baseline", "baseline-half-batch", "curriculum"}
    assert result["settings"]["model"] == "tiny" and 0 < result["epochs"] <= 4
    for arm in result["arms"].values():
        for key in ("lr_grid", "lr", "lr_at_edge", "tokens_to_target", "seconds_to_target", "speedup_tokens",
                    "speedup_wallclock", "speedup_tokens_band", "speedup_wallclock_band", "final_val_loss"):
            assert key in arm, key
        assert arm["lr"] == 3e-3 and arm["lr_at_edge"] is True
    ref = result["arms"][result["target_baseline"]]
    assert ref["speedup_tokens"] == pytest.approx(1.0) and result["target"] == pytest.approx(ref["final_val_loss"])
    assert result["verdict"]

    third = _rerun(COMPARE, args, capsys)  # everything in: nothing trains
    assert third.count("(read back)") == 3 and json.loads(out.read_text())["trained_this_call"] == 0


def test_memory_1B_smoke_writes_every_stage_and_reads_it_back(tmp_path, capsys):
    out = tmp_path / "memory_tiny.json"
    args = ["--device", "cpu", "--smoke", "--steps", "1", "--out", str(out)]
    _run([str(MEMORY), *args])
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["smoke"] is True and result["settings"]["preset"] == "1b-compact"
    assert [s["seq_len"] for s in result["stages"]] == [8, 8, 32]  # 2048, 2048, 8192 ÷ 256
    for st in result["stages"]:
        assert st["estimate_bytes"] > 0 and st["peak_bytes"] > 0 and st["oom"] is False
        assert st["ratio_measured_to_estimate"] == pytest.approx(st["peak_bytes"] / st["estimate_bytes"])
        assert st["fits_80GiB"] is True and st["micro_batch"] >= 1
    assert "same shape" in result["stages"][1]["measured_as"]  # A and B share a shape: measured once
    assert result["fits_one_80GiB_gpu"] is True and result["stages_not_fitting"] == []
    again = _rerun(MEMORY, args, capsys)
    assert again.count("read back") == 3
    assert json.loads(out.read_text(encoding="utf-8"))["stages"] == result["stages"]


def test_both_without_a_gpu_are_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    for script in (COMPARE, MEMORY):
        proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "x.json")], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no CUDA device" in proc.stderr
