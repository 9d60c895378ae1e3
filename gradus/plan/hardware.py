"""Accelerators the planner knows, and parsing of the quantities people type (FLOPs, bytes, rates).

Pure Python: no torch.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

from gradus.errors import ConfigError
from gradus.units import parse_count


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator model."""

    name: str
    """Name as typed on the command line (``--gpu``)."""
    peak_bf16_flops: float
    """Peak dense (no 2:4 sparsity) bf16 tensor-core FLOP/s with fp32 accumulation, from the datasheet."""
    memory_bytes: int
    """Device memory of the common variant."""
    note: str
    """Which variant the numbers are for."""
    device_name: str
    """What the device's own name contains (``torch.cuda.get_device_name``: 'NVIDIA H100 80GB HBM3'): how
    the trainer finds the peak for its MFU (:func:`gpu_for_device`)."""


GPUS: dict[str, GPUSpec] = {
    "a100": GPUSpec("a100", 312e12, 80 * 2**30, "A100 SXM 80GB: 312 TFLOP/s dense bf16", "A100"),
    "h100": GPUSpec("h100", 989e12, 80 * 2**30, "H100 SXM 80GB: 989 TFLOP/s dense bf16 (PCIe: 756)", "H100"),
    "h200": GPUSpec("h200", 989e12, 141 * 2**30, "H200 SXM 141GB: 989 TFLOP/s dense bf16 (the H100's chip)", "H200"),
    # GeForce cards run bf16 with fp32 accumulation at half the fp16-accumulate rate (330 TFLOP/s).
    "rtx4090": GPUSpec("rtx4090", 165.2e12, 24 * 2**30, "RTX 4090 24GB: 165 TFLOP/s dense bf16, fp32 accumulate",
                       "4090"),
    "l40s": GPUSpec("l40s", 362e12, 48 * 2**30, "L40S 48GB: 362 TFLOP/s dense bf16", "L40S"),
    "a10g": GPUSpec("a10g", 70e12, 24 * 2**30, "A10G 24GB (AWS): 70 TFLOP/s dense bf16", "A10G"),
}
"""Peak dense bf16 rates, the one table of them: the planner (``--gpu``) and the trainer's MFU
(:func:`gpu_for_device`) both read it."""


def gpu_for_device(device_name: str) -> GPUSpec | None:
    """The spec of the GPU a device's own name names (``torch.cuda.get_device_name``, e.g. 'NVIDIA GeForce RTX
    4090'), None for a GPU not in :data:`GPUS`."""
    for spec in GPUS.values():
        if spec.device_name in device_name:
            return spec
    return None


def gpu_spec(name: str) -> GPUSpec:
    """The spec of a GPU by name (case and dashes ignored: ``H100``, ``rtx-4090``); an unknown name is a
    ConfigError listing the known ones."""
    key = re.sub(r"[\s_-]", "", name.lower())
    if key in GPUS:
        return GPUS[key]
    close = difflib.get_close_matches(key, list(GPUS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"--gpu {name!r}: unknown GPU; {hint}known: {', '.join(GPUS)} "
        f"(for another accelerator give --flops, or --tokens-per-sec for a timeline)"
    )


def parse_float(text: str | float, flag: str, *, positive: bool = True) -> float:
    """A float from the command line (``2e22``, ``1.2e20``, ``0.4``, also ``10M``-style counts); a bad or
    non-positive value is a ConfigError naming the flag."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        try:
            value = float(text.replace("_", ""))
        except ValueError:
            try:
                value = float(parse_count(text, bounded=False))  # FLOPs have their own bound
            except ValueError:
                raise ConfigError(f"{flag} {text!r}: not a number; write e.g. 2e22, 1.5e9 or 20B") from None
    if not math.isfinite(value) or (positive and value <= 0):
        raise ConfigError(f"{flag} {text!r}: must be a positive finite number")
    return value


def parse_amount(text: str | float, flag: str) -> float:
    """A count with units (``1B``, ``124M``, ``20B``, ``7e9``, ``85k``) as a float; ConfigError if bad."""
    if isinstance(text, str):
        m = re.fullmatch(r"\s*([0-9][0-9_.]*(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", text)
        if m:
            scale = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}[m.group(2).upper()]
            try:
                return parse_float(float(m.group(1).replace("_", "")) * scale, flag)
            except ValueError:
                pass
        raise ConfigError(f"{flag} {text!r}: not a count; write e.g. 1B, 124M, 20B or 7e9")
    return parse_float(text, flag)


_BYTE_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
               "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40, "TIB": 2**40}


def parse_bytes(text: str | float, flag: str = "--device-memory") -> int:
    """Memory sizes: ``24GB``, ``80GiB``, ``512MB``, ``25769803776``. GB and GiB both mean 2³⁰ bytes,
    because device memory is sold in binary units (a "24 GB" RTX 4090 holds 24 GiB)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9][0-9_.]*(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
        unit = m.group(2).upper() if m else None
        if m is None or unit not in _BYTE_UNITS:
            raise ConfigError(f"{flag} {text!r}: not a memory size; write e.g. 24GB, 80GiB or 512MB")
        value = float(m.group(1).replace("_", "")) * _BYTE_UNITS[unit]
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag} {text!r}: must be a positive size")
    return int(value)


def format_bytes(n: float) -> str:
    """Binary units with one decimal: '23.4 GiB', '512.0 MiB'."""
    for suffix, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{int(n)} B"


def format_flops(x: float) -> str:
    """Scientific with two significant digits: 1.2e+20 -> '1.2e20'."""
    text = f"{x:.2g}"
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"
