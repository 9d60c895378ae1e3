"""The long-context passkey probe: the prompts' layout, accuracy by depth, the config check, a run's records."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from builders import tiny_config

from gradus.cli import main
from gradus.config import PasskeyConfig, from_dict
from gradus.errors import ConfigError
from gradus.train.metrics import read_metrics
from gradus.train.passkey import FILLER, PasskeyProbe, TooShort, depths, make_prompts, retrieval_accuracy
from gradus.train.trainer import train


class Chars:
    """One token per character (its code point): the layout can be read back exactly."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def text(ids) -> str:
    return "".join(chr(i) for i in ids)


class Peek(torch.nn.Module):
    """Predicts the next input token by looking at it (not causal): retrieves every key, unless ``only_if``
    says otherwise for a row; then all logits are zero (argmax token 0, never part of an answer)."""

    def __init__(self, only_if=lambda row: True):
        super().__init__()
        self.only_if = only_if

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, 128)
        for r in range(ids.size(0)):
            if self.only_if(ids[r]):
                logits[r, torch.arange(ids.size(1) - 1), ids[r, 1:]] = 1.0
        return logits, None


def test_depths_are_even_from_start_to_end():
    assert depths(4) == [0.0, 1 / 3, 2 / 3, 1.0] and depths(1) == [0.5] and depths(2) == [0.0, 1.0]


def test_prompts_are_the_probe_length_with_the_key_at_its_depth():
    cfg = PasskeyConfig(depths=3, trials=2, digits=5, seed=1)
    prompts = make_prompts(Chars(), 300, cfg)
    assert len(prompts) == 6 and [p.depth for p in prompts] == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    for p in prompts:
        assert len(p.ids) == 300 and len(p.key) == 5 and p.key.isdigit()
        assert p.answer_start == 300 - 6 and text(p.ids[p.answer_start:]) == f" {p.key}"
        whole = text(p.ids)
        needle = f" The pass key is {p.key}. Remember it. {p.key} is the pass key. "
        assert whole.endswith(" What is the pass key? The pass key is" + f" {p.key}")
        room = 300 - len(needle) - len(" What is the pass key? The pass key is") - 6  # 300 - 60 - 38 - 6
        assert room == 196 and whole.index(needle) == round(p.depth * room)
    assert text(prompts[0].ids).startswith(" The pass key is")  # depth 0: the key first, then filler
    assert text(prompts[-1].ids).startswith(FILLER[:50])
    assert make_prompts(Chars(), 300, cfg) == prompts  # the same questions at every evaluation


def test_accuracy_by_depth_counts_a_key_only_when_every_digit_is_predicted():
    prompts = make_prompts(Chars(), 200, PasskeyConfig(depths=4, trials=3))
    cpu, null = torch.device("cpu"), contextlib.nullcontext
    assert retrieval_accuracy(Peek(), prompts, cpu, null, rows=5) == {0.0: 1.0, 1 / 3: 1.0, 2 / 3: 1.0, 1.0: 1.0}
    # A model that retrieves only when the key opens the prompt (depth 0 starts with a space, filler does not).
    first = Peek(lambda row: int(row[0]) == ord(" "))
    assert retrieval_accuracy(first, prompts, cpu, null, rows=2) == {0.0: 1.0, 1 / 3: 0.0, 2 / 3: 0.0, 1.0: 0.0}
    record = PasskeyProbe(PasskeyConfig(depths=4, trials=3), Chars()).record(first, 200, cpu, null, rows=4)
    assert record == {"probe/passkey/depth_0": 1.0, "probe/passkey/depth_33": 0.0, "probe/passkey/depth_67": 0.0,
                      "probe/passkey/depth_100": 0.0, "probe/passkey/accuracy": 0.25, "probe/passkey/seq_len": 200}


def test_a_length_too_short_for_the_prompt_is_skipped_in_a_run_and_refused_directly():
    probe = PasskeyProbe(PasskeyConfig(), Chars())
    assert probe.record(Peek(), 100, torch.device("cpu"), contextlib.nullcontext, rows=4) == {}  # needs 104
    assert probe.record(Peek(), 104, torch.device("cpu"), contextlib.nullcontext, rows=4)["probe/passkey/accuracy"] == 1.0
    with pytest.raises(TooShort, match="100 tokens cannot hold"):
        make_prompts(Chars(), 100, PasskeyConfig())


def test_a_probe_length_above_the_models_is_one_line(tmp_path, offline_data, capsys):
    cfg = tiny_config(offline_data)
    cfg["train"]["passkey"] = {"seq_len": 128}
    with pytest.raises(ConfigError, match=r"train\.passkey\.seq_len=128 exceeds model\.max_seq_len=64"):
        from_dict(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.passkey.seq_len=128" in err[0]


def test_a_run_with_the_probe_writes_accuracy_by_depth(tmp_path, offline_data):
    cfg = tiny_config(offline_data)
    cfg["train"].update({"eval_every": 5, "checkpoint_every": None, "early_stopping_patience": None, "max_steps": 5,
                         "passkey": {"depths": 2, "trials": 2, "seq_len": 64}})
    train(from_dict(cfg), tmp_path, quiet=True)
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "val/loss" in r]
    assert [r["step"] for r in evals] == [5] and evals[0]["val/stage_seq_len"] == 16
    assert evals[0]["probe/passkey/seq_len"] == 64  # the configured length, not the stage's
    for r in evals:
        assert {r["probe/passkey/depth_0"], r["probe/passkey/depth_100"]} <= {0.0, 0.5, 1.0}
        assert r["probe/passkey/accuracy"] == (r["probe/passkey/depth_0"] + r["probe/passkey/depth_100"]) / 2
