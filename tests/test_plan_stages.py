"""Stages B and C of the lesson as ``gradus plan --write`` writes them: the written config's own cells
(B's LR lowered 1.5×, C at 4× the context with RoPE scaling and LR 1e-5 -> 5e-6), read back through the
curriculum, and a tiny copy of it (same stage shapes and LR cells, small model and offline data) training."""

from __future__ import annotations

import json

import pytest
import yaml
from builders import tiny_config

from gradus.cli import main
from gradus.config import from_dict, load_config
from gradus.curriculum import lr_at, resolve_schedule
from gradus.train.trainer import train


def _write_plan(tmp_path, capsys, *argv: str) -> tuple[dict, dict]:
    path = tmp_path / "plan.yaml"
    assert main(["plan", *argv, "--write", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    return data, yaml.safe_load(path.read_text())


@pytest.mark.parametrize("params, peak", [("1B", 3e-4), ("7B", 1.5e-4)])
def test_written_config_lowers_b_and_runs_c_long_at_a_small_lr(tmp_path, capsys, params, peak):
    data, raw = _write_plan(tmp_path, capsys, "--params", params)
    cfg = load_config(tmp_path / "plan.yaml")
    assert cfg.curriculum.schedule == "per_stage"
    a, b, c = raw["curriculum"]["stages"]
    # The cells as written, typed in from the lesson: A at the grid LR, B lowered 1.5x, C at 1e-5 -> 5e-6.
    assert a["peak_lr"] == peak and b["peak_lr"] == pytest.approx(peak / 1.5, rel=1e-3)
    assert 1.5 - 1e-9 <= a["peak_lr"] / b["peak_lr"] <= 2.0
    assert c["peak_lr"] == 1e-5 and c["peak_lr"] * c["min_lr_ratio"] == pytest.approx(5e-6)
    assert (a["seq_len"], b["seq_len"], c["seq_len"]) == (1024, 2048, 8192)
    assert "rope_scaling" not in a and "rope_scaling" not in b and c["rope_scaling"] == 4.0
    assert raw["model"]["max_seq_len"] == 8192
    # What the curriculum makes of them: the LR each stage really trains at, step by step.
    cur = resolve_schedule(cfg)
    sa, sb, sc = cur.stages
    a_top = lr_at(cur, sa.start_step + sa.warmup_steps - 1, 0)
    b_top = lr_at(cur, sb.start_step + sb.warmup_steps - 1, 1)
    assert a_top == pytest.approx(peak) and b_top == pytest.approx(peak / 1.5, rel=1e-3)
    assert lr_at(cur, sb.end_step - 1, 1) == pytest.approx(peak * 0.1, rel=1e-3)  # B ends at A's floor
    c_lrs = [lr_at(cur, s, 2) for s in range(sc.start_step, sc.end_step, max(1, sc.steps // 50))]
    assert max(c_lrs) == pytest.approx(1e-5) and min(c_lrs) >= 5e-6 - 1e-12
    assert lr_at(cur, sc.end_step - 1, 2) == pytest.approx(5e-6, rel=1e-3)
    assert (sa.rope_scaling, sb.rope_scaling, sc.rope_scaling) == (1.0, 1.0, 4.0)
    # The worksheet prints the same cells.
    rows = data["stages"]
    assert rows[1]["peak_lr"] == pytest.approx(b_top) and rows[2]["peak_lr"] == pytest.approx(1e-5)
    assert rows[2]["end_lr"] == pytest.approx(5e-6, rel=1e-3) and rows[2]["rope_scaling"] == 4.0


def test_a_tiny_copy_of_the_written_stages_trains(tmp_path, capsys, offline_data):
    _, raw = _write_plan(tmp_path, capsys, "--params", "1B")
    cfg = tiny_config(offline_data)
    cfg["data"]["sources"] = [
        {"name": "web", "path": str(offline_data / "wikitext-2" / "train.jsonl")},
        {"name": "math", "path": str(offline_data / "gsm8k" / "train.jsonl"), "template": "{question}\n{answer}"},
        {"name": "code", "path": str(offline_data / "python-code-networkx" / "networkx_py.jsonl")},
    ]
    # The written stages scaled down 64x in length and to 3 steps each; every LR and RoPE cell kept.
    stages = []
    for st in raw["curriculum"]["stages"]:
        seq = st["seq_len"] // 64
        stages.append({**st, "seq_len": seq, "tokens_per_batch": 256, "tokens": 3 * 256,
                       "warmup_steps": min(st["warmup_steps"], 1)})
    cfg["curriculum"] = {**raw["curriculum"], "stages": stages, "target_tokens": 9 * 256}
    cfg["model"]["max_seq_len"] = 128
    cfg["logging"]["log_every"] = 1
    run = train(from_dict(cfg), tmp_path / "run", quiet=True)
    assert run.step == 9
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and "event" not in r]
    assert [r["curriculum/current_seq_len"] for r in steps] == [16] * 3 + [32] * 3 + [128] * 3
    assert steps[3]["lr"] == pytest.approx(2e-4)  # B's first step: one warmup step to its lowered peak
    assert steps[6]["lr"] == pytest.approx(1e-5)  # C starts at its small peak
    assert steps[8]["lr"] >= 5e-6 - 1e-12 and all(r["loss"] == r["loss"] for r in steps)
