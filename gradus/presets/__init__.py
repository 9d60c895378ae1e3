"""Curricula shipped as YAML: the plans' presets, the offline CPU demo and a no-curriculum baseline.

``gradus train --preset NAME`` and ``gradus schedule --preset NAME`` load them by name; ``gradus schedule
--list`` lists them with the first line of each file's header comment (which plan it comes from).
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from gradus.config import GradusConfig, load_config
from gradus.errors import ConfigError


def presets_dir() -> Path:
    """Folder holding the shipped preset YAML files."""
    return Path(str(resources.files(__name__)))


def list_presets() -> list[str]:
    """Names of all shipped presets, sorted."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    """Path of a preset by name (``aggressive`` or ``aggressive.yaml``); an unknown name is a ConfigError
    listing the known ones."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    known = list_presets()
    if stem not in known:  # also keeps names like ../x from reaching outside the folder
        close = difflib.get_close_matches(stem, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"--preset {name!r}: unknown preset; {hint}known presets: {', '.join(known)}")
    return presets_dir() / f"{stem}.yaml"


def preset_description(name: str) -> str:
    """The first sentence-line of a preset's header comment, without the leading ``# name —``."""
    for line in preset_path(name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip()
            for dash in (" — ", " - "):
                if text.startswith(name) and dash in text:
                    text = text.split(dash, 1)[1]
                    break
            return text
        if line.strip():
            break
    return ""


def load_preset(name: str, overrides: list[str] | None = None) -> GradusConfig:
    """Load and validate a shipped preset, with ``--set``-style overrides applied."""
    return load_config(preset_path(name), overrides, origin=f"preset {name}")
