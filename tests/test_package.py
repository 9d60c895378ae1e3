"""The package a user installs: its distribution name, version, licence and changelog agree, and ``python -m
gradus`` is the ``gradus`` command."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import gradus

REPO = Path(__file__).resolve().parents[1]


def test_the_distribution_is_gradus_lm_and_its_version_is_the_package_s():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # "gradus" on the public index is an unrelated project: `pip install gradus` would install the wrong thing.
    assert project["name"] == "gradus-lm"
    assert importlib.metadata.version("gradus-lm") == gradus.__version__


def test_the_changelog_has_a_section_for_this_version_and_the_licence_file_is_the_declared_one():
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## {re.escape(gradus.__version__)} — \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.M)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "Apache-2.0"
    licence = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence


def test_python_dash_m_gradus_is_the_gradus_command():
    out = subprocess.run([sys.executable, "-m", "gradus", "--version"], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert gradus.__version__ in out.stdout
