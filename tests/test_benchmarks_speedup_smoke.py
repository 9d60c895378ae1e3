"""benchmarks/curriculum_speedup.py: its smoke mode runs end to end through the trainer and writes the JSON
the issue asks for; its measuring helpers (stage splits, time to target, calibrated clock) on tables."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from builders import load_benchmark

from gradus.experiments import speedup, speedup_arms

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "curriculum_speedup.py"


cs = load_benchmark("curriculum_speedup")


def _real(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def test_split_steps_is_exact_and_never_empty():
    assert speedup_arms.split_steps(256, [0.10, 0.15, 0.20, 0.55]) == [26, 38, 51, 141]
    assert sum(speedup_arms.split_steps(7, [0.1, 0.1, 0.8])) == 7
    assert min(speedup_arms.split_steps(5, [0.01, 0.01, 0.98])) >= 1


def test_to_target_interpolates_between_bracketing_evaluations():
    tokens, secs = [100, 200, 300], [10.0, 20.0, 30.0]
    assert cs.to_target(tokens, secs, [6.0, 5.0, 4.0], 4.5) == pytest.approx((250.0, 25.0))
    assert cs.to_target(tokens, secs, [4.0, 3.0, 2.0], 5.0) == (100.0, 10.0)  # first evaluation already below
    assert cs.to_target(tokens, secs, [6.0, 5.5, 5.1], 5.0) == (None, None)  # never reached
    assert cs.to_target(tokens, secs, [6.0, 5.5, 5.0], 5.0) == (300.0, 30.0)  # the baseline's own end


def test_calibrated_seconds_weigh_each_stage_by_its_shape():
    stages = [{"seq_len": 32, "tokens_per_step": 64, "start_tokens": 0, "end_tokens": 640},
              {"seq_len": 64, "tokens_per_step": 64, "start_tokens": 640, "end_tokens": 1280}]
    cost = {(32, 64): 1.0, (64, 64): 2.0}
    assert cs.calibrated_seconds(stages, cost, 320) == 320
    assert cs.calibrated_seconds(stages, cost, 1280) == 640 + 2 * 640


def test_every_arm_builds_a_valid_config(offline_data, tmp_path):
    s = speedup_arms.Settings()
    for arm in speedup_arms.ARMS.values():
        cfg = speedup.make_config(s, arm, arm.lr_grid[1], 0, offline_data / "wikitext-2", tmp_path / "tokenizer.json")
        stages = cfg.curriculum.stages
        assert stages[-1].seq_len == s.final_len
        assert sum(st.tokens for st in stages) == s.budget
        tps = [st.tokens_per_batch for st in stages]
        if speedup_arms.off_regime_batch(s, arm.regime, {"stages": [{"tokens_per_batch": t} for t in tps]}):
            # A batch ramp (or a smaller batch): never above the regime's, growing, and evaluated at the
            # constant-batch arms' token points (whole steps of every stage's batch).
            assert tps == sorted(tps) and max(tps) <= s.tps(arm.regime)
            every = cfg.train.eval_every_tokens
            # An adaptive arm evaluates four times as often (its length rule reads them), the others'
            # points among its own.
            points = s.eval_points * (4 if arm.adaptive else 1)
            assert every == s.budget // points and (s.budget // s.eval_points) % every == 0
            assert all(every % t == 0 for t in tps)
            assert all(st.tokens % s.tps(arm.regime) == 0 for st in stages)
        else:
            assert set(tps) == {s.tps(arm.regime)}  # constant tokens per step
            assert cfg.train.eval_every_tokens is None
        assert cfg.train.eval_reference_seq_len == s.final_len
        assert cfg.data.sources[0].validation_split.endswith("valid.jsonl")


def test_the_linear_baseline_decays_in_a_straight_line_to_zero(tmp_path):
    """baseline-linear, one of the target's baselines: warmup, then peak to zero in a straight line (D2Z)."""
    from gradus.curriculum import resolve_schedule
    from gradus.curriculum.state import lr_at

    s = speedup_arms.Settings()
    assert "baseline-linear" in speedup_arms.TARGET_BASELINES and speedup_arms.ARMS["baseline-linear"].baseline
    cfg = speedup.make_config(s, speedup_arms.ARMS["baseline-linear"], 4e-3, 0, tmp_path, tmp_path / "tok.json")
    schedule = resolve_schedule(cfg)
    steps = s.budget // s.tps("A")
    warm = round(s.warmup_fraction * steps)
    lrs = [lr_at(schedule, i) for i in range(steps)]
    assert max(lrs) == pytest.approx(4e-3, rel=0.02) and lrs[-1] < 4e-3 / steps * 2
    mid = (warm + steps) // 2  # halfway down the line: half the peak
    assert lrs[mid] == pytest.approx(2e-3, rel=0.05)
    decay = lrs[warm + 1:]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))


def test_a_template_joins_record_fields_and_plain_text_configs_stay_as_they_were(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Two and two?", "answer": "#### 4"}) + "\n")
    plain = speedup.data_section(speedup_arms.Settings(), qa)
    assert plain == {"sources": [{"name": "corpus", "path": str(qa)}], "validation": {"fraction": 0.05}}
    args = cs.parse_args(["--data", str(qa), "--template", "{question}\n{answer}"])
    s = cs.settings_from(args)
    assert speedup.data_section(s, qa)["sources"][0]["template"] == "{question}\n{answer}"
    cfg = speedup.make_config(s, speedup_arms.ARMS["baseline"], 1e-3, 0, qa, tmp_path / "tokenizer.json")
    assert cfg.data.sources[0].template == "{question}\n{answer}"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, offline_data) -> tuple[Path, str]:
    """One ``--smoke`` run of the script for the tests below: the baseline and the lr-find arm, each arm's LR grid
    at seed 0 and the best LR at seed 1. The folder (the JSON, the plot, the work folder) and the stdout.
    Each run is a gradus train process, ~5 s of start-up against ~1 s of training, so one invocation serves
    both tests, and its curriculum arm is seqwarm-lrfind alone: the textbook arm of --smoke's default pair
    (QUICK_ARMS) with each stage's LR scaled by lr-find, so it runs the textbook arm's stages and the lr-find
    sweep besides (every arm's config is checked in test_every_arm_builds_a_valid_config)."""
    out = tmp_path_factory.mktemp("curriculum_speedup")
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--arms", "baseline,seqwarm-lrfind", "--data",
           str(offline_data / "wikitext-2"), "--out", str(out), "--work", str(out / "work")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)  # ~25 s idle, ~60 s on a loaded box
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_smoke_mode_writes_the_required_json(smoke):
    folder, stdout = smoke
    assert "target: val loss" in stdout and "best arm:" in stdout
    report = json.loads((folder / "curriculum_speedup.json").read_text())
    assert [a["name"] for a in report["arms"]] == ["seqwarm-lrfind"]
    for key in ("baseline", "arms", "best_arm", "best_speedup_wallclock", "best_speedup_tokens", "target",
                "machine", "command", "date", "calibration"):
        assert key in report, key
    assert _real(report["target"])
    base = report["baseline"]
    assert base["final_val_loss"] == pytest.approx(report["target"])
    assert base["tokens_to_target"] == report["settings"]["budget"]  # the baseline reaches its own loss at its end
    assert base["speedup_tokens"] == pytest.approx(1.0) and base["lr_grid"] and len(base["lr_grid"]) >= 3
    assert report["arms"], "no curriculum arm"
    for arm in report["arms"]:
        for key in ("name", "tokens_to_target", "seconds_to_target", "final_val_loss", "speedup_tokens",
                    "speedup_wallclock", "speedup_wallclock_calibrated", "stages"):
            assert key in arm, key
        assert _real(arm["final_val_loss"]) and len(arm["final_val_loss_seeds"]) == 2
        for key in ("speedup_tokens", "speedup_wallclock"):
            assert _real(arm[key]) and arm[key] > 0, (key, arm[key])
        if arm["tokens_to_target"] is None:  # not reached: scored as a slowdown, by the baseline's cost
            assert arm["seconds_to_target"] is None and arm["final_val_loss"] > report["target"]
            assert arm["speedup_tokens"] < 1
        else:
            assert 0 < arm["tokens_to_target"] <= report["settings"]["budget"] and _real(arm["seconds_to_target"])
            assert arm["speedup_tokens"] == pytest.approx(report["settings"]["budget"] / arm["tokens_to_target"])
        assert len(arm["stages"]) > 1 and arm["stages"][-1]["seq_len"] == report["settings"]["final_len"]
    assert report["best_arm"] in {a["name"] for a in report["arms"]}
    assert _real(report["best_speedup_wallclock"]) and _real(report["best_speedup_tokens"])
    # The band: the best arm's speedups with its curve half the baseline's seed spread higher / lower.
    finals = base["final_val_loss_seeds"]
    assert report["target_shift"] == pytest.approx((max(finals) - min(finals)) / 2)
    best = next(a for a in report["arms"] if a["name"] == report["best_arm"])
    assert report["best_speedup_tokens_band"] == best["speedup_tokens_band"]
    if best["tokens_to_target"] is not None and report["target_shift"] > 0:
        low, high = report["best_speedup_tokens_band"]
        assert high >= best["speedup_tokens"] - 1e-9 and (low is None or low <= best["speedup_tokens"] + 1e-9)
        assert f"{best['name']} band: ×" in stdout
    pytest.importorskip("matplotlib")
    assert (folder / "curriculum_speedup.png").stat().st_size > 10_000


def test_lr_find_arm_takes_its_stage_ratios_from_gradus_lr_find(smoke):
    folder, _ = smoke
    report = json.loads((folder / "curriculum_speedup.json").read_text())
    found = dict(report["settings"]["lr_find"])
    final = report["settings"]["final_len"]
    assert sorted(found) == [final // 8, final // 4, final // 2, final]
    assert all(_real(v) and 1e-6 < v < 1 for v in found.values())  # inside the sweep
    # The sweep's report is cached beside the runs, as gradus lr-find writes it.
    cached = list((folder / "work").glob("lr_find-*.json"))
    assert len(cached) == 1 and len(json.loads(cached[0].read_text())["report"]["lengths"]) == 4
    arm = next(a for a in report["arms"] if a["name"] == "seqwarm-lrfind")
    for stage in arm["stages"]:
        assert stage["peak_lr_per_unit_base"] == pytest.approx(round(found[stage["seq_len"]] / found[final], 4))


def test_an_adaptive_arms_crossing_is_read_at_the_points_every_arm_has():
    """The adaptive arm evaluates 4x as often; a noisy curve read at more points crosses a target sooner, so its
    record keeps only the shared evaluations: here the dip at 3,000 tokens, between shared points, is not a
    crossing."""
    from gradus.experiments.analysis import RunRecord
    from gradus.experiments.tuning import Tuned

    tokens = [1000 * (i + 1) for i in range(8)]
    losses = [5.0, 4.8, 3.9, 4.6, 4.4, 4.3, 4.1, 3.95]  # every 4th: 4.6 at 4,000, 3.95 at 8,000
    run = RunRecord("a", 1e-3, 0, tokens=tokens, seconds=[float(t) / 1000 for t in tokens], val_loss=losses,
                    final_val_loss=3.95, best_val_loss=3.9, tokens_trained=8000, train_seconds=8.0)
    thinned = speedup.shared_points(run)
    assert thinned.tokens == [4000, 8000] and thinned.val_loss == [4.6, 3.95] and thinned.seconds == [4.0, 8.0]
    stages = [{"stage": "s", "seq_len": 8, "batch_size": 1, "tokens_per_step": 8, "start_tokens": 0,
               "end_tokens": 8000, "peak_lr_per_unit_base": 1.0}]
    tuned = Tuned("x", {1e-3: run}, 1e-3, [run], True)
    adaptive = speedup.summarise(tuned, speedup_arms.ARMS["seqwarm-long-ramp-adaptive-wsd"], 4.0, stages, {(8, 1): 1e-3})
    fixed = speedup.summarise(tuned, speedup_arms.ARMS["seqwarm-long-ramp-wsd"], 4.0, stages, {(8, 1): 1e-3})
    assert fixed["tokens_to_target"] == pytest.approx(2000 + 0.8 / 0.9 * 1000)  # the dip, between 4.8 and 3.9
    assert adaptive["tokens_to_target"] == pytest.approx(4000 + 0.6 / 0.65 * 4000)  # between 4.6 and 3.95
    assert adaptive["curve"]["tokens"] == [4000, 8000] and adaptive["final_val_loss"] == 3.95
