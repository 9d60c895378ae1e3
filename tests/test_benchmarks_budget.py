"""benchmarks/budget_to_target.py: the log-budget interpolation and the report over synthetic inputs."""

from __future__ import annotations

import json
import math

import pytest
from builders import load_benchmark

bt = load_benchmark("budget_to_target")


def test_interpolates_in_log_budget():
    b, how = bt.budget_to_target([(1000, 6.0), (4000, 5.0)], 5.5)
    assert how == "interpolated" and b == pytest.approx(2000.0)  # halfway in log(budget)
    assert bt.budget_to_target([(4000, 5.0), (1000, 4.9)], 5.5) == (1000.0, "at most")
    assert bt.budget_to_target([(1000, 6.0), (4000, 5.6)], 5.5) == (None, "not reached")
    assert bt.budget_to_target([(1000, 6.0), (2000, 5.4), (4000, 5.0)], 5.5)[0] == pytest.approx(
        math.exp(math.log(1000) + (0.5 / 0.6) * math.log(2)))


def _report(budget: int, finals: dict[str, list[float]], target: float | None = None) -> dict:
    def arm(name):
        seeds = finals[name]
        return {"name": name, "lr": 4e-3, "final_val_loss": sorted(seeds)[1], "final_val_loss_seeds": seeds,
                "speedup_tokens": 1.0}

    base = arm("baseline")
    return {"settings": {"budget": budget, "seeds": [0, 1, 2], "model": "small", "lr_find": []},
            "target": target if target is not None else base["final_val_loss"], "baseline": base,
            "arms": [arm(n) for n in finals if n != "baseline"]}


def test_report_speedups_against_the_largest_budgets_baseline(tmp_path, capsys):
    paths = []
    for budget, finals in [(1000, {"baseline": [6.0, 6.1, 6.2], "curr": [5.7, 5.8, 5.9]}),
                           (4000, {"baseline": [5.4, 5.5, 5.6], "curr": [5.1, 5.2, 5.3]})]:
        report = _report(budget, finals)
        # Calibrated seconds of each whole run: the curriculum's tokens cost half the baseline's.
        report["baseline"]["train_seconds_calibrated"] = budget * 1.0
        report["arms"][0]["train_seconds_calibrated"] = budget * 0.5
        paths.append(tmp_path / f"r{budget}.json")
        paths[-1].write_text(json.dumps(report))
    out = tmp_path / "bt.json"
    assert bt.main([str(p) for p in reversed(paths)] + ["--out", str(out)]) == 0
    rows = {a["name"]: a for a in json.loads(out.read_text())["arms"]}
    assert rows["baseline"]["speedup_budget"] == pytest.approx(1.0)
    # curr: 5.8 at 1000, 5.2 at 4000; target 5.5 is halfway -> 2000 tokens -> 2x.
    assert rows["curr"]["budget_to_target"] == pytest.approx(2000.0) and rows["curr"]["speedup_budget"] == pytest.approx(2.0)
    assert rows["curr"]["speedup_budget_seeds_reaching"] == "3/3"
    # Calibrated: 2x the tokens saved, each at half the baseline's cost per token.
    assert rows["curr"]["speedup_budget_calibrated"] == pytest.approx(4.0)
    assert rows["baseline"]["speedup_budget_calibrated"] == pytest.approx(1.0)
    out_text = capsys.readouterr().out
    assert "curr" in out_text and "4.00×" in out_text
    # The median is over the curricula only: the baseline's own 1.00x is not among them.
    assert "median speedup over the curricula that reach the target: 2.00×" in out_text


def test_reports_that_differ_in_more_than_the_budget_are_refused(tmp_path):
    a, b = _report(1000, {"baseline": [6, 6, 6]}), _report(4000, {"baseline": [5, 5, 5]})
    b["settings"]["model"] = "tiny"
    for name, r in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(r))
    with pytest.raises(SystemExit, match=r"b\.json differs from .*a\.json in model"):
        bt.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "o.json")])


def test_a_diverged_arm_and_a_missing_seed_are_reported_not_crashed_on(tmp_path, capsys):
    small = _report(1000, {"baseline": [6.0, 6.1, 6.2], "curr": [5.7, 5.8, 5.9]})
    big = _report(4000, {"baseline": [5.4, 5.5, 5.6], "curr": [5.1, 5.2, 5.3]})
    small["arms"][0]["final_val_loss"] = None  # diverged at the median
    big["arms"][0]["final_val_loss_seeds"] = [5.1, 5.2]  # the third seed has no value
    for name, r in (("s.json", small), ("b.json", big)):
        (tmp_path / name).write_text(json.dumps(r))
    out = tmp_path / "o.json"
    assert bt.main([str(tmp_path / "b.json"), str(tmp_path / "s.json"), "--out", str(out)]) == 0
    curr = {a["name"]: a for a in json.loads(out.read_text())["arms"]}["curr"]
    assert curr["budget_to_target"] == pytest.approx(4000.0) and curr["speedup_budget_seeds"][2] is None
    assert "—" in capsys.readouterr().out


def test_the_refusal_names_the_file_that_differs(tmp_path):
    # Given largest budget first: the message names both files (each with its own settings).
    a, b = _report(4000, {"baseline": [5, 5, 5]}), _report(1000, {"baseline": [6, 6, 6]})
    b["settings"]["model"] = "tiny"
    (tmp_path / "big.json").write_text(json.dumps(a))
    (tmp_path / "odd.json").write_text(json.dumps(b))
    with pytest.raises(SystemExit, match=r"big\.json differs from .*odd\.json in model"):
        bt.main([str(tmp_path / "big.json"), str(tmp_path / "odd.json"), "--out", str(tmp_path / "o.json")])
