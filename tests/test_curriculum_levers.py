"""The schedule levers of issue 14: warmup-stable-decay, linear decay to zero, the batch ramp, and the
cost model (FLOPs per token with attention, projected GPU time, projected speedup).

Expected values are worked out by hand in the comments, not recomputed with the engine's formulas.
"""

from __future__ import annotations

import json

import pytest
import yaml

from gradus.cli import main
from gradus.config import from_dict
from gradus.curriculum import Schedule, lr_at, resolve_schedule, state_at
from gradus.errors import ConfigError
from gradus.plan.cost import check_mfu, first_tokens, projected_flops, projected_speedup, stage_costs
from gradus.plan.hardware import GPUS
from gradus.sizes import ModelShape


def config(stages, target=None, schedule="per_stage", base_lr=1e-3, **curriculum) -> dict:
    cur = {"stages": stages, "schedule": schedule, **curriculum}
    if target is not None:
        cur["target_tokens"] = target
    return {
        "model": {"preset": "tiny", "max_seq_len": 256, "vocab_size": 1000},
        "data": {"sources": [{"name": "prose", "builtin": "python-docs"}]},
        "curriculum": cur,
        "optim": {"base_lr": base_lr},
    }


def make(stages, target=None, schedule="per_stage", **curriculum) -> Schedule:
    return resolve_schedule(from_dict(config(stages, target, schedule, **curriculum)))


ONE_STAGE = [{"seq_len": 64, "batch_size": 4, "peak_lr": 1e-3}]  # 256 tokens/step: 256k tokens = 1000 steps


# ----------------------------------------------------------------------------------------- WSD
def test_wsd_linear_cooldown_to_the_floor():
    cur = make(ONE_STAGE, target=256_000, schedule="wsd")  # cooldown_fraction 0.2, min_lr_ratio 0.1
    assert (cur.total_steps, cur.global_warmup_steps, cur.cooldown_steps) == (1000, 20, 200)
    table = {
        0: 5e-5,  # warmup: 1e-3 × 1/20
        19: 1e-3,
        500: 1e-3,  # stable
        799: 1e-3,
        800: 1e-3,  # the cooldown's first step is at the peak (p = 0)
        900: 5.5e-4,  # p = 100/200: 0.1 + 0.9 × 0.5
        999: 1.045e-4,  # p = 199/200: 0.1 + 0.9 × 0.005
    }
    assert {step: lr_at(cur, step) for step in table} == pytest.approx(table)


def test_wsd_one_minus_sqrt_cooldown_to_zero():
    cur = make(ONE_STAGE, target=256_000, schedule="wsd", cooldown_shape="1-sqrt", decay_to="zero")
    table = {
        799: 1e-3,
        850: 5e-4,  # p = 0.25: 1 - sqrt(0.25)
        900: 2.928932e-4,  # p = 0.5: 1 - sqrt(0.5) = 0.2928932
        999: 2.503133e-6,  # p = 0.995: 1 - sqrt(0.995) = 0.0025031
    }
    assert {step: lr_at(cur, step) for step in table} == pytest.approx(table, rel=1e-6)


def test_wsd_cooldown_fraction_sets_the_cooldown():
    cur = make(ONE_STAGE, target=256_000, schedule="wsd", cooldown_fraction=0.5)
    assert cur.cooldown_steps == 500
    assert lr_at(cur, 499) == pytest.approx(1e-3)
    assert lr_at(cur, 750) == pytest.approx(5.5e-4)  # p = 250/500


def test_wsd_is_global_across_stage_switches_and_multipliers_scale_it():
    cur = make(
        [
            {"step": 0, "seq_len": 64, "batch_size": 4, "lr_multiplier": 1.0},
            {"step": 500, "seq_len": 128, "batch_size": 2, "lr_multiplier": 0.5},
        ],
        target=256_000,
        schedule="wsd",
    )
    assert [s.warmup_steps for s in cur.stages] == [0, 0]
    table = {499: 1e-3, 500: 5e-4, 510: 5e-4, 800: 5e-4, 900: 2.75e-4}  # 0.5 × 1e-3 × (0.1 + 0.9 × 0.5)
    assert {step: lr_at(cur, step) for step in table} == pytest.approx(table)
    assert cur.to_json()["cooldown_start_step"] == 800


# ------------------------------------------------------------------------------------------ D2Z
def test_linear_decays_to_zero():
    cur = make(ONE_STAGE, target=256_000, schedule="linear")
    table = {
        0: 5e-5,  # the same 20-step global warmup
        20: 1e-3,  # p = 0
        510: 5e-4,  # p = 490/980
        999: 1.0204082e-6,  # p = 979/980: 1e-3 / 980
    }
    assert {step: lr_at(cur, step) for step in table} == pytest.approx(table, rel=1e-6)
    assert cur.to_json()["floor_ratio"] == 0.0


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # one stage, 1000 steps, peak 1e-3, 20 warmup steps in every mode
        ("per_stage", {0: 5e-5, 510: 5.5e-4, 999: 1.0000231e-4}),  # cosine to 0.1 over 980 steps
        ("global", {0: 5e-5, 510: 5.5e-4, 999: 1.0000231e-4}),  # the same curve, global
        ("wsd", {0: 5e-5, 510: 1e-3, 999: 1.045e-4}),
        ("linear", {0: 5e-5, 510: 5e-4, 999: 1.0204082e-6}),
    ],
)
def test_a_one_stage_baseline_can_use_every_schedule(schedule, expected):
    cur = make(ONE_STAGE, target=256_000, schedule=schedule)
    assert {step: lr_at(cur, step) for step in expected} == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------ batch ramp
RAMP = [  # 10 steps each at batch 64: 4096 -> 8192 -> 16384 tokens per step
    {"name": "s64", "tokens": 40_960, "seq_len": 64, "tokens_per_batch": 4096},
    {"name": "s128", "tokens": 81_920, "seq_len": 128, "tokens_per_batch": 8192},
    {"name": "s256", "tokens": 163_840, "seq_len": 256, "tokens_per_batch": 16_384},
]


@pytest.mark.parametrize(
    ("ramp", "peaks"),
    [
        ({"alpha": 0.5}, [5e-4, 7.0710678e-4, 1e-3]),  # sqrt(4096/16384), sqrt(8192/16384), 1 (the last stage)
        ({"alpha": 1.0, "reference_stage": 0}, [1e-3, 2e-3, 4e-3]),
        ({"alpha": 2.0, "reference_tokens": "8192"}, [2.5e-4, 1e-3, 4e-3]),
        ({}, [1e-3, 1e-3, 1e-3]),  # alpha 0: declared and checked, not scaled
    ],
)
def test_batch_ramp_scales_each_stage_peak(ramp, peaks):
    cur = make(RAMP, batch_ramp=ramp)
    assert [s.tokens_per_step for s in cur.stages] == [4096, 8192, 16_384]
    assert [(s.start_step, s.end_step) for s in cur.stages] == [(0, 10), (10, 20), (20, 30)]
    assert [s.peak_lr for s in cur.stages] == pytest.approx(peaks, rel=1e-6)
    assert state_at(cur, 12, 40_960 + 2 * 8192).tokens_per_step == 8192


def test_batch_ramp_scaling_multiplies_the_global_curve_and_is_in_the_json():
    cur = make(RAMP, schedule="linear", batch_ramp={"alpha": 0.5})
    assert cur.global_warmup_steps == 1  # ceil(0.02 × 30)
    # step 12 (stage s128): 7.0710678e-4 × (1 - 11/29); step 25 (s256): 1e-3 × (1 - 24/29) = 1e-3 × 5/29
    assert lr_at(cur, 12) == pytest.approx(4.3889386e-4, rel=1e-6)
    assert lr_at(cur, 25) == pytest.approx(1.7241379e-4, rel=1e-6)
    data = cur.to_json()
    assert data["batch_ramp"] == {"direction": "grow", "alpha": 0.5, "reference_tokens_per_step": 16_384,
                                  "reference": "stage 2"}
    assert [s["batch_lr_factor"] for s in data["stages"]] == pytest.approx([0.5, 0.70710678, 1.0])


def test_without_the_levers_the_json_keeps_its_shape():
    data = make(ONE_STAGE, target=256_000, schedule="global").to_json()
    assert not {"batch_ramp", "cooldown_steps", "floor_ratio"} & set(data)
    assert "batch_lr_factor" not in data["stages"][0]


# ------------------------------------------------------------------------------------- bad input
def run_bad(tmp_path, capsys, data) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    code = main(["schedule", str(path)])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith(f"gradus: error: {path}: line ") for line in lines), lines
    return lines


def shrinking():
    stages = [dict(s) for s in RAMP]
    stages[1]["tokens_per_batch"] = 2048
    return stages


BAD = {
    "alpha above 2": (config(RAMP, batch_ramp={"alpha": 2.5}),
                      "curriculum.batch_ramp.alpha=2.5: the batch-ramp LR exponent must be in [0, 2]"),
    "alpha below 0": (config(RAMP, batch_ramp={"alpha": -0.5}), "curriculum.batch_ramp.alpha=-0.5: "),
    "cooldown 1": (config(ONE_STAGE, 256_000, "wsd", cooldown_fraction=1.0),
                   "curriculum.cooldown_fraction=1.0: the WSD cooldown is a fraction of the run strictly between 0 and 1"),
    "cooldown 0": (config(ONE_STAGE, 256_000, "wsd", cooldown_fraction=0), "curriculum.cooldown_fraction=0: "),
    "shrinking ramp": (config(shrinking(), batch_ramp={"direction": "grow"}),
                       "curriculum.stages[1].tokens_per_batch=2048: tokens per step shrink from 4,096 (stage 0) "
                       "to 2,048, but curriculum.batch_ramp.direction is grow"),
    "fewer tokens than a sequence": (
        config([{"seq_len": 64, "tokens_per_batch": 32, "tokens": 1000}]),
        "curriculum.stages[0].tokens_per_batch=32: fewer tokens than one sequence of seq_len=64",
    ),
    "no batch meets it": (
        config([{"seq_len": 64, "tokens_per_batch": 5000, "tokens": 50_000}], batch_ramp={}),
        "curriculum.stages[0].tokens_per_batch=5000: no batch at seq_len=64 (whole, and a multiple of batch_multiple=8 "
        "from 8 on) gives exactly that; a batch ramp needs exact tokens per step, write tokens_per_batch: 4608 or 5120",
    ),
    "reference stage out of range": (config(RAMP, batch_ramp={"reference_stage": 3}),
                                     "curriculum.batch_ramp.reference_stage=3: there are only 3 stages"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_lever_input_is_one_line_exit_2(case, tmp_path, capsys):
    data, fragment = BAD[case]
    lines = run_bad(tmp_path, capsys, data)
    assert len(lines) == 1, lines
    assert fragment in lines[0], lines


def test_any_direction_allows_a_shrinking_ramp():
    cur = make(shrinking(), batch_ramp={"direction": "any", "alpha": 1.0})
    assert [s.peak_lr for s in cur.stages] == pytest.approx([2.5e-4, 1.25e-4, 1e-3])  # 4096, 2048, 16384 / 16384


# ------------------------------------------------------------------------------------ cost model
# 2 layers × 64, ffn 128, vocab 1000: per layer 4·64² (attention) + 3·64·128 (SwiGLU) + 2·64 (norms)
# = 16,384 + 24,576 + 128 = 41,088; N = 2 × 41,088 + 64 = 82,240; matmul weights N + 64,000 (head) = 146,240.
SHAPE = ModelShape(n_layers=2, d_model=64, n_heads=4, vocab_size=1000, ffn_hidden=128, max_seq_len=256)


def test_flops_per_token_counts_matmuls_and_causal_attention():
    assert SHAPE.flops_per_token(64) == 926_592  # 6 × 146,240 + 6 × 2 × 64 × 64
    assert SHAPE.flops_per_token(256) == 1_074_048  # 877,440 + 6 × 2 × 256 × 64


def test_stage_costs_on_a_named_gpu():
    cur = make(RAMP)
    costs = stage_costs(cur, SHAPE, GPUS["h100"], 0.5)
    assert [c.tokens for c in costs] == [40_960, 81_920, 163_840]
    assert [c.flops_per_token for c in costs] == [926_592, 975_744, 1_074_048]  # 877,440 + 768·seq_len
    assert costs[0].flops == 40_960 * 926_592
    # 3.7953208e10 FLOPs / (989e12 × 0.5)
    assert costs[0].seconds == pytest.approx(7.6750673e-5, rel=1e-6)


def test_first_tokens_and_the_projected_speedup():
    arm = [(64, 1000), (256, 3000)]
    assert first_tokens(arm, 2000) == [(64, 1000), (256, 1000)]
    assert first_tokens(arm, 500) == [(64, 500)]
    assert first_tokens(arm, 5000) == [(64, 1000), (256, 4000)]  # past the end the last length continues
    assert projected_flops(first_tokens(arm, 2000), SHAPE) == 2_000_640_000  # 926,592k + 1,074,048k
    # baseline 4000 tokens at 256: 4,296,192,000 FLOPs; / 2,000,640,000 = 2.1474088
    assert projected_speedup(SHAPE, arm, 2000, [(256, 4000)], 4000) == pytest.approx(2.1474088, rel=1e-7)
    # the same tokens to the target: only the cheaper short tokens help,
    # 4,296,192,000 / (926,592,000 + 3,222,144,000) = 4,296,192,000 / 4,148,736,000 = 1.0355424
    assert projected_speedup(SHAPE, arm, 4000, [(256, 4000)], 4000) == pytest.approx(1.0355424, rel=1e-7)


@pytest.mark.parametrize("bad", [0.0, 1.5, float("nan")])
def test_mfu_outside_0_1_is_refused(bad):
    with pytest.raises(ConfigError, match="model FLOPs utilisation is a fraction in"):
        check_mfu(bad)


def test_schedule_command_prints_projected_time(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    data = config(RAMP, schedule="wsd", cooldown_shape="1-sqrt", decay_to="zero", batch_ramp={"alpha": 0.5})
    data["model"] = {"n_layers": 2, "d_model": 64, "n_heads": 4, "ffn_hidden": 128, "vocab_size": 1000,
                     "max_seq_len": 256, "preset": None}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["schedule", str(path), "--gpu", "H100", "--mfu", "0.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["flops_per_token"] for s in report["stages"]] == [926_592, 975_744, 1_074_048]
    assert report["stages"][0]["projected_seconds"] == pytest.approx(7.6750673e-5, rel=1e-6)
    assert report["cost"]["gpu"] == "h100" and report["cost"]["mfu"] == 0.5
    assert report["cooldown_steps"] == 6 and report["cooldown_start_step"] == 24  # ceil(0.2 × 30)
    assert main(["schedule", str(path), "--gpu", "h100", "--mfu", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "1-sqrt cooldown over the last 6 steps (0.2 of the run) to zero" in out
    assert "batch ramp (grow): tokens/step 4,096 → 8,192 → 16,384; peak LR × (tokens/step / 16,384 (stage 2))^0.5" in out
    assert "h100 @ 0.5 MFU" in out and "9.27e5" in out
    assert "base × 0.5 (batch ramp)" in out and "base × 0.707 (batch ramp)" in out


@pytest.mark.parametrize(
    ("tokens_per_batch", "near"),
    [
        (300, "write tokens_per_batch: 256 or 320"),  # 4.7 sequences: below one multiple, any whole batch
        (320, None),  # batch 5 (below batch_multiple 8) is met exactly
        (5120, None),  # batch 80 = 10 × 8
        (4672, "write tokens_per_batch: 4608 or 5120"),  # batch 73: not a multiple of 8
    ],
)
def test_a_ramp_needs_tokens_per_step_that_a_batch_meets(tokens_per_batch, near):
    data = config([{"seq_len": 64, "tokens_per_batch": tokens_per_batch, "tokens": 51_200}], batch_ramp={})
    if near is None:
        cur = resolve_schedule(from_dict(data))
        assert cur.stages[0].tokens_per_step == tokens_per_batch
    else:
        with pytest.raises(ConfigError, match=near):
            from_dict(data)


def test_wsd_settings_without_wsd_are_flagged():
    cur = make(ONE_STAGE, target=256_000, schedule="linear", decay_to="zero", cooldown_fraction=0.3)
    assert ("curriculum.cooldown_fraction, decay_to only shape the wsd schedule and are ignored with "
            "schedule: linear; set schedule: wsd or drop them") in cur.warnings
    assert lr_at(cur, 510) == pytest.approx(5e-4)  # still the D2Z line


def test_the_levers_survive_a_saved_config_round_trip():
    from gradus.config import dump_yaml

    cfg = from_dict(config(RAMP, schedule="wsd", cooldown_shape="1-sqrt", decay_to="zero",
                           batch_ramp={"alpha": 0.5, "reference_stage": 1}))
    again = from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg
    first, second = resolve_schedule(cfg).to_json(), resolve_schedule(again).to_json()
    assert first == second and first["warnings"] == []
    assert [s["peak_lr"] for s in first["stages"]] == pytest.approx([7.0710678e-4, 1e-3, 1.4142136e-3])
