"""Nothing lost, nothing stuck (issue 17): the guard's cap on rollbacks, fault injection through the real
paths, checkpoint saves that fail anywhere, leftovers of kills, metrics that hold every step once, and
status.json with its exit codes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from builders import tiny_config

from gradus.cli import main
from gradus.config import GuardConfig, from_dict
from gradus.errors import CheckpointError, ConfigError
from gradus.train import faults
from gradus.train.guard import LossGuard
from gradus.train.metrics import read_metrics
from gradus.train.storage import checkpoint as checkpoint_mod
from gradus.train.storage.checkpoint import CheckpointManager
from gradus.train.storage.run_dir import CHECKPOINT_FILES, RunDir, clean_leftovers
from gradus.train.trainer import train

TOTAL_STEPS = 16


pytestmark = pytest.mark.usefixtures("no_faults")  # (conftest: no injected faults from the environment)


@pytest.fixture(scope="module")
def tok(tokenizer_json: str) -> str:
    return tokenizer_json


def raw(tok: str, shared: Path, **guard) -> dict:
    cfg = tiny_config(shared, tok)
    cfg["train"].update({"eval_every": 5, "checkpoint_every": 4, "early_stopping_patience": None})
    cfg["train"]["guard"] = guard
    cfg["logging"]["log_every"] = 1
    return cfg


def write_cfg(tmp_path: Path, cfg: dict) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    return str(path)


# ------------------------------------------------------------------------------------------- guard
def test_rollbacks_are_capped_then_the_guard_gives_up():
    g = LossGuard(GuardConfig(max_bad_steps=2, max_rollbacks=2))
    kinds = [g.observe(10, math.nan, 1.0).kind for _ in range(6)]
    assert kinds == ["skip", "rollback", "skip", "rollback", "skip", "diverged"]
    assert g.rollback_factor == 0.25


def test_skip_bad_batches_skips_instead_of_rolling_back():
    g = LossGuard(GuardConfig(max_bad_steps=2, max_rollbacks=1, skip_bad_batches=True))
    kinds = [g.observe(10 + i, math.nan, 1.0).kind for i in range(4)]
    assert kinds == ["skip", "skip", "skip", "diverged"]
    assert g.rollback_factor == 1.0


def test_a_resume_raises_a_tiny_lr_factor_to_the_floor_and_says_so():
    g = LossGuard(GuardConfig())
    state = g.state_dict()
    state["rollback_factor"] = 2.3e-100
    h = LossGuard(GuardConfig(min_lr_factor=0.01))
    h.load_state_dict(state)
    assert h.rollback_factor == 0.01 and h.lr_factor(0) == 0.01
    assert "2.3e-100" in h.notice and "train.guard.min_lr_factor=0.01" in h.notice


# ------------------------------------------------------------------------------------------ faults
def test_fault_spec_is_parsed():
    f = faults.parse("nan@5, inf@7#1, spike@9x100, save_fail@after_model")
    assert math.isnan(f.loss_multiplier(5)) and math.isnan(f.loss_multiplier(5))
    assert f.loss_multiplier(7) == math.inf and f.loss_multiplier(7) == 1.0
    assert f.loss_multiplier(9) == 100.0 and f.loss_multiplier(8) == 1.0
    with pytest.raises(OSError, match="No space left"):
        f.at("after_model")
    f.at("after_state")  # no fault there
    for bad in ("nan", "nan@x", "boom@5", "save_fail@nowhere"):
        with pytest.raises(ConfigError, match="GRADUS_FAULTS"):
            faults.parse(bad)


def test_a_batch_bad_at_any_lr_stops_with_one_line_exit_3(tmp_path, tok, offline_data, capsys, monkeypatch):
    monkeypatch.setenv(faults.ENV, "nan@9,nan@10,nan@11")  # bad every time they run: rollback cannot help
    cfg = raw(tok, offline_data, max_rollbacks=2)
    assert main(["train", write_cfg(tmp_path, cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("gradus: error: training diverged at step 11: 3 non-finite steps in a row since step 9")
    assert "after 2 rollbacks (train.guard.max_rollbacks=2)" in err and "data position" in err
    assert "train.guard.skip_bad_batches" in err
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert (status["status"], status["step"], status["exit_code"]) == ("diverged", 11, 3)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["event"] for r in records if str(r.get("event", "")).startswith("guard/rollback")] == ["guard/rollback"] * 2


def test_skip_bad_batches_records_the_data_positions_and_finishes(tmp_path, tok, offline_data, monkeypatch):
    monkeypatch.setenv(faults.ENV, "nan@9,inf@10,nan@11")
    result = train(from_dict(raw(tok, offline_data, skip_bad_batches=True)), tmp_path, quiet=True)
    assert result.step == TOTAL_STEPS
    skips = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("event") == "guard/skip"]
    assert [r["step"] for r in skips] == [9, 10, 11]
    positions = [r["data_position"]["tokens"] for r in skips]
    assert positions[0] > 0 and positions[0] < positions[1] < positions[2]  # each a different batch
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "finished"


def test_a_spike_injected_through_the_real_step_backs_off_the_lr(tmp_path, tok, offline_data, monkeypatch):
    monkeypatch.setenv(faults.ENV, "spike@12x50")
    train(from_dict(raw(tok, offline_data, warmup_steps=3)), tmp_path, quiet=True)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r.get("event") == "guard/spike"] == [12]
    factor = {r["step"]: r["guard/lr_factor"] for r in records if "guard/lr_factor" in r}
    # Records count steps done: record 14 is the first step run after the spike, at half the LR.
    assert factor[12] == 1.0 and factor[14] == 0.5 and factor[15] == pytest.approx(0.5 + 0.5 * 1 / 100)


# ------------------------------------------------------------------------------------- checkpoints
def _save(mgr: CheckpointManager, step: int) -> Path:
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    return mgr.save(step, model=model, optimizer=opt, state={"x": step}, meta={"step": step}, config_yaml="a: 1\n")


@pytest.mark.parametrize("spec", ["save_error@after_model", "save_fail@after_optimizer", "save_fail@before_rename",
                                  "save_error@before_model"])
def test_every_failure_of_a_save_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch, spec):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    first = _save(mgr, 1)
    monkeypatch.setenv(faults.ENV, spec)
    with pytest.raises(CheckpointError) as info:
        _save(mgr, 2)
    msg = str(info.value)
    assert "\n" not in msg and "step_00000002" in msg and "step_00000001 is intact" in msg
    assert "a checkpoint needs about 0.0 MB" in msg  # 20 weights + 40 AdamW moments + 2 steps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001"]  # no partial folder left
    assert mgr.latest() == first


def test_a_full_disk_through_the_cli_exits_2_without_a_partial_folder(tmp_path, tok, offline_data, capsys, monkeypatch):
    monkeypatch.setenv(faults.ENV, "save_error@after_state")
    run = tmp_path / "run"
    assert main(["train", write_cfg(tmp_path, raw(tok, offline_data)), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected pos" in err and "no earlier checkpoint exists" in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == []
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


def test_leftovers_of_kills_are_cleaned_and_best_restored(tmp_path):
    mgr = CheckpointManager(tmp_path)
    step = _save(mgr, 3)
    shutil.copytree(step, tmp_path / ".tmp-step_00000004-99")  # a kill inside a save
    shutil.copytree(step, tmp_path / ".trash-step_00000001")  # a kill inside a prune
    shutil.copytree(step, tmp_path / ".old-best-77")  # a kill between mark_best's two renames
    assert mgr.best() == tmp_path / ".old-best-77"  # still found before the clean-up
    done = clean_leftovers(tmp_path)
    assert ".old-best-77 -> best" in done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "step_00000003"]
    assert json.loads((mgr.best() / "meta.json").read_text()) == {"step": 3}


def test_a_kill_while_pruning_never_leaves_a_listed_incomplete_checkpoint(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, keep_last=1)
    _save(mgr, 1)
    real = shutil.rmtree

    def killed(path, *a, **k):  # deletes one file, then the process dies
        next(Path(path).iterdir()).unlink()
        raise SystemExit("killed")

    monkeypatch.setattr(checkpoint_mod.shutil, "rmtree", killed)
    with pytest.raises(SystemExit):
        _save(mgr, 2)
    monkeypatch.setattr(checkpoint_mod.shutil, "rmtree", real)
    for _, path in mgr.steps():
        assert all((path / f).is_file() for f in CHECKPOINT_FILES)
    assert [s for s, _ in mgr.steps()] == [2]


# ------------------------------------------------------------------------------------------ metrics
def test_a_resume_logs_every_step_once(tmp_path, tok, offline_data):
    cfg = from_dict(raw(tok, offline_data))
    train(cfg, tmp_path, quiet=True, stop_at_step=7)
    shutil.rmtree(tmp_path / "checkpoints" / "step_00000007")  # as if killed after step 7, before its save
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "stopped"
    result = train(cfg, tmp_path, quiet=True)
    assert result.step == TOTAL_STEPS
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r and "event" not in r]
    assert steps == list(range(1, TOTAL_STEPS + 1))
    stages = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("event") == "stage"]
    assert stages == [0, 6, 11]
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["status"], status["step"], status["exit_code"]) == ("finished", TOTAL_STEPS, 0)


# ------------------------------------------------------------------------- one line, not a traceback
@pytest.mark.parametrize(("override", "expected"), [
    ("optim.base_lr=.inf", "optim.base_lr=inf: must be a finite number"),
    ("=5", "--set '=5': the key before '=' is empty"),
    ("model.vocab_size=100", "model.vocab_size=100 is smaller than the tokenizer's 512 tokens"),
])
def test_bad_overrides_are_one_line_exit_2(tmp_path, tok, offline_data, capsys, override, expected):
    cfg = write_cfg(tmp_path, raw(tok, offline_data))
    assert main(["train", cfg, "--set", override, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_two_config_files_are_refused_not_one_ignored(tmp_path, tok, offline_data, capsys):
    a = write_cfg(tmp_path, raw(tok, offline_data))
    assert main(["train", a, "--config", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two config files given" in err


def _model_and_opt(width: int):
    model = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Linear(width, 4))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    return model, opt


def test_a_changed_model_shape_on_resume_is_not_called_corrupt(tmp_path):
    mgr = CheckpointManager(tmp_path)
    model, opt = _model_and_opt(8)
    path = mgr.save(1, model=model, optimizer=opt, state={}, meta={"step": 1}, config_yaml="")
    other, other_opt = _model_and_opt(16)
    with pytest.raises(CheckpointError) as info:
        mgr.load(path, model=other, optimizer=other_opt)
    msg = str(info.value)
    assert "holds a different model: 0.weight has shape [8, 4] there, [16, 4] in this config" in msg
    assert "corrupt" not in msg and "delete" not in msg


def test_an_optimizer_state_of_other_shapes_is_refused_at_load(tmp_path):
    mgr = CheckpointManager(tmp_path)
    model, opt = _model_and_opt(8)
    path = mgr.save(1, model=model, optimizer=opt, state={}, meta={"step": 1}, config_yaml="")
    _, wrong = _model_and_opt(16)
    torch.save(wrong.state_dict(), path / "optimizer.pt")
    fresh, fresh_opt = _model_and_opt(8)
    with pytest.raises(CheckpointError, match=r"optimizer.pt does not match the model \(exp_avg of shape \[16, 4\]"):
        mgr.load(path, model=fresh, optimizer=fresh_opt)


def test_a_run_whose_finite_loss_diverged_does_not_exit_0(tmp_path, tok, offline_data, capsys):
    cfg = raw(tok, offline_data)
    cfg["optim"]["base_lr"] = 10.0  # the highest accepted: far past any AdamW run's, so the loss runs off
    code = main(["train", write_cfg(tmp_path, cfg), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert (code, status["status"], status["exit_code"]) == (3, "diverged", 3), err
    assert err.count("\n") == 1 and ("diverged" in err)


def test_finite_divergence_bar():
    from gradus.train.recovery import finite_divergence

    assert finite_divergence(35018.0, 512).startswith("the loss ended at 3.502e+04, above 2 × ln(vocab 512) = 12.48")
    assert finite_divergence(12.0, 512) is None and finite_divergence(None, 512) is None


def test_a_second_writer_gets_one_line_naming_the_holder(tmp_path, tok, offline_data, capsys):
    held = RunDir(tmp_path / "run").prepare()
    try:
        assert main(["train", write_cfg(tmp_path, raw(tok, offline_data)), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is in use by process {__import__('os').getpid()} on " in err
    finally:
        held.release()
    RunDir(tmp_path / "run").prepare().release()  # free again once released


def test_a_run_killed_before_its_first_checkpoint_restarts_from_its_own_config(tmp_path, tok, offline_data):
    run = tmp_path / "run"
    cfg = raw(tok, offline_data)
    cfg["train"]["max_steps"] = 2
    cfg["train"]["checkpoint_every"] = 100
    train(from_dict(cfg), run, quiet=True, stop_at_step=1)
    shutil.rmtree(run / "checkpoints")  # as if killed before the first checkpoint
    assert main(["train", "--out", str(run), "--quiet"]) == 0
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r and "event" not in r]
    assert steps == [1, 2]  # the run's own max_steps, not the demo preset's; step 1 logged once


def test_a_garbage_tokenizer_json_in_the_run_directory_is_one_line(tmp_path, offline_data, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tokenizer.json").write_text("{ this is not a tokenizer")
    cfg = tiny_config(offline_data)  # a trained BPE: the run directory's tokenizer.json is read on resume
    assert main(["train", write_cfg(tmp_path, cfg), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokenizer.json is not a readable tokenizer" in err and "Traceback" not in err


def test_one_late_spike_is_not_called_a_divergence(tmp_path, tok, offline_data, monkeypatch):
    monkeypatch.setenv(faults.ENV, "spike@9x100")  # before the guard's warm-up: it enters the history
    train(from_dict(raw(tok, offline_data)), tmp_path, quiet=True)
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["status"], status["exit_code"]) == ("finished", 0)
