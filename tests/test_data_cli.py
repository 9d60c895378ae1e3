"""``gradus data``: the JSON report, stage transitions, and a non-zero exit for an unreachable source."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
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


def test_a_small_sample_says_how_far_its_mix_can_stray(tmp_path: Path, offline_data: Path, capsys):
    path = write_config(tmp_path, offline_data)
    assert main(["data", str(path), "--stage", "0", "--batches", "2", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)["stages"][0]
    docs = st["mix_documents"]
    assert docs == round(st["eos_per_window"] * 2 * 64) and docs > 0  # the EOS tokens in 2 × 64 windows
    assert st["mix_tolerance"] == round(2 * (0.7 * 0.3 / docs) ** 0.5, 4)  # two standard errors of w = 0.7
    gap = max(abs(st["mix_realized"][n] - w) for n, w in st["mix_configured"].items())
    assert st["mix_max_deviation"] == pytest.approx(gap, abs=6e-5)  # rounded to 4 places

    assert main(["data", str(path), "--stage", "0", "--batches", "2"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  mix "))
    more = math.ceil(2 * (st["mix_tolerance"] / 0.02) ** 2)
    # At that many batches (documents in proportion) chance moves a share by about ±0.02, not by half of it.
    at_more = 2 * (0.7 * 0.3 / (docs * more / 2)) ** 0.5
    assert 0.017 < at_more <= 0.0201
    assert line == (f"  mix from a small sample: {docs:,} document ends in 2 batches, so chance alone moves a share "
                    f"by ±{st['mix_tolerance']:.3f} or more; largest gap here {st['mix_max_deviation']:.3f}; "
                    f"--batches {more} for about ±0.02")


def test_mix_note_for_a_large_sample():
    from gradus.commands.data import mix_note, mix_tolerance

    assert mix_tolerance({"a": 0.5, "b": 0.5}, 10_000) == pytest.approx(0.01)
    st = {"mix_tolerance": 0.01, "mix_max_deviation": 0.004, "mix_documents": 10_000, "batches": 400}
    assert mix_note(st) == ("  mix sample: 10,000 document ends in 400 batches, so chance alone moves a share by "
                            "±0.010 or more; largest gap here 0.004")
