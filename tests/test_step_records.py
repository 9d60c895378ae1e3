"""What a step leaves behind, read back from a real tiny run: the weights' average after a skipped (NaN) step in
either host-sync mode, the LR logged for a spike step, and the stage a stage-end checkpoint names."""

from __future__ import annotations

import json

import pytest
import torch
from builders import tiny_config
from safetensors.torch import load_file

from gradus.config import from_dict
from gradus.train import faults
from gradus.train import trainer as trainer_module
from gradus.train.metrics import read_metrics
from gradus.train.trainer import train

pytestmark = pytest.mark.usefixtures("no_faults")


def _cfg(tokenizer_json, offline_data, host_sync, **train_kw):
    cfg = tiny_config(offline_data, tokenizer_json)
    cfg["optim"]["fused"] = "on"
    cfg["train"].update({"host_sync": host_sync, "eval_every": 8, "checkpoint_every": 4,
                         "early_stopping_patience": None, "eval_at_stage_change": False, **train_kw})
    cfg["logging"]["log_every"] = 5
    return from_dict(cfg)


def test_a_skipped_step_leaves_the_average_alone_in_lagged_mode_too(tmp_path, tokenizer_json, offline_data,
                                                                    monkeypatch):
    # The lagged path folds after every step before reading whether it was applied: a NaN step pulled the average
    # towards unchanged weights (1.7e-5 off every_step's at decay 0.5). Its on-device flag now weighs the fold.
    out = {}
    for mode in ("every_step", "lagged"):
        monkeypatch.setenv(faults.ENV, "nan@9#1")
        faults.reset()
        run = tmp_path / mode
        train(_cfg(tokenizer_json, offline_data, mode, ema={"decay": 0.5}), run, quiet=True)
        last = sorted((run / "checkpoints").glob("step_*"))[-1]
        out[mode] = load_file(str(last / "model.safetensors")), load_file(str(last / "ema.safetensors"))
    (weights_a, ema_a), (weights_b, ema_b) = out["every_step"], out["lagged"]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_the_lr_logged_for_a_spike_step_is_the_lr_it_ran_at(tmp_path, tokenizer_json, offline_data, monkeypatch):
    # The back-off starts at the step after a spike; asked for the spike's own step the guard gave a factor below
    # the back-off (an LR of 0 with recover_steps 1).
    ran: dict[int, float] = {}
    real = trainer_module.optimizer_step

    def spy(*args, **kwargs):
        ran[len(ran) + 1] = kwargs["lr"]  # keyed by steps done after it, as the log is
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "optimizer_step", spy)
    monkeypatch.setenv(faults.ENV, "spike@8x50")
    faults.reset()
    cfg = _cfg(tokenizer_json, offline_data, "every_step", guard={"warmup_steps": 2, "recover_steps": 1})
    cfg.logging.log_every = 1
    train(cfg, tmp_path / "r", quiet=True)
    records = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert any(r.get("event") == "guard/spike" for r in records)
    logged = {r["step"]: r["lr"] for r in records if r.get("event") is None and "lr" in r}
    assert {s: lr for s, lr in logged.items() if abs(ran[s] - lr) > 1e-12} == {}


def test_a_stage_end_checkpoint_names_the_stage_it_was_trained_in(tmp_path, tokenizer_json, offline_data):
    # At a stage's end the evaluation usually improves, so the best checkpoint is written there, and it named the
    # next stage: loading then gave weights trained without interpolation the next stage's RoPE scaling.
    from gradus.inference.load import load_model

    cfg = tiny_config(offline_data, tokenizer_json)
    cfg["curriculum"]["stages"][2]["rope_scaling"] = 4.0
    cfg["train"].update({"eval_every": 1000, "checkpoint_every": None, "early_stopping_patience": None})
    run = tmp_path / "r"
    train(from_dict(cfg), run, quiet=True)
    stages = {ck.name: json.loads((ck / "meta.json").read_text())["stage"]
              for ck in (run / "checkpoints").glob("step_*")}
    assert stages["step_00000006"] == 0 and stages["step_00000011"] == 1
    assert load_model(run / "checkpoints" / "step_00000011").model.shape.rope_scaling == 1.0
    # The factor each checkpoint was trained at is recorded, so it holds when the config cannot be planned any more
    # (written by another gradus): loading used to fall back to 1.0 for weights trained at 4.0.
    last = max((run / "checkpoints").glob("step_*"))
    assert json.loads((last / "meta.json").read_text())["rope_scaling"] == 4.0
    for config in (last / "config.yaml", run / "config.yaml"):
        config.write_text(config.read_text() + "\nfuture_section: {x: 1}\n")
    assert load_model(last).model.shape.rope_scaling == 4.0
