"""What the benchmark scripts share: where results go, the machine description, result files and plots.

The scripts are not a package; each puts this folder on ``sys.path`` and imports ``common``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
"""The folder published results live in."""


def machine() -> dict:
    """What the figures were measured on: CPU model and cores, GPUs, torch, Python, platform, and a one-line
    ``summary`` (the same description ``gradus sweep`` / ``gradus compare`` record)."""
    from gradus.experiments.sweep import machine as describe

    return describe()


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
