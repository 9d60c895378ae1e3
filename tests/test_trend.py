"""The speedup trend (gradus.experiments.trend) and the benchmark that reports it (benchmarks/speedup_vs_budget.py):
a known line is recovered, the uncertainty grows with scatter, the forecast says how far it reaches, and the
benchmark's summary is built from per-budget result files without training."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from builders import load_benchmark

from gradus.experiments.trend import TrendPoint, fit_trend, forecast, trend_points

REPO = Path(__file__).resolve().parents[1]


def test_a_straight_line_in_log_budget_is_recovered_exactly():
    # speedup = 3.0 - 0.25 * log2(budget / 2^18): 3.0 at 262k, 2.5 at 1M, 2.0 at 4M
    pts = [TrendPoint(2 ** e, 3.0 - 0.25 * (e - 18), (2.9 - 0.25 * (e - 18), 3.1 - 0.25 * (e - 18)))
           for e in (18, 19, 20, 21, 22)]
    t = fit_trend(pts)
    assert t.slope == pytest.approx(-0.25, abs=1e-12)
    assert t.at(2 ** 20) == pytest.approx(2.5, abs=1e-12)
    assert t.chi2_reduced == pytest.approx(0.0, abs=1e-12)
    # No scatter: the slope's error comes from the bands alone (sigma 0.1 at 5 points, x spread 1..5 doublings).
    assert t.slope_se == pytest.approx(0.1 / math.sqrt(10), rel=1e-9)


def test_scatter_beyond_the_bands_widens_the_slope_error():
    tight = [TrendPoint(2 ** e, 2.0, (1.98, 2.02)) for e in (18, 19, 20)]
    noisy = [TrendPoint(2 ** 18, 2.0, (1.98, 2.02)), TrendPoint(2 ** 19, 2.6, (2.58, 2.62)),
             TrendPoint(2 ** 20, 2.0, (1.98, 2.02))]
    assert fit_trend(noisy).chi2_reduced > 100
    assert fit_trend(noisy).slope_se > 10 * fit_trend(tight).slope_se


def test_a_point_without_a_band_gets_the_floor_and_a_never_reached_end_mirrors_the_known_one():
    assert TrendPoint(1e6, 2.0).sigma == pytest.approx(0.04)
    # A shifted curve that never reaches the target is the fragile case: it must weigh less than a full band.
    assert TrendPoint(1e6, 2.0, (None, 2.4)).sigma == pytest.approx(0.4)
    assert TrendPoint(1e6, 2.0, (None, 2.4)).sigma > TrendPoint(1e6, 2.0, (1.7, 2.4)).sigma
    assert TrendPoint(1e6, 2.0, (1.8, 2.4)).sigma == pytest.approx(0.3)


def test_few_points_whose_scatter_scaled_the_errors_get_students_t():
    """Three budgets that disagree beyond their bands: one degree of freedom, so the 95% multiplier is t = 12.7,
    not 1.96 (an interval from three points cannot be as sure as a normal one)."""
    noisy = [TrendPoint(2 ** 18, 2.0, (1.98, 2.02)), TrendPoint(2 ** 19, 2.6, (2.58, 2.62)),
             TrendPoint(2 ** 20, 2.0, (1.98, 2.02))]
    t = fit_trend(noisy)
    assert t.crit == pytest.approx(12.706)
    lo, hi = t.to_json()["slope_per_doubling_95"]
    assert hi - lo == pytest.approx(2 * 12.706 * t.slope_se)
    two = fit_trend(noisy[:2])
    assert two.crit == 1.96 and "no check of the scatter" in forecast(two, 2 ** 21).sentence


def test_a_slowdown_measured_over_seeds_is_the_least_certain_point_not_the_most():
    # 1.8, 1.7, 1.6 with bands of ±0.3, then a budget where the curriculum never reached the target (0.9×, no band
    # can be read, two seeds): as the one-seed floor (±0.018) it weighed 280× the others and the line ran through it.
    points = [{"budget_tokens": 2 ** e, "speedup_wallclock": v, "band": [v - 0.3, v + 0.3], "seeds": [0, 1]}
              for e, v in ((18, 1.8), (19, 1.7), (20, 1.6))]
    points.append({"budget_tokens": 2 ** 21, "speedup_wallclock": 0.9, "band": None, "seeds": [0, 1]})
    pts = trend_points(points, "speedup_wallclock", "band")
    assert pts[-1].band == (None, None) and pts[-1].sigma == pytest.approx(0.45)
    t = fit_trend(pts)
    assert pts[-1].sigma > pts[0].sigma
    # The line no longer runs through the slowdown (it gave 1.97 / 1.61 / 1.26 / 0.90 at the four budgets).
    assert t.at(2 ** 21) > 1.1 and t.at(2 ** 18) < 1.95
    # One seed has no band to read: the floor, and the caveat that says so (budgets_seed_note).
    one = trend_points([dict(points[-1], seeds=[0])], "speedup_wallclock", "band")
    assert one[0].band is None and one[0].sigma == pytest.approx(0.018)


def test_the_interval_does_not_jump_as_the_scatter_crosses_its_bands():
    # Three budgets whose scatter about the line is just below / just above what their bands say: nearly equal
    # data, nearly equal intervals (1.96 below and t = 12.7 above made them 6× apart).
    def fit(middle):
        return fit_trend([TrendPoint(2 ** 18, 2.0, (1.9, 2.1)), TrendPoint(2 ** 19, middle, (middle - 0.1, middle + 0.1)),
                          TrendPoint(2 ** 20, 2.0, (1.9, 2.1))])
    below, above = fit(2.0 + 0.1 * math.sqrt(1.5) * 0.999), fit(2.0 + 0.1 * math.sqrt(1.5) * 1.001)
    assert below.chi2_reduced < 1 < above.chi2_reduced
    wb, wa = (forecast(t, 2 ** 22).high - forecast(t, 2 ** 22).low for t in (below, above))
    assert wa / wb == pytest.approx(1.0, abs=0.01)


def test_a_forecast_inside_the_data_is_for_a_measurement_there_not_only_the_line():
    # Five budgets on a line with bands of ±0.3: a new budget's speedup scatters like theirs, so the interval at a
    # measured budget is at least as wide as t × a point's own sigma (the line alone gave ±0.26).
    pts = [TrendPoint(2 ** e, 2.0 + 0.01 * (e - 18) * (-1) ** e, (1.7 + 0.01 * (e - 18) * (-1) ** e,
                                                                 2.3 + 0.01 * (e - 18) * (-1) ** e))
           for e in range(18, 23)]
    t = fit_trend(pts)
    f = forecast(t, 2 ** 20)
    assert f.high - f.speedup >= t.crit * 0.3
    assert "inside the budgets measured" in f.sentence


def test_a_line_read_below_zero_says_it_does_not_hold_and_a_straddling_interval_says_both():
    falling = [TrendPoint(2 ** e, 3.0 - 0.4 * (e - 18), (2.9 - 0.4 * (e - 18), 3.1 - 0.4 * (e - 18)))
               for e in (18, 19, 20, 21)]
    f = forecast(fit_trend(falling), 2 ** 27)
    assert "the line falls below 0× here" in f.sentence and "does not hold this far" in f.sentence
    wide = fit_trend([TrendPoint(2 ** 18, 1.3, (1.0, 1.6)), TrendPoint(2 ** 19, 1.1, (0.8, 1.4)),
                      TrendPoint(2 ** 20, 1.0, (0.7, 1.3))])
    g = forecast(wide, 2 ** 21)
    assert g.speedup < 1 < g.high and "a slowdown or a gain" in g.sentence
    assert "no gain expected" not in g.sentence
    slower = fit_trend([TrendPoint(2 ** e, 1.0 - 0.05 * (e - 17), (0.99 - 0.05 * (e - 17), 1.01 - 0.05 * (e - 17)))
                        for e in range(18, 23)])
    h = forecast(slower, 2 ** 20)
    assert h.high < 1 and "no gain expected (0.85×" in h.sentence


def test_two_points_at_one_budget_are_no_trend():
    with pytest.raises(ValueError, match="two or more different budgets"):
        fit_trend([TrendPoint(1e6, 2.0), TrendPoint(1e6, 2.1)])


def test_a_forecast_beyond_the_data_says_how_far_and_widens():
    pts = [TrendPoint(2 ** e, 3.0 - 0.25 * (e - 18), (2.9 - 0.25 * (e - 18), 3.1 - 0.25 * (e - 18)))
           for e in (18, 19, 20)]
    t = fit_trend(pts)
    inside = forecast(t, 2 ** 19)
    far = forecast(t, 2 ** 24)
    assert inside.speedup == pytest.approx(2.75)
    assert "inside the budgets measured" in inside.sentence
    assert far.speedup == pytest.approx(1.5)
    assert far.doublings_beyond == pytest.approx(4.0)
    assert "4.0 doublings beyond the largest budget measured (1.05M)" in far.sentence
    assert far.high - far.speedup > 3 * (inside.high - inside.speedup)
    gone = forecast(t, 2 ** 31)
    assert gone.speedup == 0 and gone.sentence.startswith("at 2.15B tokens the trend of 3 budgets gives no gain: the "
                                                          "line falls below 0× here")


def _point_file(src: Path, budget: int, dest: Path) -> None:
    report = json.loads(src.read_text())
    report["settings"]["budget"] = budget
    dest.write_text(json.dumps(report))


def _points_of_record(out: Path, *budgets: int) -> None:
    """The 0.5M and 1M WikiText-2 point files of record as OUT/trend's points at those budgets (0.5M's file
    for 524,288, 1M's for 1,048,576): a series whose points exist, so nothing trains."""
    files = {524288: "curriculum_speedup_1024-finalists2.json", 1048576: "curriculum_speedup_1024-budget1m-finalists2.json"}
    trend_dir = out / "trend"
    trend_dir.mkdir(exist_ok=True)
    for budget in budgets:
        shutil.copy(REPO / "benchmarks" / "results" / files[budget], trend_dir / f"curriculum_speedup_wikitext-2-b{budget}.json")


def test_the_benchmark_builds_its_summary_from_result_files_without_training(tmp_path, monkeypatch):
    """Both points' files exist, so nothing trains: the summary, trend, table and plot come from them (the
    0.5M and 1M WikiText-2 files of record stand in for two budgets of one series)."""
    bench = load_benchmark("speedup_vs_budget")
    _points_of_record(tmp_path, 524288, 1048576)

    def no_training(argv):
        raise AssertionError(f"a point was trained: {argv}")

    monkeypatch.setattr(bench.curriculum_speedup, "main", no_training)
    assert bench.main(["--budgets", "524288,1048576", "--work", str(tmp_path / "work"), "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "speedup_vs_budget.json").read_text())
    p0, p1 = summary["points"]
    assert (p0["budget_tokens"], p1["budget_tokens"]) == (524288, 1048576)
    assert p0["speedup_wallclock"] == pytest.approx(2.28, abs=0.01)  # the figures of record
    assert p1["speedup_wallclock"] == pytest.approx(1.73, abs=5e-3)
    assert p0["tokens_per_param"] == pytest.approx(524288 / 1852544)
    # The annealed reading at 1M: the ramp's final loss at 0.5M (5.337) is above the 1M target (5.2469) and at
    # 1M (5.061) below it: interpolated in log budget between the two.
    assert p0["speedup_tokens_annealed"] is None and p0["annealed_kind"] == "no smaller budget run"
    assert p1["annealed_kind"] == "interpolated"
    expected = 2 ** (1 - (5.3374 - 5.2469) / (5.3374 - 5.0607))  # 1M / the interpolated budget
    assert p1["speedup_tokens_annealed"] == pytest.approx(expected, rel=0.02)
    trend = summary["trend"]["speedup_wallclock"]
    assert trend["slope"] == pytest.approx(p1["speedup_wallclock"] - p0["speedup_wallclock"], abs=1e-9)
    assert trend["chi2_reduced"] is None  # two points: no degree of freedom left
    assert summary["model_params"] == 1852544
    assert (tmp_path / "speedup_vs_budget.png").is_file()



def test_a_point_priced_by_the_windows_is_priced_again_when_the_series_asks_for_the_measured_calibration(
        tmp_path, monkeypatch):
    """``--calibration measured`` re-runs each point whose file was priced from the windows (its runs are read
    back; here the fake writes the re-priced file), whatever ``--points`` says, and reads a point already
    priced that way back untouched."""
    bench = load_benchmark("speedup_vs_budget")
    results = REPO / "benchmarks" / "results"
    trend_dir = tmp_path / "trend"
    trend_dir.mkdir()
    old = trend_dir / "curriculum_speedup_wikitext-2-b524288.json"
    shutil.copy(results / "curriculum_speedup_1024-finalists2.json", old)
    measured = json.loads((results / "curriculum_speedup_1024-budget1m-finalists2.json").read_text())
    measured["calibration"] = {**measured["calibration"], "method": "measured"}
    (trend_dir / "curriculum_speedup_wikitext-2-b1048576.json").write_text(json.dumps(measured))
    assert bench.priced_by(json.loads(old.read_text())) == "windows"
    calls = []

    def reprice(argv):
        calls.append(argv)
        report = json.loads(old.read_text())
        report["calibration"] = {**report["calibration"], "method": "measured"}
        old.write_text(json.dumps(report))
        return 0

    monkeypatch.setattr(bench.curriculum_speedup, "main", reprice)
    argv = ["--budgets", "524288,1048576", "--work", str(tmp_path / "work"), "--out", str(tmp_path), "--points", "0"]
    assert bench.main([*argv, "--calibration", "measured"]) == 0
    assert len(calls) == 1 and calls[0][calls[0].index("--budget") + 1] == "524288"
    assert calls[0][calls[0].index("--calibration") + 1] == "measured" and "--reuse" in calls[0]
    assert bench.main([*argv, "--calibration", "measured"]) == 0 and len(calls) == 1  # both measured now


def test_the_adaptive_arm_runs_in_each_finished_points_folder_on_the_grids_that_point_was_tuned_on(
        tmp_path, monkeypatch):
    """``--adaptive``: for every point whose file exists, the point's own command with the adaptive arm added,
    the fixed arms on the very grids the point was tuned on (so their runs are read back), the adaptive arm's grid
    seeded from its best at the previous budget, the result under OUT/adaptive; a point that has one is skipped."""
    bench = load_benchmark("speedup_vs_budget")
    results = REPO / "benchmarks" / "results"
    trend_dir = tmp_path / "trend"
    trend_dir.mkdir()
    first = json.loads((results / "curriculum_speedup_1024-finalists2.json").read_text())
    for name, budget in (("curriculum_speedup_1024-finalists2.json", 524288),
                         ("curriculum_speedup_1024-budget1m-finalists2.json", 1048576)):
        shutil.copy(results / name, trend_dir / f"curriculum_speedup_wikitext-2-b{budget}.json")
    calls = []

    def adaptive_point(argv):
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        report = dict(first, arms=[*first["arms"], {"name": bench.ADAPTIVE_ARM, "lr": 0.003}])
        (out / f"curriculum_speedup_{argv[argv.index('--tag') + 1]}.json").write_text(json.dumps(report))
        return 0

    monkeypatch.setattr(bench.curriculum_speedup, "main", adaptive_point)
    argv = ["--budgets", "524288,1048576", "--work", str(tmp_path / "work"), "--out", str(tmp_path), "--adaptive",
            "--arms", "baseline-wsd,seqwarm-long-ramp-wsd"]
    assert bench.main(argv) == 0
    assert len(calls) == 2
    for call, budget in zip(calls, (524288, 1048576), strict=True):
        assert call[call.index("--budget") + 1] == str(budget)
        assert call[call.index("--arms") + 1] == f"baseline-wsd,seqwarm-long-ramp-wsd,{bench.ADAPTIVE_ARM}"
        assert call[call.index("--out") + 1] == str(tmp_path / "adaptive") and "--reuse" in call
    assert "--lr-grid" not in calls[0]  # the first point's grids were the arms' defaults
    grids = dict(g.split("=") for g in (calls[1][i + 1] for i, a in enumerate(calls[1]) if a == "--lr-grid"))
    best = {a["name"]: a["lr"] for a in [first["baseline"], *first["arms"]]}
    lr = best["seqwarm-long-ramp-wsd"]
    assert grids["seqwarm-long-ramp-wsd"] == f"{lr / 2:g},{lr:g},{lr * 2:g}"  # as the point itself was tuned
    assert grids[bench.ADAPTIVE_ARM] == "0.0015,0.003,0.006"  # from its own best at the previous budget
    assert bench.main(argv) == 0 and len(calls) == 2  # both points have their adaptive file: nothing runs


def test_the_series_gives_each_point_its_own_archive_folder(tmp_path, monkeypatch):
    """``--archive DIR``: each point keeps its runs' records in DIR/<its tag>, so a point that a session's end
    cut off continues from the committed records on a new machine."""
    bench = load_benchmark("speedup_vs_budget")
    calls = []
    monkeypatch.setattr(bench.curriculum_speedup, "main", lambda argv: calls.append(argv) or 1)
    with pytest.raises(SystemExit, match="failed"):
        bench.main(["--budgets", "524288,1048576", "--work", str(tmp_path / "work"), "--out", str(tmp_path),
                    "--archive", str(tmp_path / "runs"), "--model", "tiny", "--series", "tiny"])
    argv = calls[0]
    assert argv[argv.index("--archive") + 1] == str(tmp_path / "runs" / "tiny-b524288")


def test_the_absolute_ramp_keeps_its_short_stages_at_the_anchor_budget_and_gives_the_rest_to_the_final_length():
    from gradus.experiments.speedup_arms import ARMS, Settings

    ramp, absolute = ARMS["seqwarm-long-ramp-wsd"], ARMS["seqwarm-long-ramp-abs-wsd"]
    at_anchor = Settings(final_len=1024, budget=327680, anchor_budget=327680)
    assert absolute.build(at_anchor) == ramp.build(at_anchor)
    four_times = Settings(final_len=1024, budget=4 * 327680, anchor_budget=327680)
    short = [(st["seq_len"], st["tokens"], st["tokens_per_batch"]) for st in ramp.build(at_anchor)["stages"][:-1]]
    stages = absolute.build(four_times)["stages"]
    assert [(st["seq_len"], st["tokens"], st["tokens_per_batch"]) for st in stages[:-1]] == short
    assert stages[-1]["seq_len"] == 1024 and sum(st["tokens"] for st in stages) == 4 * 327680
    # The fraction ramp's short stages grow with the budget instead.
    assert sum(st["tokens"] for st in ramp.build(four_times)["stages"][:-1]) == 4 * sum(t for _, t, _ in short)


def test_the_stage_table_ablations_move_only_the_stages_they_name():
    """Issue 29 §2's ablations of the ramp at 1M: the final length from 45% of the run (`-early`), and the
    128 stage's tokens given to the 64 stage (`no128`); every stage switch lands where it says, on whole steps."""
    from gradus.experiments.speedup_arms import ARMS, Settings

    s = Settings(final_len=1024, budget=1048576)

    def starts(name):
        stages, seen, out = ARMS[name].build(s)["stages"], 0, {}
        for st in stages:
            out[st["seq_len"]] = (round(seen / s.budget, 2), st["tokens_per_batch"])  # whole steps: ±0.5%
            seen += st["tokens"]
        assert seen == s.budget
        return out

    ramp, early, no128 = starts("seqwarm-long-ramp-wsd"), starts("seqwarm-long-ramp-early-wsd"), starts(
        "seqwarm-ramp-no128-wsd")
    assert ramp == {64: (0.0, 512), 128: (0.1, 512), 256: (0.2, 1024), 512: (0.35, 2048), 1024: (0.55, 2048)}
    assert early == {**ramp, 512: (0.3, 2048), 1024: (0.45, 2048)}
    assert no128 == {k: v for k, v in ramp.items() if k != 128}


def test_the_lead_by_stage_reads_the_series_point_files(tmp_path):
    """benchmarks/lead_by_stage.py on the tiny series' two committed points: the ramp's lead over its target
    baseline at each stage's last evaluation, the JSON and the PNG."""
    bench = load_benchmark("lead_by_stage")
    trend = REPO / "benchmarks" / "results" / "trend"
    out = tmp_path / "lead.json"
    assert bench.main([str(trend / "curriculum_speedup_tiny-b1310720.json"),
                       str(trend / "curriculum_speedup_tiny-b327680.json"), "--out", str(out)]) == 0
    small, large = json.loads(out.read_text())["points"]  # sorted by budget
    assert (small["budget_tokens"], large["budget_tokens"]) == (327680, 1310720)
    assert large["arm"] == "seqwarm-long-ramp-wsd" and large["baseline"] == "baseline-wsd-half-batch"
    assert [s["stage"] for s in large["stages"]][:4] == ["s64", "s128", "s256", "s512"]
    # Past the crossing the ramp is below anything the baseline reached: no lead is read there.
    assert large["lead"][-1]["lead"] is None and all(q["lead"] > 1 for q in large["lead"][:8])
    last = [q for q in large["lead"] if q["lead"] is not None][-1]
    assert last["lead"] == pytest.approx(large["speedup_tokens"], rel=0.05)  # it ends near the crossing's reading
    assert out.with_suffix(".png").is_file()
    assert bench.main([str(trend / "curriculum_speedup_tiny-b1310720.json"), "--baseline", "baseline-wsd",
                       "--out", str(out)]) == 0
    [full] = json.loads(out.read_text())["points"]
    assert full["baseline"] == "baseline-wsd" and full["lead"][0]["lead"] > large["lead"][0]["lead"]
    with pytest.raises(SystemExit, match="no arm 'nope'"):
        bench.main([str(trend / "curriculum_speedup_tiny-b327680.json"), "--arm", "nope", "--out", str(out)])


def test_the_annealed_speedup_reads_only_the_budgets_below():
    from gradus.experiments.trend import annealed_speedup

    finals = [(1_000_000, 4.0), (2_000_000, 3.6), (4_000_000, 3.3)]
    assert annealed_speedup(4_000_000, 3.6, finals) == (pytest.approx(2.0), "interpolated")
    assert annealed_speedup(4_000_000, 3.8, finals)[0] == pytest.approx(4_000_000 / 2 ** 0.5 / 1_000_000)
    # Reached only at the budget itself, or not at all, or below everything run: no reading.
    assert annealed_speedup(4_000_000, 3.2, finals) == (None, "not reached")
    assert annealed_speedup(2_000_000, 3.6, finals) == (None, "only at this budget")
    assert annealed_speedup(1_000_000, 4.2, finals) == (None, "no smaller budget run")
    assert annealed_speedup(4_000_000, 4.1, finals) == (pytest.approx(4.0), "at most")  # at least ×4


def test_the_benchmarks_annealed_trend_leaves_out_lower_bounds_as_gradus_compare_does():
    bench = load_benchmark("speedup_vs_budget")
    points = [{"budget_tokens": 2 ** e, "speedup_tokens_annealed": v, "annealed_lower_bound": lower, "seeds": [0, 1]}
              for e, v, lower in ((18, 2.5, True), (19, 1.6, False), (20, 1.7, False))]
    trend = bench.trend_of(points, "speedup_tokens_annealed", None)
    assert trend["points"] == 2 and trend["budget_min"] == 2 ** 19
    points[0]["annealed_lower_bound"] = False
    assert bench.trend_of(points, "speedup_tokens_annealed", None)["points"] == 3


def test_arms_at_one_budget_override_the_series_arms_there_and_the_summary_says_so(tmp_path, monkeypatch):
    """``--arms-at BUDGET=ARMS``: a budget too large for every arm runs only the named ones (the point's command
    gets them), the other budgets keep theirs, and the summary's method names the narrowing."""
    bench = load_benchmark("speedup_vs_budget")
    _points_of_record(tmp_path, 524288)
    calls = []

    def point(argv):
        calls.append(argv)
        _points_of_record(tmp_path, 1048576)
        return 0

    monkeypatch.setattr(bench.curriculum_speedup, "main", point)
    argv = ["--budgets", "524288,1048576", "--work", str(tmp_path / "work"), "--out", str(tmp_path),
            "--arms-at", "1048576=baseline-wsd,seqwarm-long-ramp-wsd"]
    assert bench.main(argv) == 0
    assert len(calls) == 1 and calls[0][calls[0].index("--arms") + 1] == "baseline-wsd,seqwarm-long-ramp-wsd"
    summary = json.loads((tmp_path / "speedup_vs_budget.json").read_text())
    assert summary["method"]["arms"].endswith("; at 1,048,576 tokens only baseline-wsd,seqwarm-long-ramp-wsd")
    with pytest.raises(SystemExit, match="--arms-at 'x': give BUDGET=ARM,ARM"):
        bench.parse_arms_at(["x"])


def test_adaptive_at_runs_the_adaptive_arm_at_the_named_budgets_only(tmp_path, monkeypatch):
    """``--adaptive --adaptive-at 1048576``: the adaptive arm joins that point alone (the one a session has time
    for); the other point is left as it is."""
    bench = load_benchmark("speedup_vs_budget")
    _points_of_record(tmp_path, 524288, 1048576)
    calls = []

    def adaptive_point(argv):
        calls.append(argv)
        return 1  # the arm's runs are not what this test is about: stop after the command is known

    monkeypatch.setattr(bench.curriculum_speedup, "main", adaptive_point)
    argv = ["--budgets", "524288,1048576", "--work", str(tmp_path / "work"), "--out", str(tmp_path), "--adaptive",
            "--adaptive-at", "1048576", "--arms", "baseline-wsd,seqwarm-long-ramp-wsd"]
    with pytest.raises(SystemExit, match="the adaptive arm at 1,048,576 tokens failed"):
        bench.main(argv)
    assert len(calls) == 1 and calls[0][calls[0].index("--budget") + 1] == "1048576"
    assert f"seqwarm-long-ramp-wsd,{bench.ADAPTIVE_ARM}" in calls[0][calls[0].index("--arms") + 1]


@pytest.mark.parametrize(("extra", "needle"), [
    (["--arms-at", "4e6=baseline-wsd"], "--arms-at 4,000,000: not among --budgets"),
    (["--adaptive", "--adaptive-at", "2097152"], "--adaptive-at 2,097,152: not among --budgets"),
    (["--adaptive-at", "1048576"], "--adaptive-at names the points of --adaptive; add --adaptive"),
])
def test_a_budget_flag_that_names_no_budget_of_the_series_is_refused(tmp_path, extra, needle):
    """A budget in --arms-at or --adaptive-at that the series does not run was ignored, while the summary's
    method still named it."""
    bench = load_benchmark("speedup_vs_budget")
    with pytest.raises(SystemExit, match=needle):
        bench.main(["--budgets", "524288,1048576", "--work", str(tmp_path / "work"), "--out", str(tmp_path), *extra])
