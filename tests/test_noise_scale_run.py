"""The gradient noise scale in a real run (issue 30 §1): logged as gns/... where a step has several
micro-batches, restarted at every stage, continued exactly by a resumed run, and said once where it cannot be
measured."""

from __future__ import annotations

import math

import torch
from builders import tiny_config

from gradus.config import from_dict
from gradus.train.metrics import read_metrics
from gradus.train.trainer import train


def _cfg(tokenizer_json, offline_data, **train_fields):
    cfg = tiny_config(offline_data, tokenizer_json)
    cfg["train"].update({"eval_every": 100, "checkpoint_every": 4, "early_stopping_patience": None,
                         "micro_batch_size": 2, **train_fields})
    cfg["logging"]["log_every"] = 1
    return from_dict(cfg)


def _gns(run):
    return {r["step"]: (r["curriculum/stage"], r.get("gns/b_simple"), r.get("gns/samples"))
            for r in read_metrics(run / "metrics.jsonl") if "loss" in r and "step" in r}


def test_the_noise_scale_is_logged_per_step_and_restarts_at_each_stage(tmp_path, tokenizer_json, offline_data):
    result = train(_cfg(tokenizer_json, offline_data), tmp_path / "run", quiet=True)
    assert result.step == 16
    by_step = _gns(tmp_path / "run")
    assert sorted(by_step) == list(range(1, 17))
    # Stages of 6, 5 and 5 steps (micro-batches of 2 rows: 8, 4 and 2 per step): the sample count restarts.
    assert [by_step[s][2] for s in range(1, 17)] == [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5]
    values = [b for _, b, _ in by_step.values() if b is not None]
    assert len(values) == 16 and all(math.isfinite(v) and v > 0 or v == math.inf for v in values)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert not any(r.get("event") == "gns/unmeasured" for r in records)


def test_a_resumed_run_continues_the_same_averages(tmp_path, tokenizer_json, offline_data):
    whole = tmp_path / "whole"
    train(_cfg(tokenizer_json, offline_data), whole, quiet=True)
    split = tmp_path / "split"
    assert train(_cfg(tokenizer_json, offline_data), split, quiet=True, stop_at_step=8).step == 8
    train(_cfg(tokenizer_json, offline_data), split, quiet=True)
    assert _gns(split) == _gns(whole)  # exact: the averages are in the checkpoint


def test_one_micro_batch_says_once_that_it_cannot_measure(tmp_path, tokenizer_json, offline_data, capsys):
    cfg = _cfg(tokenizer_json, offline_data, micro_batch_size=64)  # every stage in one micro-batch
    train(cfg, tmp_path / "run")
    out = capsys.readouterr().out
    notes = [ln for ln in out.splitlines() if "gradient noise scale not measured" in ln]
    assert len(notes) == 1 and "train.noise_scale.micro_batches: 2 splits each step in two" in notes[0], notes
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["stage"] for r in records if r.get("event") == "gns/unmeasured"] == [0]
    assert not any("gns/b_simple" in r for r in records)


def test_off_it_is_neither_measured_nor_said(tmp_path, tokenizer_json, offline_data, capsys):
    train(_cfg(tokenizer_json, offline_data, micro_batch_size=64, noise_scale={"enabled": False}), tmp_path / "run")
    assert "noise scale" not in capsys.readouterr().out


def test_what_resolving_the_config_adjusted_is_said_once_at_the_start(tmp_path, tokenizer_json, offline_data,
                                                                      capsys):
    """A tokens_per_batch that does not divide into whole sequences, and a mix that does not sum to 1, used to be
    adjusted silently by gradus train (gradus schedule said it): now the run says each once (issue 31)."""
    cfg = tiny_config(offline_data, tokenizer_json)
    cfg["curriculum"]["stages"][0]["tokens_per_batch"] = 250
    cfg["curriculum"]["stages"][1]["mix"] = {"wiki": 1.0, "math": 1.0}
    cfg["train"].update({"max_steps": 2, "eval_every": 100})
    train(from_dict(cfg), tmp_path / "run")
    out = capsys.readouterr().out.splitlines()
    rounded = [ln for ln in out if ln.startswith("note: curriculum.stages[0]: tokens_per_batch=250")]
    mixed = [ln for ln in out if ln.startswith("note: curriculum.stages[1].mix sums to 2")]
    assert len(rounded) == 1 and "rounded to batch" in rounded[0] and len(mixed) == 1, out


def test_noise_scale_micro_batches_split_every_stage_in_two(tmp_path, tokenizer_json, offline_data):
    """train.noise_scale.micro_batches: 2 measures every stage without a row count per stage: each step runs as
    two micro-batches of half its rows (16, 8 and 4 rows: 8, 4 and 2), and every step logs gns/..."""
    cfg = _cfg(tokenizer_json, offline_data, micro_batch_size=None, noise_scale={"micro_batches": 2})
    train(cfg, tmp_path / "run", quiet=True)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in records if "loss" in r and "step" in r]
    assert {(r["curriculum/current_batch_size"], r["curriculum/micro_batch_size"]) for r in steps} == {(16, 8), (8, 4), (4, 2)}
    assert all(r.get("gns/b_simple") is not None for r in steps)
    assert not any(r.get("event") == "gns/unmeasured" for r in records)


def test_the_requested_split_takes_a_divisor_and_only_on_one_process():
    from gradus.config.schema_run import TrainConfig
    from gradus.train.micro_batch import configured_micro_batch, noise_splits

    assert configured_micro_batch(16, None, 2) == 8
    assert configured_micro_batch(16, 4, 2) == 4  # micro_batch_size smaller still wins
    assert configured_micro_batch(12, None, 5) == 2  # the largest divisor of 12 giving 5+ micro-batches
    assert configured_micro_batch(6, None, 4) == 1
    assert configured_micro_batch(1, None, 2) == 1  # one row: nothing to split
    assert configured_micro_batch(16, None) == 16
    train_cfg = TrainConfig(noise_scale={"micro_batches": 2})
    assert noise_splits(train_cfg, 1) == 2
    assert noise_splits(train_cfg, 2) == 1  # under DDP/FSDP the ranks are the two batch sizes
    assert noise_splits(TrainConfig(noise_scale={"micro_batches": 2, "enabled": False}), 1) == 1
    assert noise_splits(TrainConfig(), 1) == 1


def _every_cfg(tokenizer_json, offline_data, every):
    return _cfg(tokenizer_json, offline_data, micro_batch_size=None, noise_scale={"micro_batches": 2, "every": every})


def test_every_k_measures_one_step_in_k_and_runs_the_others_unsplit(tmp_path, tokenizer_json, offline_data, capsys):
    """train.noise_scale.every: 3 measures the steps whose index is a multiple of 3, in two micro-batches; the
    others run their whole batch at once and are no sample (gns/samples counts only the measured ones, from
    each stage's start: stages of steps 0-5, 6-10 and 11-15). The start-up line says both micro-batches."""
    train(_every_cfg(tokenizer_json, offline_data, 3), tmp_path / "run")
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("micro-batches per stage"))
    assert "split for the noise scale on 1 step in 3" in line and "×16→8×2 (else 16×1)" in line, line
    steps = {r["step"]: r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r and "step" in r}
    assert sorted(steps) == list(range(1, 17))
    for n, r in steps.items():  # record n is the step with index n - 1
        rows, micro = r["curriculum/current_batch_size"], r["curriculum/micro_batch_size"]
        assert micro == (rows // 2 if (n - 1) % 3 == 0 else rows), (n, rows, micro)
    assert [steps[n].get("gns/samples") for n in range(1, 17)] == [1, 1, 1, 2, 2, 2, 1, 1, 1, 2, 2,
                                                                    None, 1, 1, 1, 2]
    state = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("*/state.pt"))[-1], weights_only=False)
    assert state["gns"]["skipped"] == 0  # a step that does not measure is not a failed sample


def test_every_k_resumes_exactly_from_a_step_it_does_not_measure(tmp_path, tokenizer_json, offline_data):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(_every_cfg(tokenizer_json, offline_data, 3), whole, quiet=True)
    assert train(_every_cfg(tokenizer_json, offline_data, 3), split, quiet=True, stop_at_step=8).step == 8
    train(_every_cfg(tokenizer_json, offline_data, 3), split, quiet=True)

    def losses(run):
        return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r and "step" in r}

    assert _gns(split) == _gns(whole) and losses(split) == losses(whole)
