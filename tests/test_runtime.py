"""The trainer's peak FLOP/s for MFU: read from the planner's one GPU table, so both say the same figure."""

from __future__ import annotations

import pytest
import torch

from gradus.plan.hardware import GPUS, gpu_for_device
from gradus.train import runtime

# What torch.cuda.get_device_name says on each card, and the GPUS entry it must find.
DEVICE_NAMES = {
    "NVIDIA A100-SXM4-80GB": "a100",
    "NVIDIA H100 80GB HBM3": "h100",
    "NVIDIA H100 PCIe": "h100",
    "NVIDIA H200": "h200",
    "NVIDIA GeForce RTX 4090": "rtx4090",
    "NVIDIA L40S": "l40s",
    "NVIDIA A10G": "a10g",
}


@pytest.mark.parametrize("device_name, key", DEVICE_NAMES.items())
def test_a_device_name_finds_its_table_entry(device_name, key):
    assert gpu_for_device(device_name) is GPUS[key]


def test_every_table_entry_is_found_by_its_own_name_and_no_other():
    for key, spec in GPUS.items():
        assert gpu_for_device(f"NVIDIA {spec.device_name}") is spec, key
        others = [k for k, s in GPUS.items() if s is not spec and s.device_name in spec.device_name]
        assert not others, f"{key}'s device name also matches {others}"
    assert gpu_for_device("NVIDIA Tesla V100-SXM2-16GB") is None


@pytest.mark.parametrize("device_name, key", DEVICE_NAMES.items())
@pytest.mark.parametrize("precision, scale", [("bf16", 1.0), ("fp16", 1.0), ("fp32", 0.5)])
def test_runtime_peak_flops_is_the_planners_figure(monkeypatch, device_name, key, precision, scale):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: device_name)
    monkeypatch.setattr(runtime, "measure_matmul_flops", lambda *a, **k: pytest.fail("measured a listed GPU"))
    value, source = runtime.peak_flops(torch.device("cuda"), None, precision)
    assert value == GPUS[key].peak_bf16_flops * scale
    assert source == f"table ({device_name}, {'bf16' if scale == 1 else 'tf32'})"


def test_runtime_peak_flops_of_an_unlisted_gpu_is_measured(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Tesla V100-SXM2-16GB")
    monkeypatch.setattr(runtime, "measure_matmul_flops", lambda device, **k: 1.5e13)
    assert runtime.peak_flops(torch.device("cuda"), None, "bf16") == (1.5e13, "measured matmul")
    assert runtime.peak_flops(torch.device("cpu"), 2e14, "bf16") == (2e14, "logging.peak_flops")


def test_the_table_keeps_its_figures():
    """Typed in: MFU of earlier runs and the planner's projections were computed from these."""
    assert {k: s.peak_bf16_flops for k, s in GPUS.items()} == {
        "a100": 312e12, "h100": 989e12, "h200": 989e12, "rtx4090": 165.2e12, "l40s": 362e12, "a10g": 70e12,
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_measure_matmul_flops_in_each_precision(dtype):
    assert runtime.measure_matmul_flops(torch.device("cpu"), n=64, repeats=2, dtype=dtype) > 0


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                              ("fp16", torch.bfloat16)])
def test_the_throughput_benchmark_measures_through_the_same_function(monkeypatch, precision, dtype):
    from gradus.experiments import throughput

    calls = []
    monkeypatch.setattr(runtime, "measure_matmul_flops", lambda device, **k: calls.append(k) or 3e12)
    assert throughput.measure_peak(torch.device("cpu"), precision) == 3e12
    assert calls == [{"n": 1024, "repeats": 8, "dtype": dtype}]
