"""benchmarks/adaptive_vs_fixed.py: the adaptive arm against the best fixed table, from result files."""

from __future__ import annotations

import json

import yaml
from builders import load_benchmark

from gradus.presets import preset_path
from gradus.train.storage.run_dir import RunDir

avf = load_benchmark("adaptive_vs_fixed")


def _arm(name: str, cal: float, tok: float, band: list[float] | None = None, run_dir: str = "") -> dict:
    return {"name": name, "speedup_wallclock_calibrated": cal, "speedup_tokens": tok, "speedup_wallclock": cal * 0.9,
            "speedup_wallclock_calibrated_band": band, "speedup_tokens_band": None, "final_val_loss": 4.0, "lr": 4e-3,
            "per_seed": [{"seed": 0, "run_dir": run_dir}]}


def _result(budget: int, adaptive: tuple[float, list[float]], ramp: float, run_dir: str) -> dict:
    return {"data": "/x/wikitext-2", "settings": {"budget": budget, "model": "tiny"}, "baseline": "baseline-wsd",
            "arms": [_arm("baseline-wsd", 1.0, 1.0), _arm("seqwarm-long-wsd", 1.2, 1.1),
                     _arm("seqwarm-long-ramp-wsd", ramp, ramp),
                     _arm(avf.ADAPTIVE_ARM, adaptive[0], adaptive[0], adaptive[1], run_dir)]}


def test_points_compare_with_the_best_fixed_table_and_carry_the_decisions(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "decisions.jsonl").write_text(json.dumps(
        {"step": 9, "tokens": 4096, "kind": "batch", "verdict": "accepted", "proposal": {"tokens_per_step": 1024}}) + "\n")
    files = []
    for budget, adaptive, ramp in ((1_048_576, (2.3, [2.0, 2.6]), 2.5), (2_097_152, (1.5, [1.3, 1.7]), 1.9)):
        path = tmp_path / f"r{budget}.json"
        path.write_text(json.dumps(_result(budget, adaptive, ramp, str(run))))
        files.append(str(path))
    assert avf.main([*files, "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "adaptive_vs_fixed.json").read_text())
    first, second = out["points"]
    assert first["corpus"] == "wikitext-2" and first["budget_tokens"] == 1_048_576
    assert first["best_fixed"]["arm"] == "seqwarm-long-ramp-wsd" and first["best_fixed"]["speedup_wallclock"] == 2.5
    assert first["adaptive"]["band"] == [2.0, 2.6] and first["adaptive_at_least_best_fixed"] is True  # 2.6 >= 2.5
    assert second["adaptive_at_least_best_fixed"] is False  # 1.7 < 1.9
    assert first["decisions"][0]["decisions"][0]["proposal"] == {"tokens_per_step": 1024}
    assert out["goal"]["adaptive_at_least_best_fixed_everywhere"] is False
    assert out["goal"]["two_fold_on_wikitext_at_1M_2M"] == {1_048_576: True, 2_097_152: False} or \
        out["goal"]["two_fold_on_wikitext_at_1M_2M"] == {"1048576": True, "2097152": False}
    assert out["goal"]["budgets_missing"] == [524_288]
    assert "1 accepted decisions" in capsys.readouterr().out


def test_a_result_without_the_adaptive_arm_is_left_out_with_a_note(tmp_path):
    result = _result(524_288, (1.0, None), 1.2, "")
    result["arms"] = result["arms"][:-1]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    assert avf.main([str(path), "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "adaptive_vs_fixed.json").read_text())
    assert out["points"] == [] and "no seqwarm-long-ramp-adaptive-wsd arm" in out["notes"][0]


def test_a_run_whose_folder_is_gone_keeps_the_decisions_the_last_summary_recorded(tmp_path):
    """A work folder lives as long as its machine: summarising again after it is gone must not turn an earlier
    point's decisions into none (its result file still names the run directories)."""
    run = tmp_path / "run"
    run.mkdir()
    decision = {"step": 9, "tokens": 4096, "kind": "batch", "verdict": "rejected", "proposal": {"tokens_per_step": 1024}}
    (run / "decisions.jsonl").write_text(json.dumps(decision) + "\n")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_result(1_048_576, (2.3, [2.0, 2.6]), 2.5, str(run))))
    assert avf.main([str(path), "--out", str(tmp_path)]) == 0
    (run / "decisions.jsonl").unlink()
    run.rmdir()  # the machine is gone
    assert avf.main([str(path), "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "adaptive_vs_fixed.json").read_text())
    assert out["points"][0]["decisions"][0]["decisions"] == [decision]


def test_each_point_says_how_its_branches_were_judged(tmp_path):
    held = {"step": 9, "tokens": 4096, "kind": "batch", "verdict": "accepted",
            "comparison": {"branch_loss": 4.0, "main_loss": 4.1, "margin": 0.0, "held_out_rows": 16}}
    old = {"step": 9, "tokens": 4096, "kind": "batch", "verdict": "rejected",
           "comparison": {"branch_loss": 4.2, "main_loss": 4.1, "margin": 0.0}}
    skipped = {"step": 3, "tokens": 1024, "kind": "batch", "verdict": "skipped", "reason": "outside"}
    files = []
    for budget, records in ((524_288, [held, skipped]), (1_048_576, [old]), (2_097_152, [skipped])):
        run = tmp_path / f"run{budget}"
        run.mkdir()
        (run / "decisions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        path = tmp_path / f"r{budget}.json"
        path.write_text(json.dumps(_result(budget, (2.3, [2.0, 2.6]), 2.5, str(run))))
        files.append(str(path))
    assert avf.main([*files, "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "adaptive_vs_fixed.json").read_text())
    assert [p["verdict"] for p in out["points"]] == ["held-out", "training loss", None]


def test_each_point_says_whether_its_runs_had_the_batch_rule_and_the_goal_is_checked_per_config(tmp_path):
    """The arm's config changed on 2026-12-07 (the batch rule auto, off on one process): a point says which it
    ran, from the run's config.yaml (or, its folder gone, from batch decisions), and the goal is also checked
    over each config's points alone."""
    length = {"step": 20, "tokens": 8192, "kind": "length", "verdict": "accepted"}
    batch = {"step": 9, "tokens": 4096, "kind": "batch", "verdict": "rejected"}
    cases = ((524_288, "auto", [length], (2.6, [2.4, 2.7])), (1_048_576, True, [length], (2.0, [1.9, 2.1])),
             (2_097_152, None, [batch], (2.1, [2.0, 2.2])))
    files = []
    for budget, enabled, records, adaptive in cases:
        run = tmp_path / f"run{budget}"
        run.mkdir()
        (run / "decisions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        if enabled is not None:  # a whole valid config: the benchmark settles the rule as gradus does
            config = yaml.safe_load(preset_path("demo-adaptive").read_text(encoding="utf-8"))
            config["curriculum"]["adaptive"]["batch"]["enabled"] = enabled
            RunDir(run).config.write_text(yaml.safe_dump(config))
        path = tmp_path / f"r{budget}.json"
        path.write_text(json.dumps(_result(budget, adaptive, 2.5, str(run))))
        files.append(str(path))
    assert avf.main([*files, "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "adaptive_vs_fixed.json").read_text())
    assert [p["batch_rule"] for p in out["points"]] == ["off", "on", "on"]
    assert out["goal"]["adaptive_at_least_best_fixed_everywhere"] is False
    assert out["goal_by_batch_rule"]["off"]["adaptive_at_least_best_fixed_everywhere"] is True  # 2.7 >= 2.5
    assert out["goal_by_batch_rule"]["on"]["adaptive_at_least_best_fixed_everywhere"] is False  # 2.1, 2.2 < 2.5
