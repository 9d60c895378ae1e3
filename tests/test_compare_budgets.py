"""``gradus compare --budgets``: the comparison at several budgets, each complete in its own folder, the trend of
the speedup and the forecast for a planned budget; bad input is one line before anything trains."""

from __future__ import annotations

import json

import pytest
import yaml
from builders import tiny_config

from gradus.cli import main
from gradus.config import from_dict
from gradus.experiments.compare_budgets import add_annealed, budgets_table, run_compare_budgets
from gradus.experiments.trend import TrendPoint, fit_trend, forecast


def test_each_budget_runs_complete_in_its_own_folder_and_the_trend_is_fitted_on_their_figures(offline_data, tmp_path):
    out = tmp_path / "cmp"
    lines: list[str] = []
    cfg = from_dict(tiny_config(offline_data))
    summary = run_compare_budgets(cfg, budgets=[2048, 4096], forecast_tokens=65536, out=out, seeds=[0], plot=True,
                                  eval_points=4, log=lines.append)
    # Each budget is a whole compare of its own, kept side by side (a bigger budget replaces nothing).
    per_budget = {b: json.loads((out / f"budget-{b}" / "compare.json").read_text()) for b in (2048, 4096)}
    assert [p["budget_requested"] for p in summary["budgets"]] == [2048, 4096]
    for p in summary["budgets"]:
        report = per_budget[p["budget_requested"]]
        # What the runs trained: the stages keep their shares in whole steps (1,920 of 2,048 here).
        assert report["budget"] == p["budget_tokens"] <= p["budget_requested"]
        assert p["speedup_wallclock"] == report["curriculum"]["speedup_wallclock_calibrated"]
        assert p["speedup_tokens"] == report["curriculum"]["speedup_tokens"]
        assert p["target"] == report["target"]
        # The curriculum's run trained this budget (in whole steps of each stage).
        run_cfg = yaml.safe_load((out / f"budget-{p['budget_requested']}" / "arms" / "curriculum" / "seed0" /
                                  "config.yaml").read_text())
        assert 0.8 * p["budget_requested"] <= run_cfg["curriculum"]["target_tokens"] <= p["budget_requested"]
    written = json.loads((out / "compare.json").read_text())
    assert written["budgets"] == summary["budgets"]
    # One seed gives no band: said before the runs, at each budget and in the file, never a band of zero width.
    assert lines[0].startswith("compare --budgets: one seed per budget: no band")
    assert "(one seed: no band)" in "\n".join(lines) and "(band " not in "\n".join(lines)
    assert "one seed per budget" in written["note"]
    usable = [TrendPoint(p["budget_tokens"], p["speedup_wallclock"], tuple(p["band"]) if p["band"] else None)
              for p in summary["budgets"] if p["speedup_wallclock"]]
    if len(usable) == 2:
        expected = fit_trend(usable)
        assert written["trend"]["slope"] == pytest.approx(expected.slope)
        assert written["forecast"]["speedup"] == pytest.approx(forecast(expected, 65536).speedup)
        assert "4.0 doublings beyond the largest budget measured" in written["forecast"]["sentence"]
        assert "\nforecast: at 65.5K tokens the trend of 2 budgets gives" in "\n".join(lines)
        assert (out / "compare.png").stat().st_size > 10_000
    else:  # the toy curriculum reached no target at one budget: said, not fitted
        assert written["trend"] is None and "no trend" in written["note"]
    # Every point carries its annealed reading (None at the smallest budget: nothing below it to read from).
    assert all("speedup_tokens_annealed" in p and "annealed_kind" in p for p in written["budgets"])
    assert written["budgets"][0]["speedup_tokens_annealed"] is None
    assert "trend_annealed" in written and "forecast_annealed" in written
    # Run again: every run is read back, nothing trains.
    again: list[str] = []
    run_compare_budgets(cfg, budgets=[2048, 4096], forecast_tokens=None, out=out, seeds=[0], plot=False,
                        eval_points=4, log=again.append)
    assert not any(": training (console:" in line for line in again)


@pytest.mark.parametrize("flags, message", [
    (["--budgets", "100k"], "--budgets 100k: give two or more budgets for a trend"),
    (["--budgets", "200k,100k"], "--budgets 200k,100k: give the budgets in strictly increasing order"),
    (["--budgets", "100k,xx"], "--budgets 100k,xx: 'xx' is not a token count"),
    (["--budgets", "100k,200k", "--forecast", "abc"], "--forecast abc: not a token count"),
    (["--forecast", "1M"], "--forecast 1M reads a trend over budgets: add --budgets"),
    (["--budget", "100k", "--budgets", "100k,200k"], "--budget 100k and --budgets 100k,200k: give one of them"),
    (["--budgets", "1k,100k"], "--budgets: at 1K tokens: arm 'baseline': --budget 1K: stage baseline"),
])
def test_bad_budgets_are_one_line_before_anything_trains(flags, message, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--preset", "demo", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def _compare_json(path, points):
    trend = fit_trend([TrendPoint(b, s, (s - 0.1, s + 0.1)) for b, s in points])
    path.write_text(json.dumps({"budgets": [{"budget_tokens": b} for b, _ in points], "trend": trend.to_json()}))
    return trend


def test_plan_prints_the_forecast_at_its_own_budget_from_a_budgets_compare(tmp_path, capsys):
    trend = _compare_json(tmp_path / "compare.json", [(250_000, 2.3), (500_000, 2.1), (1_000_000, 1.9)])
    # Timeline of a config: its own total tokens.
    assert main(["plan", "--preset", "demo", "--forecast-from", str(tmp_path / "compare.json")]) == 0
    out = capsys.readouterr().out
    from gradus.curriculum import resolve_schedule
    from gradus.presets import load_preset

    tokens = resolve_schedule(load_preset("demo")).total_tokens
    line = next(ln for ln in out.splitlines() if ln.startswith("curriculum forecast (from "))
    assert forecast(trend, tokens).sentence in line
    # The worksheet: the plan's token budget (1B parameters at 20 tokens each), far beyond the data.
    assert main(["plan", "--params", "1B", "--forecast-from", str(tmp_path / "compare.json"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["forecast"]["budget_tokens"] == pytest.approx(plan["tokens"])
    assert plan["forecast"]["speedup"] == pytest.approx(forecast(trend, plan["tokens"]).speedup)
    assert plan["forecast"]["doublings_beyond"] > 10 and "doublings beyond" in plan["forecast"]["sentence"]


@pytest.mark.parametrize("content, message", [
    (None, "cannot read it"),
    ("not json", "not JSON"),
    ('{"arms": []}', "not the result of `gradus compare --budgets`"),
    ('{"budgets": [], "trend": null}', "that comparison has no trend"),
])
def test_plan_refuses_a_file_that_is_not_a_budgets_compare(content, message, tmp_path, capsys):
    path = tmp_path / "compare.json"
    if content is not None:
        path.write_text(content)
    assert main(["plan", "--preset", "demo", "--forecast-from", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--forecast-from {path}: {message}" in err[0], err


def _point(budget, target, final, base_s, cur_s, shift=0.02):
    return {"budget_tokens": budget, "target": target, "final_val_loss": {"curriculum": final, "baseline": target},
            "train_seconds_calibrated": {"curriculum": cur_s, "baseline": base_s}, "target_shift": shift,
            "speedup_wallclock": None, "band": None, "speedup_tokens": None, "reached": True}


def test_the_annealed_reading_is_the_budget_whose_complete_curriculum_run_ends_at_the_target():
    """At 4M the baseline's 3.5 is where the curriculum ends at 2M (3.5), so ×2 in tokens; priced by whole runs
    whose calibrated seconds per token are 1.5× the curriculum's, ×3 calibrated."""
    points = [_point(1_000_000, 4.2, 3.9, 150.0, 100.0), _point(2_000_000, 3.8, 3.5, 300.0, 200.0),
              _point(4_000_000, 3.5, 3.3, 600.0, 400.0)]
    add_annealed(points)
    first, mid, last = points
    assert first["speedup_tokens_annealed"] is None and first["annealed_kind"] == "no smaller budget run"
    assert last["speedup_tokens_annealed"] == pytest.approx(2.0) and last["annealed_kind"] == "interpolated"
    assert last["speedup_wallclock_annealed"] == pytest.approx(3.0)
    # 3.8 lies a quarter of the way from 3.9 (1M) to 3.5 (2M), so at 1M × 2^0.25: ×2^0.75 at 2M.
    assert mid["speedup_tokens_annealed"] == pytest.approx(2 ** 0.75)
    # The band: the target half the baseline's seed spread higher (an easier target: sooner) and lower.
    low, high = last["band_annealed"]
    assert low < last["speedup_wallclock_annealed"] < high
    text = budgets_table(points, None, None)
    assert "annealed reading" in text and "4M tokens: ×3.00, ×2.00 tokens" in text


def test_bands_are_printed_with_two_seeds_and_one_seed_is_said_to_leave_out_seed_noise():
    two = [dict(_point(b, 4.0, 3.8, 150.0, 100.0), speedup_wallclock=s, band=[s - 0.2, s + 0.3], seeds=[0, 1])
           for b, s in ((1_000_000, 2.0), (2_000_000, 1.8))]
    trend = fit_trend([TrendPoint(p["budget_tokens"], p["speedup_wallclock"], tuple(p["band"])) for p in two])
    text = budgets_table(two, trend.to_json(), None)
    assert "1M tokens: ×2.00 (band 1.80–2.30)" in text and "one seed" not in text
    one = [dict(p, seeds=[0]) for p in two]
    text = budgets_table(one, trend.to_json(), None)
    assert "1M tokens: ×2.00 (one seed: no band)" in text
    assert "note: one seed per budget: no band, so the trend counts each speedup as exact to within 2%" in text


def test_a_smallest_budget_already_at_the_target_gives_a_lower_bound():
    points = [_point(1_000_000, 4.2, 3.4, 150.0, 100.0), _point(2_000_000, 3.8, 3.3, 300.0, 200.0)]
    add_annealed(points)
    assert points[1]["annealed_kind"] == "at most" and points[1]["speedup_tokens_annealed"] == pytest.approx(2.0)
    assert "2M tokens: at least ×3.00" in budgets_table(points, None, None)
    behind = [_point(1_000_000, 4.2, 4.4, 150.0, 100.0), _point(2_000_000, 3.8, 4.0, 300.0, 200.0)]
    add_annealed(behind)
    text = budgets_table(behind, None, None)
    assert "annealed reading: none" in text
    # No trend is said on the screen, not only in compare.json's note.
    assert "trend: none (fewer than two budgets gave a speedup" in text and "so no forecast" in text


def test_plan_prints_the_annealed_forecast_next_to_the_first_crossing_one(tmp_path, capsys):
    path = tmp_path / "compare.json"
    crossing = fit_trend([TrendPoint(b, s, (s - 0.1, s + 0.1)) for b, s in [(250_000, 2.3), (1_000_000, 1.9)]])
    annealed = fit_trend([TrendPoint(b, s, (s - 0.1, s + 0.1)) for b, s in [(500_000, 1.8), (1_000_000, 1.8)]])
    path.write_text(json.dumps({"budgets": [], "trend": crossing.to_json(), "trend_annealed": annealed.to_json()}))
    assert main(["plan", "--params", "1B", "--forecast-from", str(path), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["forecast_annealed"]["speedup"] == pytest.approx(forecast(annealed, plan["tokens"]).speedup)
    assert main(["plan", "--preset", "demo", "--forecast-from", str(path)]) == 0
    out = capsys.readouterr().out
    assert "first crossing: at" in out and "curriculum forecast, annealed runs" in out


def test_plan_carries_the_one_seed_caveat_with_each_forecast(tmp_path, capsys):
    """A forecast from budgets of one seed each says so wherever it is printed: its interval leaves out seed noise."""
    trend = fit_trend([TrendPoint(b, s) for b, s in [(250_000, 2.3), (1_000_000, 1.9)]])
    path = tmp_path / "compare.json"
    for seeds, said in (([0], True), ([0, 1], False)):
        path.write_text(json.dumps({"budgets": [{"seeds": seeds}, {"seeds": seeds}], "trend": trend.to_json()}))
        assert main(["plan", "--params", "1B", "--forecast-from", str(path), "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert ("one seed per budget: no band" in plan["forecast"]["sentence"]) is said
