"""The package a user installs: its distribution name, version, licence and changelog agree, and ``python -m
gradus`` is the ``gradus`` command."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import gradus

REPO = Path(__file__).resolve().parents[1]


def test_the_distribution_is_gradus_lm_and_its_version_is_the_package_s():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    # "gradus" on the public index is an unrelated project: `pip install gradus` would install the wrong thing.
    assert project["name"] == "gradus-lm"
    assert project["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "gradus.__version__"}
    # An install's metadata is written when it is installed: compare it when it was installed from here.
    dist = importlib.metadata.distribution("gradus-lm")
    if json.loads(dist.read_text("direct_url.json") or "{}").get("url") == REPO.as_uri():
        assert dist.version == gradus.__version__, "reinstall: pip install -e ."


def test_the_changelog_has_a_section_for_this_version_and_the_licence_file_is_the_declared_one():
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    version = gradus.__version__
    released = re.findall(r"^## (\d+\.\d+\.\d+) — \d{4}-\d{2}-\d{2}$", changelog, re.M)
    if version.endswith(".dev0"):  # between releases: the next one's changes gather under "Unreleased"
        assert re.search(r"^## Unreleased$", changelog, re.M)
        assert released and _key(released[0]) < _key(version.removesuffix(".dev0"))
    else:
        assert released and released[0] == version  # the newest section is this release, dated
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "Apache-2.0"
    licence = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence


def test_python_dash_m_gradus_is_the_gradus_command():
    out = subprocess.run([sys.executable, "-m", "gradus", "--version"], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert gradus.__version__ in out.stdout


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))
