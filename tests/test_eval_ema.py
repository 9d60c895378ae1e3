"""Per-source validation, the EMA of the weights, and early stopping on a flat curve (issue 12, section 3)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import builders
import numpy as np
import pytest
import torch
from builders import tiny_config
from safetensors.torch import load_file

from gradus.cli import main
from gradus.config import EmaConfig, from_dict
from gradus.errors import ConfigError
from gradus.inference.load import load_model
from gradus.train import early_stop
from gradus.train.cadence import evaluation_due
from gradus.train.ema import WeightEMA
from gradus.train.evaluate import evaluate
from gradus.train.metrics import read_metrics
from gradus.train.stateful import Progress
from gradus.train.trainer import train


# ------------------------------------------------------------------------------- per source
class _Uniform(torch.nn.Module):
    """Logits all zero over 4 classes: loss ln 4 on every token, argmax class 0."""

    def forward(self, inputs):
        return torch.zeros(*inputs.shape, 4), None


def _batch(label: int, rows: int, cols: int, source: str):
    x = np.zeros((rows, cols), dtype=np.int64)
    return SimpleNamespace(inputs=x, labels=np.full((rows, cols), label, dtype=np.int64), source=source)


def test_evaluation_reports_each_source_and_the_token_weighted_mix():
    # 6 tokens of "a" all labelled 0 (argmax right), 2 of "b" labelled 1 (wrong), 4 more of "a".
    batches = [_batch(0, 2, 3, "a"), _batch(1, 1, 2, "b"), _batch(0, 1, 4, "a")]
    out = evaluate(_Uniform(), batches, torch.device("cpu"), _null)
    assert out["tokens"] == 12 and out["loss"] == pytest.approx(math.log(4)) and out["ppl"] == pytest.approx(4.0)
    assert out["accuracy"] == pytest.approx(10 / 12)
    assert out["sources"]["a"]["tokens"] == 10 and out["sources"]["a"]["accuracy"] == 1.0
    assert out["sources"]["b"]["tokens"] == 2 and out["sources"]["b"]["accuracy"] == 0.0
    assert out["sources"]["b"]["loss"] == pytest.approx(math.log(4))


def _null():
    import contextlib

    return contextlib.nullcontext()


def test_batches_without_a_source_give_only_the_mix():
    b = _batch(0, 1, 3, "x")
    b.source = None
    out = evaluate(_Uniform(), [b], torch.device("cpu"), _null)
    assert "sources" not in out and out["accuracy"] == 1.0


# ------------------------------------------------------------------------------------- EMA
def test_ema_update_is_decay_times_old_plus_the_rest_times_new_every_n_steps():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = WeightEMA(model, EmaConfig(decay=0.75, every=2))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[5.0, -2.0]]))
    assert not ema.maybe_update(1, model)  # not a multiple of every=2
    assert torch.equal(ema.model.weight, torch.tensor([[1.0, 2.0]]))
    assert ema.maybe_update(2, model)
    assert torch.allclose(ema.model.weight, torch.tensor([[2.0, 1.0]]))  # 0.75·1 + 0.25·5, 0.75·2 + 0.25·(−2)
    assert ema.updates == 1 and not ema.model.weight.requires_grad
    state = ema.state_dict()
    other = WeightEMA(torch.nn.Linear(2, 1, bias=False), EmaConfig(decay=0.75, every=2))
    other.load_state_dict(state)
    assert torch.equal(other.model.weight, ema.model.weight) and other.updates == 1
    state["weights"]["weight"].zero_()  # a copy: the saved state does not alias the live average
    assert torch.allclose(ema.model.weight, torch.tensor([[2.0, 1.0]]))


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1])
def test_ema_decay_outside_0_1_is_one_line(decay, tmp_path, offline_data, capsys):
    cfg = tiny_config(offline_data)
    cfg["train"]["ema"] = {"decay": decay}
    with pytest.raises(ConfigError, match=r"train\.ema\.decay="):
        from_dict(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.ema.decay" in err[0]


@pytest.mark.parametrize("metric, says", [
    ("val/nope/loss", "no source named 'nope'"),
    ("val_ema/loss", "needs train.ema"),
    ("val_ema/wiki/loss", "use val_ema/loss"),
    ("loss", "should match pattern"),
])
def test_an_early_stopping_metric_no_evaluation_writes_is_refused(metric, says, offline_data):
    cfg = tiny_config(offline_data)
    cfg["train"]["early_stopping_metric"] = metric
    with pytest.raises(ConfigError, match=says):
        from_dict(cfg)


# ------------------------------------------------------------------------------ flat curve
def test_is_flat_needs_every_recent_improvement_below_the_relative_threshold():
    assert early_stop.is_flat([5.0, 4.999, 4.998, 4.9975], 0.001, 3)
    assert not early_stop.is_flat([5.0, 4.99, 4.989, 4.988], 0.001, 3)  # the first step improved 0.2%
    assert not early_stop.is_flat([4.999, 4.998, 4.9975], 0.001, 3)  # too few evaluations yet
    assert early_stop.is_flat([4.0, 4.1, 4.2], 0.001, 2)  # rising counts as not improving


def test_observe_tracks_the_best_and_stops_on_flat_curve_or_patience():
    pr = Progress()
    seen = [early_stop.observe(pr, x, patience=None, min_delta=0.01, flat_evals=2) for x in (6.0, 5.0, 4.98, 4.97)]
    assert [s[0] for s in seen] == [True, True, True, True]
    assert [s[1] is not None for s in seen] == [False, False, False, True]
    assert "flat curve" in seen[-1][1] and pr.best_val_loss == 4.97 and pr.recent_val_losses == [5.0, 4.98, 4.97]
    pr = Progress()
    seen = [early_stop.observe(pr, x, patience=2, min_delta=None, flat_evals=2) for x in (3.0, 3.5, float("nan"))]
    assert [s[0] for s in seen] == [True, False, False]
    assert seen[-1][1] == "early stopping: no improvement in 2 evaluations" and pr.recent_val_losses == [3.0, 3.5]


# -------------------------------------------------------------------------- end to end (CPU)
def _cfg(tokenizer_json, offline_data, **train):
    cfg = tiny_config(offline_data, tokenizer_json)
    cfg["train"].update({"eval_every": 5, "checkpoint_every": 4, "early_stopping_patience": None,
                         "ema": {"decay": 0.9}, **train})
    cfg["logging"]["log_every"] = 1
    return from_dict(cfg)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, tokenizer_json, offline_data) -> Path:
    run = tmp_path_factory.mktemp("ema")
    assert train(_cfg(tokenizer_json, offline_data), run, quiet=True).step == 16
    return run


def test_a_run_with_ema_writes_per_source_and_ema_figures_and_an_ema_checkpoint(ema_run):
    evals = [r for r in read_metrics(ema_run / "metrics.jsonl") if "val/loss" in r]
    assert [r["step"] for r in evals] == [5, 6, 10, 11, 15, 16]
    for r in evals:
        for name in ("wiki", "math"):
            assert math.isfinite(r[f"val/{name}/loss"]) and r[f"val/{name}/ppl"] == pytest.approx(
                math.exp(r[f"val/{name}/loss"]))
            assert 0 <= r[f"val/{name}/accuracy"] <= 1
        # The mix lies between its sources (a token-weighted mean of them).
        lo, hi = sorted((r["val/wiki/loss"], r["val/math/loss"]))
        assert lo <= r["val/loss"] <= hi
        assert math.isfinite(r["val_ema/loss"]) and r["val_ema/loss"] != r["val/loss"]
    last = sorted((ema_run / "checkpoints").glob("step_*"))[-1]
    ema_dir = ema_run / "checkpoints" / "ema"
    published, in_step = load_file(str(ema_dir / "model.safetensors")), load_file(str(last / "ema.safetensors"))
    raw = load_file(str(last / "model.safetensors"))
    assert published.keys() == raw.keys() and all(torch.equal(published[k], in_step[k]) for k in raw)
    assert any(not torch.equal(published[k], raw[k]) for k in raw)
    # `gradus export --ema` reads a step checkpoint's averaged weights; checkpoints/ema reads as a checkpoint.
    via_flag = load_model(ema_run, ema=True).model.state_dict()
    via_dir = load_model(ema_dir).model.state_dict()
    assert all(torch.equal(via_flag[k], via_dir[k]) for k in via_dir)


def test_the_ema_evaluation_is_of_the_saved_average(ema_run, tokenizer_json, offline_data):
    # The last evaluation (step 16) scored the averaged weights saved at step 16: score them again.
    from gradus.data import DataPipeline, load_tokenizer
    from gradus.train.evaluate import Validation

    cfg = _cfg(tokenizer_json, offline_data)
    tok = load_tokenizer(cfg.data, run_dir=ema_run)
    data = DataPipeline(cfg.data, tok)
    try:
        model = load_model(ema_run / "checkpoints" / "ema").model
        val = Validation(data, cfg.data.validation.tokens, 1 << 30, 64)
        got = val.reference(model, torch.device("cpu"), _null)
    finally:
        data.close()
    last = [r for r in read_metrics(ema_run / "metrics.jsonl") if "val/loss" in r][-1]
    assert got["loss"] == pytest.approx(last["val_ema/loss"], rel=1e-5)


def test_a_resumed_run_continues_the_same_average_bit_for_bit(ema_run, tmp_path, tokenizer_json, offline_data):
    cfg = _cfg(tokenizer_json, offline_data)
    assert train(cfg, tmp_path, quiet=True, stop_at_step=6).step == 6
    assert train(cfg, tmp_path, quiet=True).step == 16
    a = load_file(str(sorted((ema_run / "checkpoints").glob("step_*"))[-1] / "ema.safetensors"))
    b = load_file(str(sorted((tmp_path / "checkpoints").glob("step_*"))[-1] / "ema.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ema_a = [r["val_ema/loss"] for r in read_metrics(ema_run / "metrics.jsonl") if "val_ema/loss" in r]
    ema_b = [r["val_ema/loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if "val_ema/loss" in r]
    assert ema_b == ema_a


def test_early_stopping_can_follow_one_source(tmp_path, tokenizer_json, offline_data):
    # Patience 1 on the math source: the run stops at the first evaluation whose math loss is no new best.
    cfg = _cfg(tokenizer_json, offline_data, early_stopping_metric="val/math/loss", early_stopping_patience=1, ema=None)
    result = train(cfg, tmp_path, quiet=True)
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "val/loss" in r]
    math_losses = [r["val/math/loss"] for r in evals]
    first_worse = next((i for i in range(1, len(math_losses)) if math_losses[i] >= min(math_losses[:i])), None)
    if first_worse is None:
        assert result.step == 16 and result.best_val_loss == min(math_losses)
    else:
        assert result.step == evals[first_worse]["step"] and result.reason.startswith("early stopping")
        assert result.best_val_loss == min(math_losses[:first_worse])


def test_adding_ema_to_a_run_without_it_is_refused_in_one_line(tmp_path, tokenizer_json, offline_data, capsys):
    plain = tiny_config(offline_data, tokenizer_json)
    plain["train"].update({"checkpoint_every": 2, "early_stopping_patience": None})
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(plain))
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "--quiet", "--stop-at-step", "2"]) == 0
    assert main(["train", "--out", str(run), "--quiet", "--set", "train.ema.decay=0.9"]) == 2
    err = capsys.readouterr().err
    assert err == (f"gradus: error: {run}/checkpoints/step_00000002 was written without train.ema, so its weights' "
                   f"average cannot be resumed; drop train.ema, or start a new run with another --out\n")


# ----------------------------------------------------------------------------- the evaluation cadence
def test_evaluation_due_follows_tokens_when_eval_every_tokens_is_set():
    by_steps = SimpleNamespace(eval_every=5, eval_every_tokens=None)
    assert [s for s in range(1, 16) if evaluation_due(by_steps, s, s * 100, 100)] == [5, 10, 15]
    by_tokens = SimpleNamespace(eval_every=5, eval_every_tokens=500)
    # 128 tokens per step, then 256: due in the step that crosses each multiple of 500, whatever the step count.
    tokens = [128 * i for i in range(1, 7)] + [768 + 256 * i for i in range(1, 8)]
    steps_due = [i + 1 for i, t in enumerate(tokens) if evaluation_due(by_tokens, i + 1, t, t - (tokens[i - 1] if i else 0))]
    assert [tokens[s - 1] for s in steps_due] == [512, 1024, 1536, 2048, 2560]


def test_a_batch_ramp_run_is_evaluated_at_the_token_cadence(tmp_path, tokenizer_json, offline_data):
    stages = [{**st, "tokens_per_batch": 128, "tokens": 6 * 128} if i == 0 else dict(st)
              for i, st in enumerate(builders.TINY_STAGES)]
    cfg = tiny_config(offline_data, tokenizer_json, stages)
    cfg["curriculum"]["batch_ramp"] = {"direction": "grow"}
    cfg["train"].update({"eval_every": 1, "eval_every_tokens": 512, "eval_at_stage_change": False,
                         "early_stopping_patience": None, "checkpoint_every": None})
    result = train(from_dict(cfg), tmp_path, quiet=True)
    assert result.step == 16 and result.tokens == 768 + 2 * 1280
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "val/loss" in r]
    # eval_every=1 is ignored: evaluations at 512, 1024, ... tokens (steps 4, 7, 9, ...), none in between.
    assert [r["tokens"] for r in evals] == [512, 1024, 1536, 2048, 2560, 3072]
    assert [r["step"] for r in evals] == [4, 7, 9, 11, 13, 15]
