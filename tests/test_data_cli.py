"""``gradus data``: the JSON report, stage transitions, and a non-zero exit for an unreachable source."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gradus.cli import main


def write_config(tmp_path: Path, shared: Path, extra_source: dict | None = None) -> Path:
    sources = [
        {"name": "wiki", "path": str(shared / "wikitext-2" / "valid.jsonl")},
        {"name": "gsm8k", "path": str(shared / "gsm8k" / "test.jsonl"), "template": "{question}\n{answer}"},
    ]
    if extra_source:
        sources.append(extra_source)
    cfg = {
        "data": {"sources": sources, "tokenizer": {"name_or_path": str(shared / "gpt2-tokenizer")}, "shuffle_buffer": 16},
        "curriculum": {
            "target_tokens": 40_960,
            "stages": [
                {"tokens": 8192, "seq_len": 32, "batch_size": 64, "mix": {"wiki": 0.7, "gsm8k": 0.3}},
                {"tokens": 12288, "seq_len": 64, "batch_size": 32, "mix": {"wiki": 0.5, "gsm8k": 0.5}},
                {"tokens": 20480, "seq_len": 128, "batch_size": 16, "mix": {"wiki": 0.2, "gsm8k": 0.8}},
            ],
        },
    }
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_json_report_first_and_last_stage(tmp_path: Path, offline_data: Path, capsys):
    path = write_config(tmp_path, offline_data)
    assert main(["data", str(path), "--json", "--batches", "2", "--tokens-per-sec", "10k"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["index"] for s in report["stages"]] == [0, 2]
    first, last = report["stages"]
    for key in ("index", "seq_len", "batch_size", "batches", "tokens", "mix_configured", "mix_realized", "tokens_per_sec"):
        assert key in first
    assert first["shape"] == [64, 32] and last["shape"] == [16, 128] and first["tokens"] == 2 * 64 * 32
    assert first["mix_configured"] == {"wiki": 0.7, "gsm8k": 0.3}
    assert abs(sum(first["mix_realized"].values()) - 1) < 1e-6 and first["tokens_per_sec"] > 0
    assert last["estimated_seconds"] == 20480 / 10_000
    assert [s["ok"] for s in report["sources"]] == [True, True]


def test_transitions_switch_exactly_at_the_boundary(tmp_path: Path, offline_data: Path, capsys):
    path = write_config(tmp_path, offline_data)
    assert main(["data", str(path), "--transitions", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    trs = report["transitions"]
    assert [(t["from_stage"], t["to_stage"], t["boundary_step"]) for t in trs] == [(0, 1, 4), (1, 2, 10)]
    for t in trs:
        assert t["exact"] and t["continuous"]
        shapes = [(s["step"], s["stage_index"], s["shape"]) for s in t["steps"]]
        assert all((s["stage_index"] == t["to_stage"]) == (s["step"] >= t["boundary_step"]) for s in t["steps"]), shapes
    assert main(["data", str(path), "--transitions"]) == 0
    assert "switched exactly at the boundary; no token lost or repeated" in capsys.readouterr().out


def test_unreachable_source_exits_non_zero(tmp_path: Path, offline_data: Path, capsys):
    hub = {"name": "web", "dataset": "HuggingFaceFW/fineweb-edu", "dataset_config": "sample-10BT"}
    path = write_config(tmp_path, offline_data, extra_source=hub)
    assert main(["data", str(path), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    status = {s["name"]: s for s in report["sources"]}
    assert status["wiki"]["ok"] and status["gsm8k"]["ok"] and not status["web"]["ok"]
    assert "HuggingFaceFW/fineweb-edu" in status["web"]["error"] and "\n" not in status["web"]["error"]
    assert main(["data", str(path)]) == 2
    assert "web    ERROR  source 'web'" in capsys.readouterr().out


def test_single_stage_and_human_output(tmp_path: Path, offline_data: Path, capsys):
    path = write_config(tmp_path, offline_data)
    assert main(["data", str(path), "--stage", "1", "--batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "stage 1 (stage2): seq_len 64 × batch 32 → shape [32, 64]" in out and "configured  realized" in out
    assert main(["data", str(path), "--stage", "7"]) == 2
