"""Which torch device a setting names, checked: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (or any device type
torch knows), with one line that names the setting when the text is not a device or CUDA is not here."""

from __future__ import annotations

import torch

from gradus.errors import ConfigError


def pick_device(value: str, setting: str, fix: str) -> torch.device:
    """The device ``value`` names (``auto``: CUDA when visible, else the CPU).

    ``setting`` names where the value came from (``--device`` or ``train.device``) and ``fix`` how to give
    another (``--device cpu``); a value torch cannot parse, or a CUDA device where none is visible (or
    beyond the visible count), is a :class:`ConfigError` naming both, not torch's traceback."""
    want = value.strip().lower()
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(want)
    except RuntimeError:
        raise ConfigError(f"{setting}={value!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting}={value!r} but no CUDA device is visible here; use {fix}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{setting}={value!r}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                              f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); use one of them")
    return device
