"""gradus.experiments and ``gradus sweep`` / ``gradus compare``: arm construction, relative values, the
equal-parameter shapes, budgets, the crossing analysis on hand-made curves, every bad input (one line, exit 2,
before anything trains) and the resume of an interrupted sweep (real ``gradus train`` subprocesses)."""

from __future__ import annotations

import json
import math
import os

import pytest
import yaml
from builders import tiny_config

from gradus.cli import main
from gradus.config import from_dict, to_dict
from gradus.curriculum import resolve_schedule
from gradus.errors import ConfigError
from gradus.experiments.analysis import (
    RunRecord,
    add_speedups,
    at_tokens,
    band_text,
    calibrate,
    calibrated_seconds,
    compare_seeds,
    median_curve,
    record_from_metrics,
    seed_shift,
    shifted_speedups,
    steps_to,
    to_target,
    token_lead,
    verdict,
)
from gradus.experiments.arms import ablation_arms, arm_config, check_arm_count, vary_arms
from gradus.experiments.budget import compare_baseline, same_evaluation, scale_to_budget
from gradus.experiments.common import prepare, tasks_for
from gradus.experiments.runner import Runner, Task, same_config
from gradus.presets import load_preset
from gradus.sizes import ModelShape, resolve_shape
from gradus.train.cadence import evaluation_due
from gradus.train.storage.run_dir import RunLock


@pytest.fixture(scope="module")
def demo() -> dict:
    return to_dict(load_preset("demo"))


# ------------------------------------------------------------------------------------------------ arms
def test_vary_builds_every_combination_with_absolute_values(demo):
    arms = vary_arms(demo, ["optim.base_lr=1e-3,2e-3", "curriculum.stages[3].seq_len=128,256"])
    assert [a.name for a in arms] == ["base_lr=1e-3 seq_len=128", "base_lr=1e-3 seq_len=256",
                                      "base_lr=2e-3 seq_len=128", "base_lr=2e-3 seq_len=256"]
    assert arms[1].overrides == ("optim.base_lr=0.001", "curriculum.stages[3].seq_len=256")
    cfg = from_dict(arm_config(demo, arms[2], "demo"))
    assert cfg.optim.base_lr == 2e-3 and cfg.curriculum.stages[3].seq_len == 128


def test_relative_values_scale_the_configured_value_and_keep_ints_ints(demo):
    lr = vary_arms(demo, ["optim.base_lr=0.5x,1x,1.5x"])
    assert [a.overrides for a in lr] == [("optim.base_lr=0.002",), ("optim.base_lr=0.004",), ("optim.base_lr=0.006",)]
    assert [a.reference for a in lr] == [False, True, False]
    # [*] scales every stage by its own value; an int key stays an int.
    seq = vary_arms(demo, ["curriculum.stages[*].seq_len=0.5x"])[0]
    assert seq.overrides == tuple(f"curriculum.stages[{i}].seq_len={n}" for i, n in enumerate((16, 32, 64, 128)))
    # A shape field the size preset fills (tiny: d_model 64) scales too.
    assert vary_arms(demo, ["model.d_model=2x"])[0].overrides == ("model.d_model=128",)


def test_named_ablations(demo):
    lr = ablation_arms("lr", demo)
    assert [a.name for a in lr] == ["base_lr=0.5x", "base_lr=1x", "base_lr=1.5x"]
    svb = {a.name: a for a in ablation_arms("seq-vs-batch", demo)}
    assert set(svb) == {"as configured", "seq_len 0.5x", "tokens/step 0.5x", "tokens/step 2x"}  # 2x > max_seq_len
    half = from_dict(arm_config(demo, svb["seq_len 0.5x"], "demo"))
    assert [(s.seq_len, s.tokens_per_batch) for s in half.curriculum.stages] == [(16, 4096), (32, 4096), (64, 4096),
                                                                                 (128, 4096)]
    mix = {a.name: a for a in ablation_arms("mix", demo)}
    assert len(mix) == 7  # as configured + each of 3 sources up and down
    stages = resolve_schedule(from_dict(arm_config(demo, mix["code +15%"], "demo"))).stages
    assert stages[0].mix["code"] == pytest.approx(0.23, abs=1e-4)  # 0.20 × 1.15
    assert sum(stages[0].mix.values()) == pytest.approx(1.0, abs=1e-3)
    assert stages[0].mix["prose"] / stages[0].mix["math"] == pytest.approx(0.70 / 0.10, rel=1e-3)  # the rest keep ratios


def test_depth_width_shapes_have_equal_parameters_within_two_percent(demo):
    arms = ablation_arms("depth-width", demo)
    n0 = resolve_shape(from_dict(demo).model, 4096).params_non_embedding
    assert [a.name for a in arms] == ["4x64", "8x48", "2x96"]
    for arm in arms[1:]:
        cfg = from_dict(arm_config(demo, arm, "demo"))
        shape = resolve_shape(cfg.model, 4096)
        assert isinstance(shape, ModelShape)
        off = shape.params_non_embedding / n0 - 1
        assert abs(off) <= 0.02
        assert f"({off:+.1%})" in arm.note  # the table says how far off each is
    assert resolve_shape(from_dict(arm_config(demo, arms[1], "demo")).model, 4096).n_layers == 8


# ------------------------------------------------------------------------------------------- budgets
def test_budget_keeps_stage_shares_in_whole_steps_and_the_baseline_is_one_final_stage(demo):
    raw = scale_to_budget(demo, 200_000)
    stages = raw["curriculum"]["stages"]
    assert [s["tokens"] // 4096 for s in stages] == [5, 7, 10, 27]  # 10/15/20/55% of 48.8 steps
    assert raw["curriculum"]["target_tokens"] == 49 * 4096
    ev = same_evaluation(raw, 256)
    assert ev["train"]["eval_every"] == 3 and ev["train"]["eval_reference_seq_len"] == 256
    assert ev["train"]["eval_every_tokens"] == 3 * 4096  # the same points, in tokens
    assert ev["train"]["save_best"] is False  # arms are read from their metrics; periodic checkpoints stay
    base = compare_baseline(raw)
    [st] = base["curriculum"]["stages"]
    assert (st["seq_len"], st["tokens_per_batch"], st["tokens"]) == (256, 4096, 49 * 4096)
    # The token-weighted mix of the curriculum: prose 0.7·5 + 0.6·7 + 0.5·10 + 0.4·27 over 49 steps.
    assert st["mix"]["prose"] == pytest.approx((0.7 * 5 + 0.6 * 7 + 0.5 * 10 + 0.4 * 27) / 49, abs=1e-4)


def test_a_curriculum_and_its_baseline_train_the_same_tokens_at_any_budget():
    """Each stage's rounding is carried into the next: at 150k, demo-ramp's stages rounded one by one gave 36
    steps of 4,096 tokens against its baseline's 37 (147,456 against 151,552 tokens)."""
    raw = to_dict(load_preset("demo-ramp"))
    # 153,600 and 157,696 are 37.5 and 38.5 steps: Python's round (half to even) rounded the curriculum's last
    # stage and the baseline's one stage to different step counts there.
    for budget in (100_000, 150_000, 153_600, 157_696, 400_000, 1_000_000):
        cur = scale_to_budget(raw, budget)
        base = scale_to_budget(compare_baseline(raw), budget)
        total = cur["curriculum"]["target_tokens"]
        assert total == base["curriculum"]["target_tokens"] == math.floor(budget / 4096 + 0.5) * 4096
        ends, share = 0, 0.0
        for st, frac in zip(cur["curriculum"]["stages"], [0.10, 0.10, 0.15, 0.20, 0.45], strict=True):
            ends, share = ends + st["tokens"], share + frac
            assert st["tokens"] % 4096 == 0  # switches on the baseline's steps
            assert abs(ends - budget * share) <= 2048 + 1e-6  # every switch within half a step of its share


def test_a_batch_ramp_is_evaluated_at_its_baselines_token_counts():
    """ramp-1024 at a compare budget: its own 52M-token cadence gives way to the shared one, and its
    evaluation points (a batch ramp: more, smaller steps early) are the baseline's in tokens."""
    raw = scale_to_budget(to_dict(load_preset("ramp-1024")), 4_000_000)
    points = {}
    for name, cfg in (("ramp", raw), ("baseline", compare_baseline(raw))):
        ev = same_evaluation(cfg, 1024)
        cur, train = resolve_schedule(from_dict(ev)), from_dict(ev).train
        step = tokens = 0
        points[name] = []
        for stage in cur.stages:
            for _ in range(stage.steps):
                step, tokens = step + 1, tokens + stage.tokens_per_step
                if evaluation_due(train, step, tokens, stage.tokens_per_step):
                    points[name].append(tokens)
    assert points["ramp"] == points["baseline"] == [524_288 * k for k in range(1, 9)]


# ------------------------------------------------------------------------------------------- analysis
def _run(arm: str, seed: int, losses: list[float], tokens_per_eval: int = 100, secs: float = 1.0) -> RunRecord:
    n = len(losses)
    return RunRecord(arm, 1e-3, seed, tokens=[tokens_per_eval * (i + 1) for i in range(n)],
                     seconds=[secs * (i + 1) for i in range(n)], val_loss=list(losses), final_val_loss=losses[-1],
                     tokens_trained=tokens_per_eval * n, train_seconds=secs * n)


def test_crossing_is_interpolated_between_the_bracketing_evaluations():
    tokens, secs = [100, 200, 300], [10.0, 20.0, 30.0]
    assert to_target(tokens, secs, [6.0, 5.0, 4.0], 4.5) == pytest.approx((250.0, 25.0))
    assert to_target(tokens, secs, [4.0, 3.0, 2.0], 5.0) == (100.0, 10.0)  # already below at the first evaluation
    assert to_target(tokens, secs, [6.0, 5.5, 5.1], 5.0) == (None, None)
    assert to_target(tokens, secs, [6.0, math.inf, 4.0], 5.0) == (300.0, 30.0)  # no bracket across a diverged point


def test_speedups_and_verdict_on_hand_made_curves():
    stages_b = [{"seq_len": 64, "tokens_per_step": 10, "start_tokens": 0, "end_tokens": 400}]
    stages_c = [{"seq_len": 16, "tokens_per_step": 10, "start_tokens": 0, "end_tokens": 200},
                {"seq_len": 64, "tokens_per_step": 10, "start_tokens": 200, "end_tokens": 400}]
    base = [_run("baseline", 0, [6.0, 5.0, 4.5, 4.0]), _run("baseline", 1, [6.0, 5.0, 4.6, 4.2])]
    # Seed 0 reaches 4.0 halfway between 200 and 300 tokens; seed 1 reaches 4.2 at 200 exactly.
    cur = [_run("curriculum", 0, [5.5, 4.5, 3.5, 3.4], secs=0.5), _run("curriculum", 1, [5.5, 4.2, 4.0, 3.9], secs=0.5)]
    cost = {(16, 10): 0.25, (64, 10): 1.0}
    assert calibrated_seconds(stages_c, cost, 300) == pytest.approx(200 * 0.25 + 100 * 1.0)
    seeds = compare_seeds(base, cur, stages_b, stages_c, cost)
    assert [s.tokens_fraction for s in seeds] == pytest.approx([250 / 400, 200 / 400])
    assert seeds[0].speedup_calibrated == pytest.approx(400 / (200 * 0.25 + 50))
    assert verdict(seeds) == ("the curriculum reached the baseline's final loss after 56% of the tokens in 2 of 2 "
                              "seed(s) (1.80x fewer tokens, 6.00x less calibrated training time, median)")
    # Median curves, then the speedup record against the baseline's record.
    def record(runs, stages):
        t, s, v = median_curve(runs)
        return {"curve": {"tokens": t, "seconds": s, "val_loss": v}, "stages": stages,
                "train_seconds_calibrated": calibrated_seconds(stages, cost, 400)}
    rb, rc = record(base, stages_b), record(cur, stages_c)
    add_speedups(rc, rb, cost)
    # Median baseline final 4.1; the curriculum's median curve (5.5, 4.35, 3.75, 3.65) crosses it at 200 + 100·0.25/0.6.
    crossing = 200 + 100 * (4.35 - 4.1) / (4.35 - 3.75)
    assert rc["speedup_tokens"] == pytest.approx(400 / crossing)
    assert rc["speedup_wallclock"] == pytest.approx(4.0 / (crossing / 100 * 0.5))
    missed = compare_seeds(base, [_run("curriculum", 0, [6, 5, 4.6, 4.3]), _run("curriculum", 1, [6, 5, 4.7, 4.5])],
                           stages_b, stages_c, cost)
    assert verdict(missed) == ("the curriculum did not reach the baseline's final loss in any of 2 seed(s); it ended "
                               "0.300 above it (median over seeds)")


def test_steps_axis_counts_each_stage_at_its_own_tokens_per_step():
    """steps_to integrates tokens / tokens per step over the stages (past the last at its rate), and
    add_speedups reports the reference's steps to its final loss / the arm's steps to it: a curriculum whose
    small early batches take more steps gains less in steps than in tokens."""
    stages_b = [{"seq_len": 64, "tokens_per_step": 20, "start_tokens": 0, "end_tokens": 400}]
    stages_c = [{"seq_len": 16, "tokens_per_step": 5, "start_tokens": 0, "end_tokens": 100},
                {"seq_len": 64, "tokens_per_step": 20, "start_tokens": 100, "end_tokens": 400}]
    assert steps_to(stages_c, 50) == pytest.approx(10)
    assert steps_to(stages_c, 300) == pytest.approx(20 + 10)
    assert steps_to(stages_c, 500) == pytest.approx(20 + 15 + 5)
    cost = {(16, 5): 1.0, (64, 20): 1.0}
    tokens = [100, 200, 300, 400]
    base = {"curve": {"tokens": tokens, "seconds": [1.0, 2.0, 3.0, 4.0], "val_loss": [6.0, 5.0, 4.5, 4.0]},
            "stages": stages_b}
    cur = {"curve": {"tokens": tokens, "seconds": [1.0, 2.0, 3.0, 4.0], "val_loss": [5.0, 4.0, 3.5, 3.4]},
           "stages": stages_c}
    add_speedups(cur, base, cost)
    assert cur["speedup_tokens"] == pytest.approx(400 / 200)
    assert cur["speedup_steps"] == pytest.approx((400 / 20) / (20 + 5))  # 20 steps against 25: 0.8x
    never = {"curve": {"tokens": tokens, "seconds": [1.0, 2.0, 3.0, 4.0], "val_loss": [6.5, 6.0, 5.5, 5.0]},
             "stages": stages_c, "train_seconds_calibrated": 400.0}
    add_speedups(never, base, cost)  # ends at 5.0, which the reference reached at 200 tokens = 10 of its steps
    assert never["speedup_steps"] == pytest.approx(10 / 35)


def test_the_token_lead_reads_the_reference_tokens_to_each_loss_of_the_curve():
    reference = {"tokens": [100, 200, 300, 400], "seconds": [1, 2, 3, 4], "val_loss": [5.0, 4.0, 3.0, 2.5]}
    curve = {"tokens": [100, 200, 300], "seconds": [1, 2, 3], "val_loss": [4.0, 3.5, 2.0]}
    lead = token_lead(curve, reference)
    # 4.0: the reference is there at 200 tokens (2x); 3.5: halfway from 200 to 300 (250 / 200); 2.0: never.
    assert lead == [(100, 2.0), (200, pytest.approx(1.25)), (300, None)]
    behind = token_lead({"tokens": [200], "seconds": [2], "val_loss": [5.0]}, reference)
    assert behind == [(200, 0.5)]  # the reference was at this loss after half the tokens
    assert token_lead({"tokens": [100], "seconds": [1], "val_loss": [None]}, reference) == [(100, None)]


def test_the_band_is_narrow_for_a_steep_crossing_and_wide_where_the_curve_runs_flat_at_the_target():
    """shifted_speedups: the speedup if the arm's curve sat the baseline's half seed spread higher / lower. Two
    curves cross the target 4.0 at the same point (250 tokens); the steep one moves little under a shift of
    0.05, the one flat at the target's level moves by most of a stage."""
    stages = [{"seq_len": 64, "tokens_per_step": 10, "start_tokens": 0, "end_tokens": 800}]
    cost = {(64, 10): 1.0}
    tokens = [100 * (i + 1) for i in range(8)]

    def record(losses):
        return {"curve": {"tokens": tokens, "seconds": [t / 100 for t in tokens], "val_loss": losses},
                "stages": stages}

    base = record([6.0, 5.6, 5.2, 4.9, 4.6, 4.4, 4.2, 4.0])
    assert seed_shift([4.05, 3.95, None, math.inf]) == pytest.approx(0.05)
    assert seed_shift([4.0]) == 0.0
    steep = shifted_speedups(record([6.0, 5.0, 3.0, 2.5, 2.4, 2.3, 2.2, 2.1]), base, cost, 0.05)
    flat = shifted_speedups(record([6.0, 4.2, 3.98, 3.97, 3.96, 3.95, 3.9, 3.8]), base, cost, 0.05)
    # Steep: 4.0 ± 0.05 is crossed at 200 + 100·(1 ∓ 0.05)/2, i.e. 247.5 and 252.5 tokens.
    assert steep["speedup_tokens_band"] == pytest.approx([800 / 252.5, 800 / 247.5])
    assert steep["speedup_wallclock_calibrated_band"] == pytest.approx([800 / 252.5, 800 / 247.5])
    # Flat: 3.95 is first reached at 600 tokens, 4.05 at 200 + 100·0.15/0.22: a band from 1.33 to 2.98.
    assert flat["speedup_tokens_band"] == pytest.approx([800 / 600, 800 / (200 + 100 * 0.15 / 0.22)])
    assert flat["target_shift"] == 0.05
    assert band_text({**flat, "speedup_wallclock_calibrated_band": None}) == (
        "×1.33–2.98 tokens if its curve sat 0.050 higher / lower")
    # Never reached at the lower end; and no band at all for an arm that never reaches the target itself.
    low = shifted_speedups(record([6.0, 5.0, 4.2, 4.1, 4.0, 3.99, 3.98, 3.97]), base, cost, 0.05)
    assert low["speedup_tokens_band"][0] is None and "not reached–" in band_text(low)
    missed = shifted_speedups(record([6.0, 5.0, 4.5, 4.4, 4.3, 4.2, 4.1, 4.05]), base, cost, 0.05)
    assert missed["speedup_tokens_band"] is None and band_text(missed) is None


def test_metrics_records_become_a_curve_and_calibration_windows():
    records = [
        {"step": 1, "tokens": 10, "tokens_per_sec": 50.0, "time/train_seconds": 0.2, "curriculum/stage": 0,
         "curriculum/current_seq_len": 16, "curriculum/tokens_per_step": 10},
        {"step": 2, "tokens": 20, "tokens_per_sec": 100.0, "time/train_seconds": 0.3, "curriculum/stage": 0,
         "curriculum/current_seq_len": 16, "curriculum/tokens_per_step": 10},
        {"step": 2, "tokens": 20, "val/loss": 5.0, "time/train_seconds": 0.3},
        {"step": 4, "tokens": 40, "val/loss": 4.0, "time/train_seconds": 0.6},
        {"step": 4, "tokens": 40, "val/loss": 3.9, "time/train_seconds": 0.7},  # after a resume: the later wins
    ]
    run = record_from_metrics(RunRecord("a", 1e-3, 0), records, budget=40)
    assert run.tokens == [20, 40] and run.val_loss == [5.0, 3.9] and run.final_val_loss == 3.9
    assert run.windows == [(16, 10, 100.0)] and run.diverged is None
    cost, count = calibrate([run])
    assert cost == {(16, 10): 0.01} and count == {(16, 10): 1}
    short = record_from_metrics(RunRecord("a", 1e-3, 0), records, budget=80)
    assert short.final_val_loss == math.inf and short.diverged == "stopped before the end of the budget"


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("argv, message", [
    (["--vary", "optim.base_lrr=1e-3,2e-3"], "--vary optim.base_lrr: unknown key 'base_lrr' in optim; did you mean "
                                             "'optim.base_lr'?"),
    (["--vary", "optim.base_lr=-1,1e-3"], "arm 'base_lr=-1': preset demo: optim.base_lr=-1: must be greater than 0"),
    (["--vary", "model.preset=0.5x,1x"], "--vary model.preset=0.5x: a relative value needs a numeric key, but "
                                         "model.preset is 'tiny', not a number; give absolute values instead"),
    (["--ablation", "lr", "--budget", "20k"], "arm 'base_lr=0.5x': --budget 20K: stage s32 (10% of the tokens) "
                                              "would get less than one step of 4,096 tokens"),
    (["--vary", "optim.base_lr=1x"], "1 arm(s) to run; a sweep compares two or more"),
    (["--vary", "curriculum.stages[7].seq_len=32,64"], "index [7] is out of range; curriculum.stages has 4 items"),
    (["--ablation", "depth"], "--ablation depth: unknown ablation; did you mean 'depth-width'?"),
    (["--ablation", "lr", "--seeds", "0,x"], "--seeds 0,x: expected comma-separated integers"),
])
def test_bad_sweep_input_is_one_line_and_exit_2_before_training(argv, message, capsys, tmp_path):
    assert main(["sweep", "--preset", "demo", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradus: error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_compare_refuses_a_one_stage_config_and_a_missing_baseline(capsys, tmp_path):
    assert main(["compare", "--preset", "demo", "--set", "curriculum.stages=[{seq_len: 64, tokens_per_batch: 4096, "
                 "tokens: 40960}]", "--set", "curriculum.target_tokens=null", "--out", str(tmp_path)]) == 2
    assert "the curriculum has one stage" in capsys.readouterr().err
    assert main(["compare", "--preset", "demo", "--baseline", str(tmp_path / "nope.yaml")]) == 2
    assert "--baseline" in capsys.readouterr().err
    assert main(["compare", "--preset", "demo", "--finalists", "2", "--out", str(tmp_path)]) == 2
    assert "--finalists 2 chooses among tuned LRs: add --tune-lr" in capsys.readouterr().err
    assert main(["compare", "--preset", "demo", "--tune-lr", "--finalists", "0", "--out", str(tmp_path)]) == 2
    assert "--finalists 0: give 1 or more LRs to run at every seed" in capsys.readouterr().err
    # --half-batch-baseline reaches the command: a final stage of one 256-token sequence cannot be halved.
    stages = "[{seq_len: 64, tokens_per_batch: 4096, tokens: 40960}, {seq_len: 256, batch_size: 1, tokens: 40960}]"
    assert main(["compare", "--preset", "demo", "--half-batch-baseline", "--set", f"curriculum.stages={stages}",
                 "--set", "curriculum.target_tokens=null", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--half-batch-baseline: the baseline's stage at 256 takes 256 tokens per step" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "arms").exists()



def test_compare_with_a_half_batch_baseline_measures_against_the_lower_baseline(offline_data, tmp_path):
    """End to end on the tiny curriculum: the curriculum, the baseline and the baseline at half its tokens per
    step train; the target is the lower baseline median, every speedup is against that baseline, and the
    report, table and plot name all three."""
    from gradus.experiments.compare import run_compare

    lines: list[str] = []
    report = run_compare(from_dict(tiny_config(offline_data)), budget=None, seeds=[0], out=tmp_path / "cmp",
                         half_batch_baseline=True, plot=True, eval_points=4, log=lines.append)
    rows = {r["name"]: r for r in (report["baseline"], *report["other_baselines"], report["curriculum"])}
    assert set(rows) == {"baseline", "baseline-half-batch", "curriculum"}
    finals = {n: rows[n]["final_val_loss"] for n in ("baseline", "baseline-half-batch")}
    chosen = min(finals, key=finals.get)
    assert report["baseline"]["name"] == chosen and report["target"] == finals[chosen]
    assert chosen in report["target_from"] and "the lower of 2 baselines" in report["target_from"]
    assert report["baseline"]["speedup_tokens"] == pytest.approx(1.0)
    half = json.loads((tmp_path / "cmp" / "compare.json").read_text())["other_baselines"]
    assert len(half) == 1 and half[0]["name"] != chosen
    # Both baselines trained on the whole budget, the half-batch one in twice the steps.
    cfgs = {n: yaml.safe_load(next((tmp_path / "cmp" / "arms").glob(f"{n}/seed0/config.yaml")).read_text())
            for n in ("baseline", "baseline-half-batch")}
    [full], [halved] = cfgs["baseline"]["curriculum"]["stages"], cfgs["baseline-half-batch"]["curriculum"]["stages"]
    assert (full["tokens_per_batch"], halved["tokens_per_batch"]) == (256, 128) and full["tokens"] == halved["tokens"]
    table = "\n".join(lines)
    assert "baseline-half-batch" in table and f"({report['target_from']})" in table
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000


def test_a_tuned_compare_over_several_seeds_runs_two_finalists_unless_told_otherwise():
    import argparse

    from gradus.commands import compare as cmd

    def n(*argv: str, seeds=(0, 1, 2)) -> int:
        parser = argparse.ArgumentParser()
        cmd.add_arguments(parser)
        return cmd.finalists(parser.parse_args(["cfg.yaml", *argv]), list(seeds))

    assert n("--tune-lr") == cmd.DEFAULT_FINALISTS == 2
    assert n("--tune-lr", seeds=(0,)) == 1  # one seed: nothing to choose among
    assert n() == 1  # untuned: the configured LR alone
    assert n("--tune-lr", "--finalists", "1") == 1 and n("--tune-lr", "--finalists", "3") == 3


def test_a_tuned_compare_runs_its_finalists_at_every_seed_and_picks_the_lower_median(offline_data, tmp_path,
                                                                                    monkeypatch):
    """``--tune-lr --finalists 2`` end to end on the tiny curriculum: each arm's grid at seed 0, its two best
    LRs at seed 1, the chosen LR the one with the lower median, and the table and JSON name both finalists."""
    import gradus.experiments.compare as compare_module

    monkeypatch.setattr(compare_module, "MAX_EXTENSIONS", 0)  # the grid alone: 3 + 2 runs per arm
    lines: list[str] = []
    report = compare_module.run_compare(from_dict(tiny_config(offline_data)), budget=None, seeds=[0, 1],
                                        out=tmp_path / "cmp", tune_lr=True, finalists=2, plot=False,
                                        eval_points=4, log=lines.append)
    for rec in (report["baseline"], report["curriculum"]):
        grid, finalists = rec["lr_grid"], rec["lr_finalists"]
        assert len(grid) == 3 and len(finalists) == 2
        two_best = sorted(grid, key=grid.get)[:2]
        assert sorted(finalists) == sorted(two_best)
        assert all(losses[0] == grid[lr] for lr, losses in finalists.items())  # seed 0's run is the grid's
        medians = {lr: sum(losses) / 2 for lr, losses in finalists.items()}
        assert f"{rec['lr']:g}" == min(medians, key=medians.get)
        assert rec["final_val_loss_seeds"] == finalists[f"{rec['lr']:g}"]
    # The band's shift is half the chosen baseline's seed spread; the curriculum has a band where it crossed.
    cur = report["curriculum"]
    assert cur["target_shift"] == pytest.approx(seed_shift(report["baseline"]["final_val_loss_seeds"]))
    assert (cur["speedup_tokens_band"] is None) == (cur["tokens_to_target"] is None)
    assert (f"the curriculum's {band_text(cur)}" in "\n".join(lines)) == (band_text(cur) is not None)
    seed1 = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "cmp" / "arms").glob("*/seed1-lr*"))
    assert len(seed1) == 4, seed1  # two LRs per arm at seed 1; the third LR stays at seed 0
    assert sum("finalists, final loss per seed" in line for line in "\n".join(lines).splitlines()) == 2


def test_a_half_batch_below_one_sequence_is_refused_in_one_line(offline_data):
    from gradus.experiments.compare import baseline_arm, half_batch_arm

    raw = tiny_config(offline_data)
    raw["curriculum"]["stages"][-1]["tokens_per_batch"] = 64  # one sequence of 64
    with pytest.raises(ConfigError, match=r"half-batch-baseline: the baseline's stage at 64 takes 64 tokens per step"):
        half_batch_arm(baseline_arm(to_dict(from_dict(raw)), "auto", "tiny"))

def test_check_arm_count_refuses_repeated_arms(demo):
    with pytest.raises(ConfigError, match="given twice"):
        check_arm_count(vary_arms(demo, ["optim.base_lr=1e-3,1e-3"]))


def _two_lr_tasks(offline_data, out):
    """The tiny config's two LR arms (1x, 2x) at seed 0, their run directories under ``out``."""
    raw = to_dict(from_dict(tiny_config(offline_data)))
    arms = vary_arms(raw, ["optim.base_lr=1x,2x"])
    prepared = prepare(raw, arms, None, [0], "tiny", eval_points=2)
    return [t for a in arms for t in tasks_for(prepared, out, a.name)]


def test_a_second_invocation_on_a_busy_folder_stops_before_touching_its_runs(offline_data, tmp_path):
    # Two `gradus compare` (or benchmark) invocations on one folder: the second used to start runs beside the
    # first's, or delete them when its config differed (Runner._start starts afresh on a changed arm.yaml).
    tasks = _two_lr_tasks(offline_data, tmp_path)
    busy = tasks[0].run_dir
    busy.mkdir(parents=True)
    (busy / "arm.yaml").write_text("an older config of a run still training\n", encoding="utf-8")
    (busy / "metrics.jsonl").write_text("{}\n", encoding="utf-8")
    held = RunLock(tmp_path)  # the first invocation
    try:
        with pytest.raises(ConfigError, match=rf"{tmp_path} is in use by process {os.getpid()}.*--work"):
            Runner(jobs=1, folder=tmp_path, folder_flag="--work").run(tasks)
    finally:
        held.release()
    assert (busy / "arm.yaml").read_text(encoding="utf-8").startswith("an older config")
    assert (busy / "metrics.jsonl").is_file() and not tasks[1].run_dir.exists()


# --------------------------------------------------------------------------------------------- resume
def test_an_interrupted_sweep_resumes_and_reads_finished_arms_back(offline_data, tmp_path):
    tasks = _two_lr_tasks(offline_data, tmp_path)

    def stop_after_first(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Runner(jobs=1, folder=tmp_path).run(tasks, on_done=stop_after_first)
    first_dir = tasks[0].run_dir
    assert (first_dir / "result.json").is_file() and not (tasks[1].run_dir / "result.json").exists()
    stamp = (first_dir / "metrics.jsonl").stat().st_mtime_ns
    records = Runner(jobs=1, folder=tmp_path).run(tasks)  # the interrupted invocation let go of the folder
    assert [(r.arm, r.reused) for r in records] == [("base_lr=1x", True), ("base_lr=2x", False)]
    assert (first_dir / "metrics.jsonl").stat().st_mtime_ns == stamp  # not trained again
    for r in records:
        # Every 8 steps (two evaluations over 16 steps), plus each stage's end (steps 6, 11, 16).
        assert r.tokens == [6 * 256, 8 * 256, 11 * 256, 16 * 256] and math.isfinite(r.final_val_loss)
    saved = json.loads((first_dir / "result.json").read_text())
    assert saved["record"]["final_val_loss"] == records[0].final_val_loss
    assert records[0].final_val_loss != records[1].final_val_loss  # the LR did change the run


def test_a_run_stopped_by_a_signal_is_resumed_by_the_next_invocation_not_read_back_as_finished(
        offline_data, tmp_path, monkeypatch):
    """Ctrl-C reaches every process of the terminal's group: a run may stop (checkpoint saved, exit 0) before
    the experiment sees the signal. It used to be recorded as finished with no final loss, and every rerun
    read it back so instead of resuming it. Now the experiment stops as on Ctrl-C, and the rerun resumes the
    run to the end, ending where an uninterrupted run ends."""
    from gradus.train import faults

    tasks = _two_lr_tasks(offline_data, tmp_path / "stopped")
    monkeypatch.setenv(faults.ENV, "sigint@6")
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        Runner(jobs=1, folder=tmp_path / "stopped", log=lines.append).run(tasks)
    first = tasks[0].run_dir
    assert not (first / "result.json").exists()
    assert json.loads((first / "status.json").read_text())["status"] == "stopped"
    assert any("stopped before the end of its budget (checkpoint saved); rerun the same command to resume" in line
               for line in lines)
    monkeypatch.delenv(faults.ENV)
    lines.clear()
    resumed = Runner(jobs=1, folder=tmp_path / "stopped", log=lines.append).run(tasks)
    assert any(line.startswith(f"  {tasks[0].arm} lr {tasks[0].lr:g} seed 0: continuing from its last checkpoint")
               for line in lines), lines  # not announced as "training", as if from scratch
    events = [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "resume" for e in events)
    assert not resumed[0].reused and math.isfinite(resumed[0].final_val_loss)
    plain = Runner(jobs=1, folder=tmp_path / "plain").run(_two_lr_tasks(offline_data, tmp_path / "plain")[:1])
    assert resumed[0].final_val_loss == plain[0].final_val_loss


def test_sweep_report_picks_the_lowest_final_loss_and_measures_to_the_worst_arms_final(demo):
    from gradus.experiments.sweep import sweep_report, sweep_table

    prepared = prepare(demo, ablation_arms("lr", demo), 200_000, [0], "demo")
    curves = {"base_lr=0.5x": [7.5, 7.2, 7.0], "base_lr=1x": [7.4, 7.0, 6.8], "base_lr=1.5x": [7.3, 7.1, 6.9]}
    records = [_run(name, 0, losses, tokens_per_eval=49 * 4096 // 3) for name, losses in curves.items()]
    report = sweep_report(prepared, records, target=None)
    assert report["winner"] == "base_lr=1x" and report["target"] == 7.0  # the highest final loss
    arms = {a["name"]: a for a in report["arms"]}
    third = 49 * 4096 // 3
    assert arms["base_lr=1x"]["tokens_to_target"] == 2 * third
    # 1.5x: 7.1 at 2/3 of the run, 6.9 at the end: 7.0 is halfway between.
    assert arms["base_lr=1.5x"]["tokens_to_target"] == pytest.approx(2.5 * third)
    table = sweep_table(report)
    assert "*base_lr=1x" in table and "target 7.0000" in table


def test_a_run_saved_before_a_field_existed_is_the_same_run(offline_data, tmp_path):
    """A run finished under an older gradus (its saved config lacks a field the schema has since gained, at
    that field's default) is read back instead of trained again; any real difference is not the same run."""
    task = Task("a", 3e-3, 0, to_dict(from_dict(tiny_config(offline_data))), tmp_path)
    text = task.config_text
    assert "  parallel: ddp\n" in text
    older = text.replace("  parallel: ddp\n", "")  # as written before train.parallel existed
    assert older != text and same_config(older, task) and same_config(text, task)
    assert not same_config(older.replace("eval_every: 2000", "eval_every: 1000"), task)
    assert not same_config("train: {no_such_field: 1}\n", task) and not same_config(": : :\n", task)


def test_a_run_of_another_config_is_kept_beside_never_deleted(offline_data, tmp_path):
    """A compare rerun on the same --out with another budget or setting used to delete the finished runs
    there (issue 31): they are now moved beside the new run's folder, whole, under their config's hash."""
    import hashlib

    task = _two_lr_tasks(offline_data, tmp_path)[0]
    task.run_dir.mkdir(parents=True)
    older = "an earlier config (another budget)\n"
    (task.run_dir / "arm.yaml").write_text(older, encoding="utf-8")
    (task.run_dir / "result.json").write_text(json.dumps({"record": {"run_dir": str(task.run_dir)},
                                                          "config": "an earlier config"}), encoding="utf-8")
    (task.run_dir / "metrics.jsonl").write_text('{"step": 1}\n', encoding="utf-8")
    runner = Runner(jobs=1)
    moved = runner.prepare_dir(task)
    assert moved == task.run_dir.with_name(f"{task.run_dir.name}@{hashlib.sha256(older.encode()).hexdigest()[:8]}")
    assert (moved / "result.json").is_file() and (moved / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert json.loads((moved / "result.json").read_text())["record"]["run_dir"] == str(moved)  # where it is now
    assert (task.run_dir / "arm.yaml").read_text(encoding="utf-8") == task.config_text
    assert not (task.run_dir / "result.json").exists()
    # The same config again: nothing moves (its run is read back or continued); a third config moves aside too,
    # and a second run of the first older config beside it gets its own name.
    assert runner.prepare_dir(task) is None
    (task.run_dir / "arm.yaml").write_text(older, encoding="utf-8")
    again = runner.prepare_dir(task)
    assert again == moved.with_name(f"{moved.name}-2") and moved.is_dir()


def test_a_summary_of_other_runs_is_kept_beside_and_the_same_runs_rewrite_it(tmp_path):
    """compare.json (and its PNG) of a comparison at another budget or setting was overwritten by the rerun on
    the same --out, although its runs were kept (issue 31): it is kept beside them now, under its runs' key; a
    summary of the same runs again (a rerun, a resume, a re-pricing) replaces it in place."""
    from gradus.experiments.common import runs_key, summaries_key, write_summary

    runs = []
    for name, text in (("baseline/seed0", "budget: 100000\n"), ("curriculum/seed0", "budget: 100000\n")):
        (tmp_path / "arms" / name).mkdir(parents=True)
        (tmp_path / "arms" / name / "arm.yaml").write_text(text, encoding="utf-8")
        runs.append(tmp_path / "arms" / name)
    first = runs_key(runs)
    assert first == runs_key(list(reversed(runs)))  # the order runs finished in does not matter
    said = []
    write_summary(tmp_path, "compare", {"budget": 100000}, first, said.append)
    (tmp_path / "compare.png").write_bytes(b"png of 100k")
    write_summary(tmp_path, "compare", {"budget": 100000, "calibration": "again"}, first, said.append)
    assert said == [] and json.loads((tmp_path / "compare.json").read_text())["calibration"] == "again"

    (runs[0] / "arm.yaml").write_text("budget: 200000\n", encoding="utf-8")  # the rerun with another budget
    second = runs_key(runs)
    assert second != first
    report = {"budget": 200000}
    write_summary(tmp_path, "compare", report, second, said.append)
    kept = tmp_path / f"compare@{first}.json"
    assert json.loads(kept.read_text()) == {"budget": 100000, "calibration": "again", "runs_key": first}
    assert kept.with_suffix(".png").read_bytes() == b"png of 100k" and not (tmp_path / "compare.png").exists()
    assert report["runs_key"] == second and json.loads((tmp_path / "compare.json").read_text())["budget"] == 200000
    assert said == [f"{tmp_path / 'compare.json'} held the summary of other runs: kept as {kept}"]
    # A summary written before summaries had keys is kept too (under its content's hash), never lost.
    (tmp_path / "compare.json").write_text('{"budget": 50000}\n', encoding="utf-8")
    write_summary(tmp_path, "compare", {"budget": 200000}, second, said.append)
    assert len(list(tmp_path.glob("compare@*.json"))) == 2
    assert summaries_key([first, second]) != summaries_key([second, first])


# --------------------------------------------------------------------------------------------- archive
def test_an_archive_keeps_finished_runs_when_their_folder_is_lost(offline_data, tmp_path):
    """A benchmark point can outlast a machine (a session's work folder is gone with it): with an archive,
    every finished run's record is kept there too, and a new invocation on an empty work folder reads each run
    back from it, without training, with the same curve, final loss and micro-batches as the original."""
    from gradus.experiments.runner import archive_path

    tasks = _two_lr_tasks(offline_data, tmp_path / "work")
    archive = tmp_path / "archive"
    first = Runner(jobs=1, folder=tmp_path / "work", archive=archive).run(tasks)
    assert all(archive_path(archive, t).is_file() for t in tasks)
    assert all(r.micro_batches for r in first)  # the shapes the calibration prices, kept in the record
    (archive / "stray.json").write_text("not a run\n", encoding="utf-8")  # other files there are ignored

    import shutil

    shutil.rmtree(tmp_path / "work")  # a new machine
    again = Runner(jobs=1, folder=tmp_path / "work", archive=archive).run(_two_lr_tasks(offline_data, tmp_path / "work"))
    assert [r.reused for r in again] == [True, True]
    for old, new in zip(first, again, strict=True):
        assert (new.tokens, new.val_loss, new.final_val_loss, new.micro_batches, new.windows) == (
            old.tokens, old.val_loss, old.final_val_loss, old.micro_batches, old.windows)
        assert new.run_dir == old.run_dir
    for t in tasks:
        assert (t.run_dir / "result.json").is_file() and not (t.run_dir / "metrics.jsonl").exists()
        assert (t.run_dir / "config.yaml").read_text(encoding="utf-8") == t.config_text


def test_an_archived_run_is_restored_only_for_the_same_config_and_tokenizer_file(offline_data, tmp_path):
    from gradus.experiments.analysis import RunRecord
    from gradus.experiments.runner import archive_run, finished_record, restore_run
    from gradus.train.storage.run_dir import RunDir

    bpe = tmp_path / "bpe.json"
    bpe.write_text('{"a BPE": 1}', encoding="utf-8")
    raw = to_dict(from_dict(tiny_config(offline_data)))
    raw["data"]["tokenizer"].update(name_or_path=str(bpe), train_vocab_size=None)
    task = Task("a", 3e-3, 0, raw, tmp_path / "work" / "runs" / "a" / "lr0.003-seed0")
    task.run_dir.mkdir(parents=True)
    decisions = [{"step": 40, "verdict": "rejected", "proposal": {"tokens_per_step": 4096}}]
    RunDir(task.run_dir).write_decisions(decisions)
    record = RunRecord("a", 3e-3, 0, tokens=[100, 200], seconds=[1.0, 2.0], val_loss=[5.0, 4.5],
                       final_val_loss=4.5, micro_batches=[(64, 2048, 16)], run_dir=str(task.run_dir))
    archive = tmp_path / "archive"
    archive_run(archive, task, record)

    import shutil

    shutil.rmtree(tmp_path / "work")
    bpe.write_text('{"another BPE": 2}', encoding="utf-8")  # trained again, differently
    assert not restore_run(archive, task) and finished_record(task, archive) is None
    bpe.write_text('{"a BPE": 1}', encoding="utf-8")
    other = Task("a", 6e-3, 0, {**raw, "optim": {**raw["optim"], "base_lr": 6e-3}}, task.run_dir)
    assert not restore_run(archive, other)  # another config at the same place
    got = finished_record(task, archive)
    assert got is not None and got.reused and got.final_val_loss == 4.5 and got.micro_batches == [(64, 2048, 16)]
    assert RunDir(task.run_dir).read_decisions() == decisions  # an adaptive run's table is read from them


def test_the_arms_tokenizer_is_trained_once_before_they_start_and_said_only_then(offline_data, tmp_path, monkeypatch):
    """A trained BPE is announced when it is trained; later comparisons (another budget) read its cache quietly."""
    from types import SimpleNamespace

    from gradus.experiments.common import prepare_tokenizers

    monkeypatch.setenv("GRADUS_CACHE_DIR", str(tmp_path / "cache"))
    raw = tiny_config(offline_data)
    prepared = SimpleNamespace(configs={"baseline": raw, "curriculum": json.loads(json.dumps(raw))})
    first: list[str] = []
    prepare_tokenizers(prepared, first.append)
    assert len(first) == 1 and first[0].startswith("tokenizer: training a byte-level BPE of 512 tokens")
    again: list[str] = []
    prepare_tokenizers(prepared, again.append)
    assert again == []


def test_per_seed_and_median_curve_speedups_price_the_baseline_alike():
    # The baseline touches its final loss 4.0 at 200 tokens already (noise) and ends there at 400: the median
    # curve's figure prices it at that first crossing, and the per-seed figure priced it at its whole run (1.41×
    # against 0.71× in a review's case). Both now read its first crossing.
    stages = [{"seq_len": 64, "tokens_per_step": 10, "start_tokens": 0, "end_tokens": 400}]
    cost = {(64, 10): 1.0}
    base, cur = [_run("baseline", 0, [6.0, 4.0, 4.1, 4.0])], [_run("curriculum", 0, [5.0, 4.5, 3.9, 3.8])]
    [seed] = compare_seeds(base, cur, stages, stages, cost)
    curves = {}
    for name, runs in (("b", base), ("c", cur)):
        t, s, v = median_curve(runs)
        curves[name] = {"curve": {"tokens": t, "seconds": s, "val_loss": v}, "stages": stages}
    add_speedups(curves["c"], curves["b"], cost)
    assert seed.speedup_tokens == pytest.approx(curves["c"]["speedup_tokens"])


def test_the_per_seed_line_says_how_many_seeds_reached_the_target():
    from gradus.experiments.compare import compare_table

    rec = {"name": "curriculum", "final_val_loss_seeds": [3.8, 4.6, 4.7], "final_val_loss": 4.6,
           "tokens_to_target": 250.0, "seconds_to_target": 2.5, "seconds_to_target_calibrated": 2.5,
           "speedup_tokens": 1.6, "speedup_wallclock": 1.6, "speedup_wallclock_calibrated": 1.6,
           "tokens_per_sec_median": 100.0, "lr": 1e-3}
    one = {"median": 2.0, "min": 2.0, "max": 2.0, "n": 1}
    report = {"seeds": [0, 1, 2], "target": 4.0, "reference_len": 64, "target_from": "x",
              "baseline": {**rec, "name": "baseline"}, "curriculum": rec, "calibration": {"method": "measured"},
              "per_seed": [{}, {}, {}], "speedup_over_seeds": {"tokens": one, "calibrated": one}, "verdict": "v"}
    line = next(ln for ln in compare_table(report).splitlines() if ln.startswith("per seed"))
    assert "1 of 3 seeds reached it, the others left out" in line


def test_a_curriculum_is_read_at_its_baselines_evaluation_points():
    # A stage switch at 250 tokens adds an evaluation there (the shared cadence is every 100): inside the bracket
    # of the crossing it moved the first crossing (to 245 tokens here from 283); at the baseline's points it does not.
    run = RunRecord("curriculum", 1e-3, 0, tokens=[100, 200, 250, 300, 400], seconds=[1, 2, 2.5, 3, 4],
                    val_loss=[5.0, 4.5, 3.95, 3.9, 3.8], final_val_loss=3.8, tokens_trained=400, train_seconds=4)
    shared = at_tokens(run, {100, 200, 300, 400})
    assert shared.tokens == [100, 200, 300, 400] and shared.val_loss == [5.0, 4.5, 3.9, 3.8]
    assert to_target(run.tokens, run.seconds, run.val_loss, 4.0)[0] == pytest.approx(245.45, abs=0.01)
    assert to_target(shared.tokens, shared.seconds, shared.val_loss, 4.0)[0] == pytest.approx(283.33, abs=0.01)
    assert at_tokens(run, {100}).tokens == [100, 400]  # its own last point always


@pytest.mark.parametrize(("argv", "needle"), [
    (["compare", "--preset", "demo", "--seeds", ""], "--seeds '': give one or more integers"),
    (["sweep", "--preset", "demo", "--vary", "optim.base_lr=1x,2x", "--target", "nan"], "--target nan: give a loss"),
    (["sweep", "--preset", "demo", "--vary", "optim.base_lr=1x,2x", "--target", "-1"], "--target -1.0: give a loss"),
    (["sweep", "--preset", "demo", "--vary", "optim.base_lr=1x,2x", "--budget", "1e30"],
     "--budget 1e30: token count must be at most 1,000T"),
    (["compare", "--preset", "demo", "--budgets", "1M,1e30"], "--budgets 1M,1e30: token count must be at most"),
])
def test_experiment_flags_that_mean_nothing_are_refused_before_any_run(capsys, tmp_path, monkeypatch, argv, needle):
    """An empty --seeds ran seed 0, a NaN or negative --target measured nothing, a 1e30 budget planned 10^26
    steps: each is one line, exit 2, and no run folder."""
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "out").exists()
