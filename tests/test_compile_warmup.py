"""No stall at a shape change: with ``train.compile: on`` every training shape is compiled at start-up
(gradus/train/warmup.py), and the run then builds no graph at all (``compile/recompiles`` stays 0)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from builders import tiny_config

from gradus.config import from_dict
from gradus.model import GPT
from gradus.sizes import ModelShape
from gradus.train.metrics import read_metrics
from gradus.train.runtime import Runtime
from gradus.train.trainer import train
from gradus.train.warmup import compile_warmup, training_shapes

# A one-layer model: compiling it takes seconds, and three stages still change shape twice.
SMALL_MODEL = {"n_layers": 1, "d_model": 32, "n_heads": 2, "max_seq_len": 64}


def _stage(index: int, seq_len: int, batch: int, steps: int = 3, rope: float = 1.0) -> SimpleNamespace:
    return SimpleNamespace(index=index, seq_len=seq_len, batch_size=batch, steps=steps, rope_scaling=rope)


def test_training_shapes_lists_each_micro_batch_shape_once_with_ragged_tails():
    stages = [_stage(0, 16, 16), _stage(1, 32, 8), _stage(2, 32, 8), _stage(3, 64, 4, rope=2.0),
              _stage(4, 128, 4, steps=0)]
    # stage 0: 16 rows at micro 6 -> 6, 6, 4; stage 1: 8 at 6 -> 6, 2; stage 2 repeats stage 1's shapes;
    # stage 3 differs by its RoPE scaling only in part; stage 4 trains no steps.
    micro = {0: 6, 1: 6, 2: 6, 3: 4, 4: 4}
    assert training_shapes(stages, micro, world_size=1) == [
        (0, 6, 16, 1.0), (0, 4, 16, 1.0), (1, 6, 32, 1.0), (1, 2, 32, 1.0), (3, 4, 64, 2.0)]
    # Under two ranks each rank's local batch is half: 8 rows at micro 6 -> 6, 2.
    assert training_shapes(stages[:1], {0: 6}, world_size=2) == [(0, 6, 16, 1.0), (0, 2, 16, 1.0)]
    # train.noise_scale.every: the unsplit micro-batches of the steps that do not measure are warmed too.
    assert training_shapes(stages[:2], {0: 8, 1: 4}, world_size=1, also={0: 16, 1: 8}) == [
        (0, 8, 16, 1.0), (0, 16, 16, 1.0), (1, 4, 32, 1.0), (1, 8, 32, 1.0)]


def test_warmup_leaves_weights_grads_optimizer_rope_and_rng_as_they_were():
    shape = ModelShape(n_layers=1, d_model=32, n_heads=2, vocab_size=64, max_seq_len=32)
    torch.manual_seed(0)
    model = GPT(shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    rt = Runtime(device=torch.device("cpu"), precision="fp32", rank=0, local_rank=0, world_size=1)
    warm = compile_warmup(model, model, optimizer, rt, [_stage(0, 8, 4), _stage(1, 16, 2, rope=2.0)], {0: 4, 1: 2})
    assert [(s.stage, s.rows, s.seq_len, s.rope_scaling) for s in warm.shapes] == [(0, 4, 8, 1.0), (1, 2, 16, 2.0)]
    assert all(s.seconds > 0 for s in warm.shapes)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert optimizer.state == {}
    assert model.shape.rope_scaling == 1.0
    assert torch.equal(torch.get_rng_state(), rng)


def _run(tmp_path, offline_data, compile_mode: str, **train_fields) -> list[dict]:
    raw = tiny_config(offline_data)
    raw["model"] = dict(SMALL_MODEL)
    raw["train"].update({"compile": compile_mode, "eval_every": 5, **train_fields})
    raw["logging"]["log_every"] = 1
    out = tmp_path / f"{compile_mode}{'-' if train_fields else ''}{'-'.join(train_fields)}"
    result = train(from_dict(raw), out, quiet=True)
    assert result.step == 16
    return list(read_metrics(out / "metrics.jsonl"))


def test_compiled_curriculum_never_recompiles_after_warmup(tmp_path, offline_data):
    records = _run(tmp_path, offline_data, "on")
    warm = [r for r in records if r.get("event") == "compile/warmup"]
    assert [(r["curriculum/stage"], r["seq_len"], r["rows"]) for r in warm] == [(0, 16, 16), (1, 32, 8), (2, 64, 4)]
    assert all(r["seconds"] > 0 for r in warm)
    steps = [r for r in records if "event" not in r and "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 17))
    # Evaluations (at 64 and at each stage's length) ran in between: they run the plain module.
    assert any(r.get("val/loss") is not None for r in records)
    assert [r["compile/recompiles"] for r in steps] == [0] * 16
    compiled_losses = [r["loss"] for r in steps]
    assert all(math.isfinite(v) for v in compiled_losses)

    eager = [r for r in _run(tmp_path, offline_data, "off") if "event" not in r and "loss" in r]
    assert all("compile/recompiles" not in r for r in eager)
    # Inductor fuses and reorders float sums, so the numbers may differ in the last bits, not more.
    assert compiled_losses == pytest.approx([r["loss"] for r in eager], rel=1e-4)


def test_a_run_measuring_the_noise_scale_every_other_step_warms_both_micro_batches(tmp_path, offline_data):
    """train.noise_scale.every: 2 with micro_batches: 2 alternates split and whole steps: both micro-batch
    shapes of every stage are compiled at start-up, and no step builds a graph."""
    records = _run(tmp_path, offline_data, "on", noise_scale={"micro_batches": 2, "every": 2})
    warm = [(r["curriculum/stage"], r["seq_len"], r["rows"]) for r in records if r.get("event") == "compile/warmup"]
    assert warm == [(0, 16, 8), (0, 16, 16), (1, 32, 4), (1, 32, 8), (2, 64, 2), (2, 64, 4)]
    steps = [r for r in records if "event" not in r and "loss" in r]
    assert [r["curriculum/micro_batch_size"] for r in steps[:4]] == [8, 16, 8, 16]
    assert [r["compile/recompiles"] for r in steps] == [0] * 16
