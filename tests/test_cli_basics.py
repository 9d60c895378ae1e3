"""The command line's manners: bare ``gradus`` prints help, and a closed pipe (``gradus schedule | head``)
ends quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_a_single_process_exits_the_ordinary_way(monkeypatch):
    import gradus.cli as cli

    monkeypatch.setattr(cli, "main", lambda: 3)
    monkeypatch.setattr(os, "_exit", lambda code: pytest.fail(f"os._exit({code}) in a process with no group"))
    with pytest.raises(SystemExit) as exc:
        cli.entry()
    assert exc.value.code == 3


# A process that joined a process group and then left it: what entry() does there, in its own interpreter.
_JOINED = """
import atexit, sys
import gradus.cli as cli
import gradus.train.runtime as runtime
runtime._joined_group = True
atexit.register(lambda: print("finalised", file=sys.stderr))
def fake_main():
    print("the run's last line")  # stdout is a pipe: block-buffered, lost unless flushed before os._exit
    return 5
cli.main = fake_main
cli.entry()
"""


def test_a_process_that_joined_a_group_flushes_and_skips_finalisation():
    # After torchrun, gloo's worker threads can outlive the group and abort the interpreter's finalisation
    # (gradus.cli.entry's docstring has the stack). entry() leaves with os._exit instead: the exit code and
    # every printed line arrive, and no atexit handler (finalisation) runs.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _JOINED], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 5, proc.stderr[-2000:]
    assert proc.stdout == "the run's last line\n"
    assert "finalised" not in proc.stderr


def test_an_unexpected_failure_in_a_joined_process_also_skips_finalisation():
    # A traceback, exit 1, and still no finalisation: gloo's threads may be alive (FSDP2 keeps its group).
    script = _JOINED.replace('    return 5', '    raise RuntimeError("boom")')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stdout == "the run's last line\n"
    assert "RuntimeError: boom" in proc.stderr and "finalised" not in proc.stderr


def test_sigterm_is_caught_before_the_parser_imports_the_commands(monkeypatch):
    """The parser imports every command (about a second on a loaded machine); a SIGTERM in that second used to
    end the process silently (rc 143). The handler is in place before it, and put back afterwards."""
    import signal

    import gradus.cli as cli

    seen = {}
    real = cli.build_parser

    def build_parser():
        seen["handler"] = signal.getsignal(signal.SIGTERM)
        return real()

    monkeypatch.setattr(cli, "build_parser", build_parser)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["--debug"]) == 2  # no command: help, exit 2
    assert seen["handler"] not in (signal.SIG_DFL, signal.SIG_IGN, None, before)
    assert seen["handler"].__qualname__.startswith("_sigterm_interrupts")
    assert signal.getsignal(signal.SIGTERM) is before
