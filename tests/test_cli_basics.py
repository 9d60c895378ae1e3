"""The command line's manners: bare ``gradus`` prints help, and a closed pipe (``gradus schedule | head``)
ends quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gradus.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_bare_gradus_prints_help_and_trains_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a training run would create runs/ here
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gradus ")
    assert all(name in out for name in COMMANDS)
    assert list(tmp_path.iterdir()) == []


def test_a_closed_pipe_ends_quietly():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "gradus.cli", "schedule", "--preset", "demo"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before the first line, as `| head` does after its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""
