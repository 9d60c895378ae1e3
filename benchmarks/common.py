"""What the benchmark scripts share: where results go, the machine description, result files and plots.

The scripts are not a package; each puts this folder on ``sys.path`` and imports ``common``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
"""The folder published results live in."""


def machine() -> dict:
    """What the figures were measured on: CPU model and cores, GPUs, torch, Python, platform, and a one-line
    ``summary`` (the same description ``gradus sweep`` / ``gradus compare`` record)."""
    from gradus.experiments.common import machine as describe

    return describe()


def is_baseline(name: str) -> bool:
    """Whether an arm of a ``curriculum_speedup.py`` result is one of its baselines (also for arms of older files
    the script has since dropped: their names start with "baseline")."""
    from gradus.experiments.speedup_arms import ARMS

    arm = ARMS.get(name)
    return arm.baseline if arm is not None else name.startswith("baseline")


def calibration_cost(report: dict) -> dict[tuple[int, int], float]:
    """A ``curriculum_speedup.py`` result's calibrated seconds per token of each shape, keyed (seq_len, tokens
    per step) as :mod:`gradus.experiments.analysis` wants them (the file writes "LxB": length L, B rows)."""
    cost = {}
    for key, seconds in report["calibration"]["seconds_per_token"].items():
        length, rows = (int(x) for x in key.split("x"))
        cost[(length, length * rows)] = seconds
    return cost


def write_result(path: Path, report: dict) -> Path:
    """Write a result file as indented JSON (folders created); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return path


def read_result(path: Path, script: str) -> dict:
    """A result file; one line naming the file and the reason (as SystemExit) when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{script}: cannot read {path}: {exc}") from None


def save_plot(draw: Callable[[Path], None], path: Path, log: Callable[[str], None] = print) -> bool:
    """Run ``draw(path)`` and say so; without matplotlib say how to get it instead. True when written."""
    try:
        draw(path)
    except ImportError:
        log("matplotlib is not installed: no PNG (pip install matplotlib)")
        return False
    log(f"wrote {path}")
    return True


def machine_info(device) -> dict:
    """What one device's figures were measured on: device, platform, Python, torch, CPU model and count,
    torch threads, memory, and the GPU's name on CUDA (the ``machine`` block of stage_throughput's JSON)."""
    import torch

    info: dict[str, Any] = {
        "device": str(device),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def git_revision() -> str | None:
    """Short commit of the checkout, with ``+dirty`` when the tree has changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def cuda_missing(script: str, device: str) -> bool:
    """True, having said so in one line on stderr, when ``--device cuda`` was asked for and no CUDA device is
    visible (the GPU scripts then exit 2; ``--device cpu --smoke`` is their dry run)."""
    import sys

    import torch

    if device != "cuda" or torch.cuda.is_available():
        return False
    print(f"{script}: error: --device cuda but no CUDA device is visible; use --device cpu --smoke", file=sys.stderr)
    return True


def run_resumable(main: Callable[[], int], script: str) -> None:
    """Run a resumable benchmark's ``main`` and exit: 130 with the line that says how to continue when it is
    stopped (Ctrl-C, or SIGTERM turned into KeyboardInterrupt: its runs checkpointed, or finished and are
    kept), 2 with the package's one-line error (a failed tokenizer, lr-find without a suggestion)."""
    import sys

    from gradus.errors import GradusError

    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print(f"{script}: stopped; run the same command again to continue (finished runs are read back)",
              file=sys.stderr)
        sys.exit(130)
    except GradusError as exc:
        print(f"{script}: {exc}", file=sys.stderr)
        sys.exit(2)
