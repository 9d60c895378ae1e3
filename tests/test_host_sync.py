"""``train.host_sync: lagged`` (issue 14 §3): a step's loss and gradient norm are read one step late between
sync points, a non-finite step is skipped on the device by the fused AdamW, and the run is otherwise the
same run as ``every_step``: same losses, same weights, same guard events, exact resume.

On CPU nothing is asynchronous, so these tests check the order of reads and the equality of results; the
time it saves is a GPU figure (BENCHMARKS.md)."""

from __future__ import annotations

import pytest
import torch
from builders import tiny_config

from gradus.cli import main
from gradus.config import from_dict
from gradus.train import faults, lag
from gradus.train import trainer as trainer_module
from gradus.train.metrics import read_metrics
from gradus.train.trainer import train

pytestmark = pytest.mark.usefixtures("no_faults")  # (conftest: no injected faults from the environment)


def _cfg(tokenizer_json, offline_data, host_sync: str, **train):
    cfg = tiny_config(offline_data, tokenizer_json)
    cfg["optim"]["fused"] = "on"  # the fused AdamW on CPU too: lagged skips a bad step through it
    cfg["train"].update({"host_sync": host_sync, "eval_every": 8, "checkpoint_every": 4,
                         "early_stopping_patience": None, "eval_at_stage_change": False, **train})
    cfg["logging"]["log_every"] = 5
    return from_dict(cfg)


def _run(cfg, run_dir, **kw):
    reports = []
    result = train(cfg, run_dir, quiet=True, on_step=reports.append, **kw)
    return result, reports


def _final_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(sorted((run_dir / "checkpoints").glob("step_*"))[-1] / "model.safetensors"))


@pytest.mark.parametrize("fault", [None, "nan@9#1"])
def test_lagged_is_the_same_run_as_every_step(fault, tmp_path, tokenizer_json, offline_data, monkeypatch):
    """Same per-step losses, norms, applied flags, guard events and final weights, with and without a NaN
    step in a lagged stretch (step 10 is neither logged, evaluated, checkpointed nor a stage end)."""
    runs = {}
    for mode in ("every_step", "lagged"):
        if fault:
            monkeypatch.setenv(faults.ENV, fault)
        faults.reset()
        out = tmp_path / mode
        result, reports = _run(_cfg(tokenizer_json, offline_data, mode), out)
        events = [(r["step"], r["event"]) for r in read_metrics(out / "metrics.jsonl")
                  if str(r.get("event", "")).startswith("guard/")]
        runs[mode] = (result.step, [(r.step, r.loss, r.grad_norm, r.applied) for r in reports], events,
                      _final_weights(out))
    (steps_a, per_step_a, events_a, w_a), (steps_b, per_step_b, events_b, w_b) = runs["every_step"], runs["lagged"]
    assert steps_a == steps_b == 16 and [s for s, *_ in per_step_b] == list(range(1, 17))
    assert repr(per_step_a) == repr(per_step_b) and events_a == events_b  # (repr: NaN equals NaN)
    assert w_a.keys() == w_b.keys() and all(torch.equal(w_a[k], w_b[k]) for k in w_a)
    if fault:
        bad = [p for p in per_step_b if p[0] == 10][0]
        assert bad[1] != bad[1] and bad[3] is False  # a NaN loss (NaN != NaN), the update not applied
        assert events_b == [(9, "guard/skip")]  # the guard's own 0-based step index, as every_step logs it


def test_between_sync_points_a_step_is_read_after_the_next_one_is_queued(tmp_path, tokenizer_json, offline_data,
                                                                         monkeypatch):
    """The order of launches and reads: a lagged step N is read after step N+1 was queued; a sync step
    (logged every 5, evaluated every 8, checkpointed every 4, stage ends at 6 and 11, the end at 16) is read
    before the next one is queued."""
    timeline: list[tuple[str, int]] = []
    real_step, real_read = trainer_module.optimizer_step, lag.DeviceValues.read

    def step(*args, **kwargs):
        res = real_step(*args, **kwargs)
        out = res[0] if kwargs.get("noise_hooks") is not None else res  # (figures, noise sample) when it measures
        out.n = sum(kind == "launch" for kind, _ in timeline) + 1  # (ids of freed objects are reused: tag it)
        timeline.append(("launch", out.n))
        return res

    def read(self):
        timeline.append(("read", self.n))
        return real_read(self)

    monkeypatch.setattr(trainer_module, "optimizer_step", step)
    monkeypatch.setattr(lag.DeviceValues, "read", read)
    train(_cfg(tokenizer_json, offline_data, "lagged"), tmp_path, quiet=True)
    sync = {4, 5, 6, 8, 10, 11, 12, 15, 16}
    reads = [n for kind, n in timeline if kind == "read"]
    assert sorted(reads) == list(range(1, 17))  # each step read exactly once
    for n in range(1, 17):
        read_at = timeline.index(("read", n))
        queued_before = max(m for kind, m in timeline[:read_at] if kind == "launch")
        assert queued_before == (n if n in sync else n + 1), (n, timeline)


def test_a_lagged_run_resumes_exactly(tmp_path, tokenizer_json, offline_data):
    whole = tmp_path / "whole"
    _run(_cfg(tokenizer_json, offline_data, "lagged"), whole)
    split = tmp_path / "split"
    assert train(_cfg(tokenizer_json, offline_data, "lagged"), split, quiet=True, stop_at_step=7).step == 7
    _, reports = _run(_cfg(tokenizer_json, offline_data, "lagged"), split)
    assert [r.step for r in reports] == list(range(8, 17))
    a, b = _final_weights(whole), _final_weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = {r["step"]: r["loss"] for r in read_metrics(whole / "metrics.jsonl") if "loss" in r and "step" in r}
    again = {r["step"]: r["loss"] for r in read_metrics(split / "metrics.jsonl") if "loss" in r and "step" in r}
    assert losses == again


def test_lagged_without_the_fused_adamw_is_one_line(tmp_path, tokenizer_json, offline_data, capsys):
    cfg = tmp_path / "c.yaml"
    raw = tiny_config(offline_data, tokenizer_json)
    raw["train"]["host_sync"] = "lagged"
    import yaml

    cfg.write_text(yaml.safe_dump(raw))
    code = main(["train", str(cfg), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "train.host_sync=lagged" in err[0] and "optim.fused: on" in err[0]
