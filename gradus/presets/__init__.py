"""Curricula shipped as YAML: the plans' presets, the offline CPU demo and a no-curriculum baseline.

``gradus train --preset NAME`` and ``gradus schedule --preset NAME`` load them by name.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from gradus.errors import ConfigError


def presets_dir() -> Path:
    """Folder holding the shipped preset YAML files."""
    return Path(str(resources.files(__name__)))


def list_presets() -> list[str]:
    """Names of all shipped presets, sorted."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    """Path of a preset by name; an unknown name is a ConfigError listing the known ones."""
    path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        known = list_presets()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"--preset {name!r}: unknown preset; {hint}known presets: {', '.join(known)}")
    return path
