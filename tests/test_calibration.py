"""Calibrated seconds measured (gradus.experiments.calibration, issue 31): a compare's ×cal does not depend on
its runs' history (a resumed compare prices its runs as the uninterrupted one), a rerun reads the measurement
back instead of timing again, and the measured costs order the shapes as the model's work does."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import pytest
from builders import tiny_config

import gradus.train.step as step_module
from gradus.cli import main
from gradus.config import from_dict, to_dict
from gradus.errors import ConfigError
from gradus.experiments import calibration
from gradus.experiments.analysis import RunRecord, calibrate, calibrated_seconds
from gradus.experiments.calibration import (
    CACHE,
    MEASUREMENT,
    ArmShapes,
    ShapeSpec,
    busy_note,
    calibrate_arms,
    low_quantile,
    measure_step_seconds,
    time_budget,
)
from gradus.experiments.compare import compare_arms, run_compare
from gradus.experiments.sweep import prepare, tasks_for
from gradus.presets import load_preset


def _cal_figures(report: dict) -> dict:
    """Every calibrated figure of a compare report."""
    rows = {r["name"]: r for r in (report["baseline"], *report["other_baselines"], report["curriculum"])}
    return {"seconds_per_token": report["calibration"]["seconds_per_token"],
            **{f"{n}/{k}": r[k] for n, r in rows.items()
               for k in ("speedup_wallclock_calibrated", "seconds_to_target_calibrated", "train_seconds_calibrated",
                         "speedup_tokens")}}


def test_a_resumed_compare_gives_the_uninterrupted_ones_calibrated_figures_and_a_rerun_reads_them_back(
        offline_data, tmp_path, monkeypatch):
    """Two identical compares on one --out, the first with its curriculum run stopped mid-way and resumed (as
    Ctrl-C and the documented rerun leave it), the second trained from scratch: the same ×cal. With the old
    window-based estimate they differed (0.44 against 0.67 in issue 31): a resume's cold first window and the
    steps a run trains alone decided it. A third invocation reads the runs and the measurement back."""
    cfg = from_dict(tiny_config(offline_data))
    out = tmp_path / "cmp"
    lines: list[str] = []
    kwargs = dict(budget=None, seeds=[0], out=out, plot=False, eval_points=2, log=lines.append)
    # Stop the curriculum run at step 8 of 16 (a checkpoint, as an interrupted compare leaves it) ...
    base, arms = compare_arms(cfg, "auto", False, "tiny")
    [task] = tasks_for(prepare(base, arms, None, [0], "tiny", eval_points=2), out, "curriculum")
    run_dir = task.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "arm.yaml").write_text(task.config_text, encoding="utf-8")  # as the compare writes it
    assert main(["train", "--config", str(run_dir / "arm.yaml"), "--out", str(run_dir), "--stop-at-step", "8",
                 "--quiet"]) == 0
    # ... and let the compare resume it.
    resumed = run_compare(cfg, **kwargs)
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "resume" and e["step"] == 8 for e in events)
    assert resumed["calibration"]["method"] == "measured" and (out / CACHE).is_file()
    assert any(line.startswith("calibration: timing the optimizer step") for line in lines)

    # The same compare with the curriculum trained uninterrupted: the measurement is read back, not redone.
    shutil.rmtree(run_dir)
    lines.clear()
    fresh = run_compare(cfg, **kwargs)
    assert not any(e.get("event") == "resume" for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()))
    assert any(line.startswith(f"calibration: read back from {out / CACHE}") for line in lines)
    for key in ("tokens", "val_loss"):  # a CPU resume repeats the run bit for bit (its seconds differ)
        assert fresh["curriculum"]["curve"][key] == resumed["curriculum"]["curve"][key]
    assert fresh["curriculum"]["curve"]["seconds"] != resumed["curriculum"]["curve"]["seconds"]
    assert _cal_figures(fresh) == _cal_figures(resumed)
    assert fresh["curriculum"]["speedup_wallclock_calibrated"] is not None

    # A rerun reads everything back: timing a step again would fail here.
    def no_timing(*args, **kw):
        raise AssertionError("the cached measurement was not read back")

    monkeypatch.setattr(calibration, "measure_step_seconds", no_timing)
    again = run_compare(cfg, **kwargs)
    assert _cal_figures(again) == _cal_figures(fresh)
    saved = json.loads((out / "compare.json").read_text())
    assert saved["calibration"]["method"] == "measured" and _cal_figures(saved) == _cal_figures(fresh)
    # Each stage carries the seconds per token it was priced at.
    assert all(st["seconds_per_token"] > 0 for st in saved["curriculum"]["stages"])


def test_a_longer_shape_costs_at_least_as_much_per_token_at_equal_tokens_per_step(offline_data):
    """At 1,024 tokens per step, 256-token rows cost more per token than 16-token rows (attention grows with the
    length; everything else is per token): the measured ratio is ≥ 1 within 5%, on this loaded box too."""
    raw = tiny_config(offline_data)
    raw["model"]["max_seq_len"] = 256
    raw = to_dict(from_dict(raw))
    short, long = ShapeSpec(16, 1024, 64), ShapeSpec(256, 1024, 4)
    times = measure_step_seconds(raw, [short, long], threads=1, warmup=1, rounds=5)
    assert all(len(t) == 5 and min(t) > 0 for t in times.values())
    ratio = sorted(times[long])[2] / sorted(times[short])[2]
    assert ratio >= 0.95, f"cost ratio 256 / 16 at 1,024 tokens per step: {ratio:.3f}"


def test_an_unknown_calibration_method_is_refused_before_anything_trains(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:  # argparse's choices
        main(["compare", "--preset", "demo", "--calibration", "best", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--calibration: invalid choice: 'best'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--calibration best: give measured or windows"):
        run_compare(from_dict(to_dict(load_preset("demo"))), budget=None, seeds=[0], out=tmp_path, calibration="best")
    assert not (tmp_path / "arms").exists()


def test_a_measurement_taken_on_a_busy_machine_says_so_and_how_to_redo_it(offline_data, tmp_path, monkeypatch):
    """A load average above the CPU count while the steps were timed: the calibration is used, and one line
    says it was measured under load and which cache file to delete; the same on read-back. A quiet
    measurement says nothing."""
    raw = to_dict(from_dict(tiny_config(offline_data)))
    stages = [{"seq_len": 16, "tokens_per_step": 64, "start_tokens": 0, "end_tokens": 640}]
    arm = ArmShapes("a", raw, stages, [])
    monkeypatch.setattr(calibration, "measure_step_seconds",
                        lambda cfg, specs, **kw: {s: [0.1, 0.2, 0.3, 0.4, 0.5] for s in specs})
    cpus = os.cpu_count() or 1
    for load, out in ((cpus + 3.0, tmp_path / "busy"), (cpus - 0.5, tmp_path / "quiet")):
        monkeypatch.setattr(calibration, "_load", lambda load=load: load)
        for _ in range(2):  # measured, then read back
            lines: list[str] = []
            cal = calibrate_arms("measured", [arm], out=out, log=lines.append)
            assert cal.cost == {(16, 64): pytest.approx(0.14 / 64)}
            warned = [line for line in lines if "measured at load" in line]
            if load > cpus:
                assert warned == [f"calibration: measured at load {load:.1f} on {cpus} CPU(s) (other processes "
                                  f"shared the cores the measurement's 1 thread(s) ran on); delete "
                                  f"{out / CACHE} and rerun on a quieter machine for figures to rely on"]
            else:
                assert warned == []
    assert busy_note(None, 1) is None


def test_the_windows_method_is_the_old_estimate_and_leaves_the_stages_as_they_were():
    """``--calibration windows`` (the benchmark's default, for the series recorded with it) gives the figures the
    benchmark always gave: the 90th-percentile window of each shape over every run, stages not annotated."""
    runs = [RunRecord("a", 1e-3, 0, windows=[(32, 64, 100.0), (32, 64, 300.0), (64, 64, 50.0)]),
            RunRecord("b", 1e-3, 0, windows=[(64, 64, 80.0), (32, 64, 200.0)])]
    stages = {"a": [{"seq_len": 32, "tokens_per_step": 64, "start_tokens": 0, "end_tokens": 640}],
              "b": [{"seq_len": 64, "tokens_per_step": 64, "start_tokens": 0, "end_tokens": 640}]}
    cal = calibrate_arms("windows", [ArmShapes(n, {}, stages[n], [r for r in runs if r.arm == n]) for n in stages],
                         out=None)
    assert cal.cost == calibrate(runs)[0] == {(32, 64): 1 / 300.0, (64, 64): 1 / 80.0}
    cal.annotate(stages)
    assert all("seconds_per_token" not in st for sts in stages.values() for st in sts)
    assert cal.to_json() == {"method": "windows", "seconds_per_token": {"32x2": 1 / 300.0, "64x1": 1 / 80.0},
                             "windows": {"32x2": 3, "64x1": 2}, "percentile": 0.9}
    assert calibrated_seconds(stages["a"], cal.cost, 640) == pytest.approx(640 / 300.0)


def test_a_run_that_measures_the_noise_scale_every_k_steps_is_priced_at_its_mix_of_micro_batches(
        offline_data, tmp_path, monkeypatch):
    """train.noise_scale.every: 4 with micro_batches: 2 runs one step in 4 in two micro-batches and the others
    whole: a shape's calibrated cost is 1/4 of the split step's plus 3/4 of the whole one's, each timed."""
    raw = tiny_config(offline_data)
    raw["train"]["noise_scale"] = {"micro_batches": 2, "every": 4}
    raw = to_dict(from_dict(raw))
    stages = [{"seq_len": 16, "tokens_per_step": 64, "start_tokens": 0, "end_tokens": 640}]
    arm = ArmShapes("a", raw, stages, [])
    assert calibration.arm_mix(arm) == {(16, 64): [(ShapeSpec(16, 64, 2), 0.25), (ShapeSpec(16, 64, 4), 0.75)]}
    timed: list = []

    def fake(cfg, specs, **kw):
        timed.extend(specs)
        return {s: [0.2 if s.micro_batch == 2 else 0.1] for s in specs}

    monkeypatch.setattr(calibration, "measure_step_seconds", fake)
    cal = calibrate_arms("measured", [arm], out=tmp_path, log=lambda line: None)
    assert sorted(timed) == [ShapeSpec(16, 64, 2), ShapeSpec(16, 64, 4)]
    assert cal.cost == {(16, 64): pytest.approx((0.25 * 0.2 + 0.75 * 0.1) / 64)}
    # A run that logged only its unmeasured steps (log_every even, every 2) names one micro-batch: still the mix.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": n, "loss": 5.0, "curriculum/current_seq_len": 16, "curriculum/tokens_per_step": 64,
                    "curriculum/micro_batch_size": 4}) + "\n" for n in (2, 4, 6)))
    logged = ArmShapes("a", raw, stages, [RunRecord("a", 1e-3, 0, run_dir=str(run_dir))])
    assert calibration.arm_mix(logged) == calibration.arm_mix(arm)
    raw["train"]["noise_scale"]["every"] = 1  # every step measured: the split step alone
    assert calibration.arm_mix(ArmShapes("b", raw, stages, [])) == {(16, 64): [(ShapeSpec(16, 64, 2), 1.0)]}


def test_a_shape_costs_its_lower_decile_and_a_measurement_spends_five_percent_of_the_training_time():
    """The statistic is the rounds' lower decile, interpolated (a stalled round does not move it, and the
    single luckiest round alone does not decide it); the budget is 5% of the runs' training seconds, at most
    90 s."""
    assert low_quantile([5.0, 1.0, 100.0, 3.0, 2.0]) == pytest.approx(1.4)
    assert low_quantile([7.0]) == 7.0 and low_quantile([1.0, 3.0]) == pytest.approx(1.2)
    assert low_quantile([float(x) for x in range(21)]) == pytest.approx(2.0)
    assert low_quantile([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert low_quantile([1.0, 2.0, 3.0, 4.0, 1000.0]) == low_quantile([1.0, 2.0, 3.0, 4.0, 5.0])
    runs = [RunRecord("a", 1e-3, 0, train_seconds=60.0), RunRecord("b", 1e-3, 0, train_seconds=40.0)]
    assert time_budget(runs) == pytest.approx(5.0)
    assert time_budget([RunRecord("a", 1e-3, 0, train_seconds=36_000.0)]) == 90.0
    assert time_budget([]) == 0.0


def test_rounds_go_on_while_the_budget_lasts_and_a_fast_shape_runs_several_steps_back_to_back(
        offline_data, monkeypatch):
    """A shape ten times faster than the slowest runs 8 (the cap) back-to-back steps per round, timed together
    and reported per step; the rounds go past the minimum until the timed seconds reach the budget, and stop at
    max_rounds."""

    calls: dict[int, int] = {}

    def fake_step(net, model, optimizer, scaler, inputs, labels, **kw):
        calls[inputs.shape[1]] = calls.get(inputs.shape[1], 0) + 1
        time.sleep(0.02 if inputs.shape[1] == 64 else 0.002)

    monkeypatch.setattr(step_module, "optimizer_step", fake_step)
    raw = to_dict(from_dict(tiny_config(offline_data)))
    fast, slow = ShapeSpec(16, 64, 4), ShapeSpec(64, 64, 1)
    times = measure_step_seconds(raw, [fast, slow], threads=1, warmup=2, rounds=2, seconds=0.0)
    assert [len(times[fast]), len(times[slow])] == [2, 2]
    assert calls == {16: 2 + 2 * 8, 64: 2 + 2 * 1}  # warm-up steps, then 8 and 1 per round
    assert all(0.0015 < t < 0.01 for t in times[fast]) and all(0.015 < t < 0.06 for t in times[slow])
    budgeted = measure_step_seconds(raw, [fast, slow], threads=1, warmup=1, rounds=2, seconds=0.3, max_rounds=50)
    n = len(budgeted[slow])
    # each round times about 0.036 s: the budget of 0.3 s ends it after 8-9 rounds (fewer on a slow box)
    assert 4 <= n < 50 and len(budgeted[fast]) == n
    capped = measure_step_seconds(raw, [fast, slow], threads=1, warmup=1, rounds=2, seconds=100.0, max_rounds=3)
    assert len(capped[slow]) == 3
    with pytest.raises(ValueError, match="rounds"):
        measure_step_seconds(raw, [fast], threads=1, rounds=5, max_rounds=4)


def test_a_measurement_of_another_method_is_not_read_back(offline_data, tmp_path, monkeypatch):
    """The cache key names how the rounds were timed: an entry written by the first method (seven single-step rounds, the
    median) for the same shapes is measured again, not priced with."""
    raw = to_dict(from_dict(tiny_config(offline_data)))
    stages = [{"seq_len": 16, "tokens_per_step": 64, "start_tokens": 0, "end_tokens": 640}]
    arm = ArmShapes("a", raw, stages, [])
    monkeypatch.setattr(calibration, "measure_step_seconds", lambda cfg, specs, **kw: {s: [0.1] for s in specs})
    calibrate_arms("measured", [arm], out=tmp_path, log=lambda line: None)
    cache = json.loads((tmp_path / CACHE).read_text())["measurements"]
    (entry,) = cache.values()
    assert entry["key"]["measurement"] == MEASUREMENT
    old_key = {k: v for k, v in entry["key"].items() if k != "measurement"} | {"rounds": 7}
    old = {hashlib.sha256(json.dumps(old_key, sort_keys=True).encode()).hexdigest()[:16]:
           {**entry, "key": old_key, "step_seconds": {k: [9.9] for k in entry["step_seconds"]}}}
    (tmp_path / CACHE).write_text(json.dumps({"measurements": old}))
    lines: list[str] = []
    cal = calibrate_arms("measured", [arm], out=tmp_path, log=lines.append)
    assert cal.cost == {(16, 64): pytest.approx(0.1 / 64)}
    assert any(line.startswith("calibration: timing the optimizer step") for line in lines)
