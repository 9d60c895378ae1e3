"""What a person watching a run reads: the console's progress lines (mean loss over the logging window,
elapsed time and ETA without a progress bar), the stage banner's warmup, the lines announcing a checkpoint
and a tokenizer being trained; and the modes of the files a run writes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from builders import tiny_config

from gradus.config import from_dict
from gradus.curriculum import resolve_schedule, state_at
from gradus.train.console import clock, console_line, elapsed_eta, stage_banner, warmup_text
from gradus.train.metrics import read_metrics
from gradus.train.trainer import train


def test_clock_and_eta_numbers():
    assert clock(5) == "0:05"
    assert clock(65) == "1:05"
    assert clock(3725) == "1:02:05"
    # 200 tokens in 65 s this session (100 inherited from a resume); 700 left: 700 * 65 / 200 = 227.5 s.
    assert elapsed_eta(65.0, 300, 100, 1000) == "elapsed 1:05, ETA 3:48"
    assert elapsed_eta(0.0, 100, 100, 1000) == "elapsed 0:00, ETA ?"  # no pace yet
    assert elapsed_eta(10.0, 300, 0, None) == "elapsed 0:10, ETA ?"  # no known total


def test_console_line_appends_timing():
    line = console_line(10, 2.0, 1234.0, 1e-3, 0, 3, 2560, None, "elapsed 0:10, ETA 0:20")
    assert line.startswith("Step 10: Loss=2.0000, PPL=7.39, Tokens/sec=1234, LR=1.00e-03 | Stage 1/3 (2,560 tokens)")
    assert line.endswith(" | elapsed 0:10, ETA 0:20")
    assert "elapsed" not in console_line(10, 2.0, 1234.0, 1e-3, 0, 3, 2560, None)


def _schedule(mode: str, **curriculum):
    cfg = tiny_config(Path("/nonexistent"), "tok.json")
    cfg["curriculum"].update({"schedule": mode, **curriculum})
    return resolve_schedule(from_dict(cfg))


def test_banner_shows_the_global_warmup_not_the_stages_zero():
    sch = _schedule("global", global_warmup_fraction=0.5)  # 16 steps: warmup 8 steps, past stage 1's 6
    assert sch.global_warmup_steps == 8 and sch.stages[0].warmup_steps == 0
    texts = [warmup_text(s, sch) for s in sch.stages]
    assert texts == ["warmup 8 steps (once, global schedule)", "the global schedule's warmup goes on to step 8",
                     "no warmup (global schedule)"]
    banner = stage_banner(state_at(sch, 0, 0), sch.stages[0], 3, sch)
    assert "warmup 8 steps" in banner and "warmup 0" not in banner


def test_banner_shows_per_stage_warmups():
    stages = [dict(s) for s in tiny_config(Path("/x"))["curriculum"]["stages"]]
    stages[1]["warmup_steps"], stages[2]["warmup_steps"] = 3, 0
    cfg = tiny_config(Path("/nonexistent"), "tok.json", stages=stages)
    sch = resolve_schedule(from_dict(cfg))
    assert warmup_text(sch.stages[1], sch) == "warmup 3 steps (this stage)"
    assert warmup_text(sch.stages[2], sch) == "no warmup"


@pytest.fixture(scope="module")
def console_run(tmp_path_factory, offline_data):
    """A 16-step run with the console on (stdout is not a terminal here), a BPE trained from scratch,
    log_every 4 and a checkpoint every 8 steps; returns (run dir, its console lines, the loss of every step)."""
    cache = tmp_path_factory.mktemp("tok-cache")
    run = tmp_path_factory.mktemp("console-run")
    cfg = tiny_config(offline_data)  # no tokenizer path: a BPE is trained (into an empty cache)
    cfg["train"].update({"eval_every": 100, "checkpoint_every": 8, "early_stopping_patience": None})
    cfg["logging"]["log_every"] = 4
    old_env, old_mask = os.environ.get("GRADUS_CACHE_DIR"), os.umask(0o022)
    os.environ["GRADUS_CACHE_DIR"] = str(cache)
    import contextlib
    import io

    out, losses = io.StringIO(), {}
    try:
        with contextlib.redirect_stdout(out):
            result = train(from_dict(cfg), run, on_step=lambda r: losses.__setitem__(r.step, r.loss))
    finally:
        os.umask(old_mask)
        if old_env is None:
            os.environ.pop("GRADUS_CACHE_DIR")
        else:
            os.environ["GRADUS_CACHE_DIR"] = old_env
    assert result.step == 16
    return run, out.getvalue().splitlines(), losses


def test_console_loss_is_the_window_mean(console_run):
    run, lines, losses = console_run
    logged = {r["step"]: r["loss_avg"] for r in read_metrics(run / "metrics.jsonl") if "loss_avg" in r}
    steps = [ln for ln in lines if ln.startswith("Step ")]
    assert [int(ln.split(":")[0].split()[1]) for ln in steps] == [4, 8, 12, 16]
    for ln in steps:
        step = int(ln.split(":")[0].split()[1])
        shown = float(re.search(r"Loss=([0-9.]+)", ln).group(1))
        window = [losses[s] for s in range(step - 3, step + 1)]
        assert shown == pytest.approx(sum(window) / 4, abs=6e-5) == pytest.approx(logged[step], abs=6e-5)
        assert shown != pytest.approx(losses[step], abs=1e-4)  # not the last step's loss


def test_every_progress_line_has_elapsed_and_eta(console_run):
    _, lines, _ = console_run
    steps = [ln for ln in lines if ln.startswith("Step ")]
    assert all(re.search(r" \| elapsed \d+:\d\d, ETA (\d+:\d\d|\?)$", ln) for ln in steps), steps
    assert steps[-1].endswith("ETA 0:00")  # all 16 steps done


def test_checkpoint_and_tokenizer_lines(console_run):
    run, lines, _ = console_run
    saved = [ln for ln in lines if ln.startswith("checkpoint: saved ")]
    # every 8 steps, and at the stage ends (steps 6 and 11), each once
    assert [ln.split()[2] for ln in saved] == ["step_00000006", "step_00000008", "step_00000011", "step_00000016"]
    assert saved[1].endswith(f"-> {run / 'checkpoints' / 'step_00000008'}") and "(step 8, 2,048 tokens)" in saved[1]
    tok = [i for i, ln in enumerate(lines) if ln.startswith("tokenizer: training a byte-level BPE of 512 tokens")]
    assert len(tok) == 1
    assert tok[0] < next(i for i, ln in enumerate(lines) if ln.startswith("Step "))


def test_weights_and_tokenizer_are_0644_under_umask_022(console_run):
    run, _, _ = console_run
    for path in (run / "tokenizer.json", run / "checkpoints" / "step_00000016" / "model.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_modes_follow_a_stricter_umask(tmp_path):
    from gradus.files import make_readable

    path = tmp_path / "w.bin"
    path.write_bytes(b"x")
    old = os.umask(0o077)
    try:
        make_readable(path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    make_readable(path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~old
