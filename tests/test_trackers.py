"""TensorBoard's one-line note when it is missing, and W&B (``logging.wandb``): a fake module that records
every call, and (when ``wandb`` is installed) a real offline run."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
from builders import tiny_config

from gradus.config import from_dict
from gradus.errors import ConfigError
from gradus.train.console import progress_line
from gradus.train.metrics import read_metrics
from gradus.train.trackers import WANDB_ID_FILE, open_metrics, wandb_scalars
from gradus.train.trainer import train


def _cfg(shared: Path, **wandb) -> dict:
    cfg = tiny_config(shared)
    cfg["train"].update({"eval_every": 8, "checkpoint_every": 100, "early_stopping_patience": None})
    cfg["logging"]["log_every"] = 4
    if wandb:
        cfg["logging"]["wandb"] = wandb
    return cfg


class FakeWandb(types.ModuleType):
    """Stands in for ``wandb``: remembers init's arguments, every log call and finish."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            url = None

            def log(self, data, step):
                fake.logged.append((step, dict(data)))

            def finish(self):
                fake.finished += 1

        return Run()


def test_progress_line_shows_the_window_mean_and_falls_back_when_none_is_finite():
    rec = {"step": 8, "tokens": 2048, "loss": 3.0, "loss_avg": 2.5, "tokens_per_sec": 100.0, "lr": 1e-3,
           "curriculum/stage": 1}
    assert progress_line(rec, 3, None).startswith("Step 8: Loss=2.5000, PPL=12.18, Tokens/sec=100, LR=1.00e-03 | Stage 2/3")
    assert "Loss=3.0000" in progress_line({**rec, "loss_avg": float("nan")}, 3, None)


def test_wandb_scalars_keep_finite_numbers_of_series_records():
    rec = {"step": 4, "loss": 2.0, "lr": 1e-3, "update_applied": True, "grad_norm": float("inf"), "x": "text"}
    assert wandb_scalars(rec) == {"loss": 2.0, "lr": 1e-3}
    assert wandb_scalars({"event": "stage", "step": 6, "seq_len": 32}) is None


def test_training_mirrors_records_to_wandb(tmp_path, offline_data, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = tmp_path / "run"
    train(from_dict(_cfg(offline_data, project="curric", mode="offline", tags=["tiny"])), run, quiet=True)
    assert len(fake.inits) == 1 and fake.finished == 1
    init = fake.inits[0]
    assert (init["project"], init["mode"], init["dir"], init["name"], init["tags"]) == \
        ("curric", "offline", str(run), "run", ["tiny"])
    assert re.fullmatch(r"[0-9a-f]{8}", init["id"]) and init["id"] == (run / WANDB_ID_FILE).read_text().strip()
    assert init["config"]["model"]["preset"] == "tiny" and init["config"]["logging"]["wandb"]["project"] == "curric"
    records = [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") is None]
    assert [s for s, _ in fake.logged] == [r["step"] for r in records]  # steps 4, 6 (stage end eval), 8, ...
    steps = [(s, d) for s, d in fake.logged if "loss" in d]
    assert [s for s, _ in steps] == [4, 8, 12, 16]
    by_step = {r["step"]: r for r in records if "loss" in r}
    for s, d in steps:
        assert d["loss"] == pytest.approx(by_step[s]["loss"]) and d["curriculum/current_seq_len"] == \
            by_step[s]["curriculum/current_seq_len"]
    assert any("val/loss" in d for _, d in fake.logged)


def test_a_resumed_run_continues_its_wandb_run(tmp_path, offline_data, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    (tmp_path / WANDB_ID_FILE).write_text("earlier7\n")
    metrics = open_metrics(from_dict(_cfg(offline_data, project="p")), tmp_path, is_main=True)
    metrics.close()
    assert fake.inits[0]["id"] == "earlier7" and fake.inits[0]["resume"] == "allow"
    assert any(n.startswith("wandb: logging to project 'p' (offline, under ") for n in metrics.notes)


def test_wandb_missing_or_disabled(tmp_path, offline_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match=r"logging.wandb \(mode online\) needs the wandb package: `pip install wandb`"):
        open_metrics(from_dict(_cfg(offline_data, project="p", mode="online")), tmp_path, is_main=True)
    metrics = open_metrics(from_dict(_cfg(offline_data, mode="disabled")), tmp_path, is_main=True)
    metrics.close()
    assert metrics.wandb is None and not any("wandb" in n for n in metrics.notes)
    assert not (tmp_path / WANDB_ID_FILE).exists()


def test_bad_wandb_mode_is_a_config_error(offline_data):
    with pytest.raises(Exception, match="mode"):
        from_dict(_cfg(offline_data, mode="sometimes"))


def test_missing_tensorboard_is_said_in_one_line(tmp_path, offline_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    cfg = _cfg(offline_data)
    cfg["logging"]["tensorboard"] = True
    metrics = open_metrics(from_dict(cfg), tmp_path, is_main=True)
    metrics.close()
    assert len(metrics.notes) == 1
    assert metrics.notes[0].startswith("tensorboard: not written (ModuleNotFoundError")
    assert metrics.notes[0].endswith("`pip install tensorboard` for TensorBoard logs, or set logging.tensorboard: "
                                     "false to silence this")
    cfg["logging"]["tensorboard"] = False  # not wanted: nothing to say
    metrics = open_metrics(from_dict(cfg), tmp_path, is_main=True)
    metrics.close()
    assert metrics.notes == []


def test_tensorboard_is_written_by_default(tmp_path, offline_data):
    pytest.importorskip("tensorboard")  # a main dependency: present in every install
    cfg = _cfg(offline_data)
    cfg["logging"]["tensorboard"] = True
    metrics = open_metrics(from_dict(cfg), tmp_path, is_main=True)
    metrics.write({"step": 1, "loss": 2.0})
    metrics.close()
    assert metrics.notes == [] and list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_real_wandb_offline_run(tmp_path, offline_data, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    train(from_dict(_cfg(offline_data, project="curric", mode="offline")), run, quiet=True)
    run_id = (run / WANDB_ID_FILE).read_text().strip()
    files = list((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    data = files[0].read_bytes()
    for key in (b"loss_avg", b"curriculum/current_seq_len", b"val/loss", b"curric"):
        assert key in data, key


class NoLoginWandb(FakeWandb):
    """wandb whose init fails as it does in mode online without a login (no tty, no API key)."""

    def init(self, **kwargs):
        raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])\nmore lines")


class NoKeyWandb(FakeWandb):
    """A wandb whose ``login`` can be asked without a prompt (``prompt=False``) and has no key."""

    def __init__(self):
        super().__init__()
        self.asked = []

    def login(self, key=None, relogin=None, host=None, force=None, timeout=None, verify=False, prompt=True):
        self.asked.append(prompt)
        return False


def test_wandb_online_without_a_key_is_refused_before_it_can_prompt(tmp_path, offline_data, monkeypatch, capsys):
    """At a terminal, wandb.init asks for a key (a Ctrl-C there stopped the start half-made); gradus asks wandb
    without a prompt first and refuses in one line, before init, leaving no run folder."""
    import json

    from gradus.cli import main

    fake = NoKeyWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(_cfg(offline_data, project="curric", mode="online")))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mode online needs a W&B login and none is configured" in err[0], err
    assert fake.asked == [False] and fake.inits == []
    assert not (tmp_path / "run").exists()


def test_wandb_online_without_a_login_is_one_line_and_leaves_no_run_folder(tmp_path, offline_data, monkeypatch,
                                                                        capsys):
    """It used to be a 37-line traceback and exit 1 (issue 31); now one line, exit 2, and the run folder the
    failed start had created is gone."""
    import json

    from gradus.cli import main

    monkeypatch.setitem(sys.modules, "wandb", NoLoginWandb())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(_cfg(offline_data, project="curric", mode="online")))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gradus: error: logging.wandb: W&B could not start in mode online (api_key not configured (no-tty). "
                   "call wandb.login(key=[your_api_key])); log in first (`wandb login`, or set WANDB_API_KEY), or "
                   "use logging.wandb.mode: offline and `wandb sync` later"], err
    assert not (tmp_path / "run").exists()
