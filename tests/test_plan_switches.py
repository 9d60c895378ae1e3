"""The planner and FSDP / activation checkpointing: the memory estimate's sharded and recomputed layouts,
and a multi-GPU config written by ``gradus plan`` passing its own memory check. No torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gradus.cli import main
from gradus.config import TrainConfig
from gradus.plan.memory import (
    checkpointed_activation_bytes_per_token,
    estimate_memory,
    largest_fitting_micro_batch,
    memory_layout,
)
from gradus.sizes import ModelShape

SHAPE = ModelShape(n_layers=4, d_model=64, n_heads=4, vocab_size=1000, max_seq_len=128, ffn_hidden=176)


def plan(capsys, *argv: str) -> str:
    assert main(["plan", *argv]) == 0
    return capsys.readouterr().out


def test_fsdp_splits_weights_grads_and_adamw_and_adds_the_gathered_blocks():
    p, block = SHAPE.params_total, SHAPE.params_non_embedding / 4
    whole = estimate_memory(SHAPE, 128, 2, "bf16")
    sharded = estimate_memory(SHAPE, 128, 2, "bf16", shards=8)
    gathered = 2 * block + 1000 * 64  # two blocks (running + prefetched) and the embedding, gathered whole
    assert sharded.weights == int(4 * p / 8 + 2 * gathered)
    assert sharded.gradients == int(4 * p / 8 + 4 * 2 * block)
    assert sharded.optimizer == int(8 * p / 8) and whole.optimizer == 8 * p
    assert sharded.activations == whole.activations  # sharding does not touch activations
    assert estimate_memory(SHAPE, 128, 2, "fp32", shards=8).weights == int(4 * p / 8 + 4 * gathered)


def test_activation_checkpointing_keeps_one_tensor_per_recomputed_block():
    full = estimate_memory(SHAPE, 128, 2, "bf16").activations
    per_token = full / 256
    d, f, a = 64, 176, 2
    block = 8 * d + 7 * a * d + 4 * a * f  # one block's saved tensors per token (see activation_bytes_per_token)
    # All four blocks recomputed: each keeps its fp32 input (4d), plus one block's set during recomputation.
    assert checkpointed_activation_bytes_per_token(SHAPE, "bf16", 4) == per_token - 4 * block + 4 * 4 * d + block
    assert checkpointed_activation_bytes_per_token(SHAPE, "bf16", 2) == per_token - 2 * block + 2 * 4 * d + block
    assert checkpointed_activation_bytes_per_token(SHAPE, "bf16", 0) == per_token
    recomputed = estimate_memory(SHAPE, 128, 2, "bf16", checkpointed=4)
    assert recomputed.activations == int((per_token - 3 * block + 16 * d) * 256) < full
    # A budget between the two: recomputation lets a larger micro-batch fit.
    budget = int(estimate_memory(SHAPE, 128, 8, "bf16", checkpointed=4).total / 0.9) + 1
    assert largest_fitting_micro_batch(SHAPE, 128, 8, budget, "bf16", checkpointed=4) == 8
    assert largest_fitting_micro_batch(SHAPE, 128, 8, budget, "bf16") < 8


def test_memory_layout_follows_the_train_config():
    train = TrainConfig
    assert memory_layout(train(), 8, 4) == {"shards": 1, "checkpointed": 0}
    assert memory_layout(train(parallel="fsdp"), 8, 4) == {"shards": 4, "checkpointed": 0}
    assert memory_layout(train(parallel="fsdp"), 8, 1) == {"shards": 1, "checkpointed": 0}  # alone: unsharded
    assert memory_layout(train(activation_checkpointing="every_k", activation_checkpointing_every_k=3), 8, 1) == {
        "shards": 1, "checkpointed": 3}


def test_the_8_h100_plan_turns_on_fsdp_and_passes_its_own_check(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    out = plan(capsys, "--gpus", "8", "--gpu", "h100", "--days", "14", "--write", str(path))
    assert "memory switches turned on for 8 GPU(s)" in out
    assert "parallel: fsdp — a whole copy of the weights, gradients and AdamW needs ~103.9 GiB" in out
    cfg = yaml.safe_load(path.read_text())
    assert cfg["train"] == {"planned_world_size": 8, "parallel": "fsdp"}  # 59.5 GiB at 8192: no recomputation
    assert "# Turned on: parallel: fsdp" in path.read_text()
    checked = _timeline(capsys, path, "80GB")
    assert checked["shards"] == 8 and [s["fits"] for s in checked["stages"]] == [True, True, True]
    assert not [w for w in checked["warnings"] if "fit" in w]
    assert max(s["memory"]["total"] for s in checked["stages"]) / 2**30 < 0.9 * 80
    # The same config without the switches is the one the issue reported: no stage fits.
    del cfg["train"]
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(cfg))
    unsharded = _timeline(capsys, bare, "80GB")
    assert [s["fits"] for s in unsharded["stages"]] == [False, False, False]
    assert [round(s["memory"]["total"] / 2**30) for s in unsharded["stages"]] == [104, 110, 144]


@pytest.mark.parametrize(("gpus", "tokens_per_step"), [(8, 196_608), (16, 131_072), (32, 262_144), (5, 327_680)])
def test_every_stage_batch_of_a_written_plan_splits_over_its_gpus(tmp_path, capsys, gpus, tokens_per_step):
    """The worksheet's 196,608 tokens per step gives stage C (8192) a batch of 24: fine on 8 GPUs, refused by
    gradus train on 16. Tokens per step go to the nearest multiple of lcm(GPUs, batch_multiple 8) × 8192, and
    the plan's own check finds nothing to say."""
    path = tmp_path / "p.yaml"
    out = plan(capsys, "--gpus", str(gpus), "--gpu", "h100", "--days", "14", "--write", str(path))
    cfg = yaml.safe_load(path.read_text())
    stages = cfg["curriculum"]["stages"]
    assert {st["tokens_per_batch"] for st in stages} == {tokens_per_step}
    assert all(st["tokens_per_batch"] // st["seq_len"] % gpus == 0 for st in stages)
    assert ("splits evenly over the GPUs" in out) == (tokens_per_step != 196_608)
    assert "rounded to batch" not in out
    checked = _timeline(capsys, path, "80GB")
    assert not [w for w in checked["warnings"] if "divide" in w]


def test_given_tokens_per_step_that_do_not_split_over_the_gpus_are_refused_in_one_line(tmp_path, capsys):
    assert main(["plan", "--gpus", "16", "--gpu", "h100", "--days", "14", "--tokens-per-step", "196608",
                 "--write", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert err == ("gradus: error: --tokens-per-step 196608: stage C's batch of 24 × 8192 does not split over 16 "
                   "GPUs in whole multiples of 8; give a multiple of 131,072 (16 × 8192), or leave it out to have "
                   "one chosen\n")
    assert not (tmp_path / "p.yaml").exists()
    assert main(["plan", "--gpus", "16", "--gpu", "h100", "--days", "14", "--tokens-per-step", "262144"]) == 0


def test_the_plan_check_names_a_batch_its_world_size_does_not_divide(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    plan(capsys, "--gpus", "8", "--gpu", "h100", "--days", "14", "--write", str(path))
    cfg = yaml.safe_load(path.read_text())
    cfg["curriculum"]["stages"][2]["tokens_per_batch"] = 3 * 8192
    cfg["curriculum"]["stages"][2]["batch_multiple"] = 1
    cfg["train"]["planned_world_size"] = 2
    path.write_text(yaml.safe_dump(cfg))
    warnings = _timeline(capsys, path, "80GB")["warnings"]
    assert any(w.startswith("stage 2 (C-long-context-adaptation): batch 3 does not divide by 2 processes; gradus "
                            "train refuses it: choose tokens_per_batch = a multiple of 2 × 8192") for w in warnings)


def test_small_gpus_also_get_activation_checkpointing(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    out = plan(capsys, "--gpus", "8", "--gpu", "rtx4090", "--days", "30", "--write", str(path))
    assert "activation_checkpointing: full — ~42.8 GiB per device at seq_len 8192" in out
    cfg = yaml.safe_load(path.read_text())
    assert cfg["train"] == {"planned_world_size": 8, "parallel": "fsdp", "activation_checkpointing": "full"}
    checked = _timeline(capsys, path, "24GB")
    assert checked["checkpointed_blocks"] == cfg["model"]["n_layers"]
    assert all(s["fits"] for s in checked["stages"])


def test_one_gpu_that_fits_gets_no_switches(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    out = plan(capsys, "--gpus", "1", "--gpu", "h100", "--days", "14", "--write", str(path))
    assert "memory switches" not in out and "train" not in yaml.safe_load(path.read_text())


def _timeline(capsys, path: Path, memory: str) -> dict:
    assert main(["plan", "--config", str(path), "--device-memory", memory, "--json"]) == 0
    return json.loads(capsys.readouterr().out)
