"""The pure schedule engine: shapes, boundaries, LR (warmup, cosine, global), clip, mix, stopping.

Expected values are worked out by hand in the comments, not recomputed with the engine's formulas.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path

import pytest

import gradus
from gradus.config import StageConfig, from_dict
from gradus.curriculum import (
    Schedule,
    clip_by_length,
    derive_batch,
    lr_at,
    resolve_schedule,
    seq_batch_multiplier,
    stage_index_at,
    stage_of_step,
    state_at,
    tokens_at_step,
)
from gradus.curriculum.rules import SEQ_BATCH_MULTIPLIER, SEQ_BATCH_RULE, seq_batch_factors, seq_batch_words
from gradus.presets import load_preset


def make(stages, target=None, sources=("prose",), schedule="per_stage", max_seq_len=256, **extra) -> Schedule:
    curriculum = {"stages": stages, "schedule": schedule}
    if target is not None:
        curriculum["target_tokens"] = target
    curriculum.update(extra.pop("curriculum", {}))
    data = {
        "model": {"preset": "tiny", "max_seq_len": max_seq_len},
        "data": {"sources": [{"name": n, "builtin": "python-docs"} for n in sources]},
        "curriculum": curriculum,
        **extra,
    }
    return resolve_schedule(from_dict(data))


# ---------------------------------------------------------------------------------------- the rules
@pytest.mark.parametrize(
    ("tokens", "seq_len", "multiple", "batch"),
    [
        (32_768, 64, 8, 512),
        (32_768, 2048, 8, 16),
        (4096, 768, 8, 5),  # 5.33 examples: fewer than one multiple, nearest whole number
        (20, 1, 8, 24),  # 2.5 multiples rounds half up (Python's round() would give 16)
        (12, 1, 8, 16),
        (1, 64, 8, 1),  # never below 1
        (16_384, 768, 8, 24),
        (1000, 10, 1, 100),
    ],
)
def test_derive_batch(tokens, seq_len, multiple, batch):
    assert derive_batch(tokens, seq_len, multiple) == batch


def test_seq_batch_rule_gives_11_3_at_64_256():
    # min(2048/64, 4) × sqrt(256/32) = 4 × 2.828 = 11.31
    assert round(seq_batch_multiplier(64, 256, 2048), 1) == 11.3
    assert seq_batch_multiplier(64, 256, 2048) == pytest.approx(11.3137085, rel=1e-8)
    assert seq_batch_multiplier(1024, 32, 2048) == pytest.approx(2.0)  # min(2, 4) × 1
    assert seq_batch_multiplier(2048, 16, 2048) == pytest.approx(0.70710678)


def test_seq_batch_factors_are_the_multiplier():
    assert seq_batch_factors(64, 256, 2048) == (4.0, math.sqrt(8.0))
    assert seq_batch_factors(1024, 32, 2048) == (2.0, 1.0)
    for seq_len, batch, max_len in [(64, 256, 2048), (100, 7, 1000), (2048, 16, 2048), (128, 96, 256)]:
        length, width = seq_batch_factors(seq_len, batch, max_len)
        assert seq_batch_multiplier(seq_len, batch, max_len) == length * width


def _words(text: str) -> str:
    return "".join(text.split())


def test_every_spelling_of_the_seq_batch_rule_is_the_rules_own():
    """One rule, one spelling (rules.SEQ_BATCH_RULE): the config reference (the field's description, which
    layer 0 spells itself), the resolved stage's note and the double-count warning say the same."""
    assert SEQ_BATCH_RULE == "base × min(max_seq_len/seq_len, 4) × sqrt(batch/32)"
    assert _words(SEQ_BATCH_RULE) in _words(StageConfig.model_fields["lr_rule"].description)
    cur = make(
        [
            {"step": 0, "seq_len": 64, "batch_size": 256, "lr_rule": "seq_batch"},
            {"step": 10, "seq_len": 128, "batch_size": 128, "lr_rule": "seq_batch"},
        ],
        target=100 * 16_384,
        max_seq_len=2048,
    )
    filled = SEQ_BATCH_MULTIPLIER.replace("max_seq_len", "2048").replace("seq_len", "64").replace("batch", "256")
    assert " × ".join(seq_batch_words(64, 256, 2048)) == filled
    assert filled in cur.stages[0].lr_note
    assert any(SEQ_BATCH_MULTIPLIER in w for w in cur.warnings)


def test_no_module_but_the_rules_spells_the_seq_batch_rule():
    """The rule's words live in gradus/curriculum/rules.py (:func:`seq_batch_words`); the resolved notes, the
    warnings and ``gradus schedule`` take them from there. Only the config's field description (layer 0, which
    cannot import curriculum/rules.py; checked above) spells them again. A string of any other module that
    spells a factor (``sqrt(batch`` or ``min(max_seq_len``, spaces ignored) fails here."""
    import ast

    package = Path(gradus.__file__).parent
    allowed = {package / "curriculum" / "rules.py", package / "config" / "schema_curriculum.py"}
    found = []
    for path in sorted(package.rglob("*.py")):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = _words(node.value)
                if "sqrt(batch" in text or "min(max_seq_len" in text or "/32)" in text:
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    assert found == []


@pytest.mark.parametrize(("seq_len", "clip"), [(8, 5.0), (128, 5.0), (129, 1.0), (512, 1.0), (513, 0.5), (2048, 0.5)])
def test_clip_by_length(seq_len, clip):
    assert clip_by_length(seq_len) == clip


def test_seq_batch_in_the_engine_and_its_warning():
    cur = make(
        [
            {"step": 0, "seq_len": 64, "batch_size": 256, "lr_rule": "seq_batch"},
            {"step": 10, "seq_len": 128, "batch_size": 128, "lr_rule": "seq_batch"},
        ],
        target=100 * 16_384,
        max_seq_len=2048,
    )
    assert cur.stages[0].peak_lr == pytest.approx(6e-4 * 11.3137085)
    assert cur.stages[1].peak_lr == pytest.approx(6e-4 * 8.0)  # 4 × sqrt(4)
    assert "11.3× base 6e-4" in cur.stages[0].lr_note
    assert any("counts the same effect twice" in w for w in cur.warnings)


def test_no_double_count_warning_with_multipliers():
    cur = make(
        [
            {"step": 0, "seq_len": 64, "batch_size": 256, "lr_multiplier": 11.3},
            {"step": 10, "seq_len": 128, "batch_size": 128, "lr_multiplier": 7.0},
        ],
        target=100 * 16_384,
    )
    assert not any("twice" in w for w in cur.warnings)


def test_rounded_batch_is_noted():
    cur = make([{"seq_len": 192, "tokens_per_batch": 4096}], target="1M")
    assert cur.stages[0].batch_size == 24  # 21.33 examples, rounded to the nearest multiple of 8
    assert (
        "curriculum.stages[0]: tokens_per_batch=4096 / seq_len=192 = 21.3333, rounded to batch 24 "
        "(4608 tokens/step)" in cur.warnings
    )


# ---------------------------------------------------------------------------------- per-stage LR
@pytest.fixture(scope="module")
def two_stage() -> Schedule:
    # 256 tokens per step in both stages; the target ends stage 2 at step 200.
    return make(
        [
            {"step": 0, "seq_len": 64, "batch_size": 4, "peak_lr": 1e-3, "warmup_steps": 10},
            {"step": 100, "seq_len": 128, "batch_size": 2, "peak_lr": 5e-4, "warmup_steps": 20},
        ],
        target=51_200,
    )


def test_step_boundaries(two_stage):
    s0, s1 = two_stage.stages
    assert (s0.start_step, s0.end_step, s0.start_tokens, s0.end_tokens) == (0, 100, 0, 25_600)
    assert (s1.start_step, s1.end_step, s1.start_tokens, s1.end_tokens) == (100, 200, 25_600, 51_200)
    assert state_at(two_stage, 99, 99 * 256).stage_index == 0
    state = state_at(two_stage, 100, 100 * 256)  # the switch happens exactly at the start step
    assert (state.stage_index, state.seq_len, state.batch_size, state.tokens_per_step) == (1, 128, 2, 256)
    assert not state_at(two_stage, 199, 199 * 256).done
    end = state_at(two_stage, 200, 51_200)
    assert end.done and "target_tokens=51200" in end.done_reason


def test_warmup_from_zero(two_stage):
    lr = partial(lr_at, two_stage)
    assert lr(0) == pytest.approx(1e-4)  # 1e-3 × 1/10
    assert lr(4) == pytest.approx(5e-4)  # 1e-3 × 5/10
    assert lr(9) == pytest.approx(1e-3)
    assert state_at(two_stage, 4, 4 * 256).warmup_progress == pytest.approx(0.5)


def test_cosine_inside_the_stage(two_stage):
    lr = partial(lr_at, two_stage)
    # floor = 0.1 × 1e-3; the cosine spans the 90 steps after warmup
    assert lr(10) == pytest.approx(1e-3)
    assert lr(55) == pytest.approx(5.5e-4)  # half way: 1e-4 + 9e-4 × 0.5
    assert lr(99) == pytest.approx(1.00274128e-4, rel=1e-7)  # 1e-4 + 9e-4 × 0.5 × (1 - cos(π/90))


def test_next_stage_warms_up_from_where_the_last_ended(two_stage):
    lr = partial(lr_at, two_stage)
    # start 1.00274128e-4, ramp to 5e-4 over 20 steps: + (5e-4 - start) / 20 per step
    assert lr(100) == pytest.approx(1.20260422e-4, rel=1e-7)
    assert lr(119) == pytest.approx(5e-4)
    assert lr(120) == pytest.approx(5e-4)
    assert lr(199) == pytest.approx(5.0173466e-5, rel=1e-6)  # 5e-5 + 4.5e-4 × 0.5 × (1 - cos(π/80))
    state = state_at(two_stage, 110, 110 * 256)
    assert state.lr == pytest.approx(lr(110)) and state.peak_lr == 5e-4


def test_default_warmup_of_the_first_stage():
    cur = make([{"seq_len": 64, "batch_size": 4}], target=256_000)  # 1000 steps
    assert cur.stages[0].warmup_steps == 20  # global_warmup_fraction 0.02 × 1000


def test_linear_and_constant_decay():
    cur = make(
        [
            {"step": 0, "seq_len": 64, "batch_size": 4, "peak_lr": 1e-3, "warmup_steps": 0, "decay": "linear"},
            {"step": 100, "seq_len": 64, "batch_size": 4, "peak_lr": 1e-3, "decay": "constant"},
        ],
        target=200 * 256,
    )
    assert lr_at(cur, 50) == pytest.approx(1e-3 - 9e-4 * 0.5)
    assert lr_at(cur, 150) == pytest.approx(1e-3)


# -------------------------------------------------------------------------------------- global LR
def test_global_schedule():
    cur = make([{"seq_len": 64, "batch_size": 4, "peak_lr": 1e-3}], target=256_000, schedule="global")
    lr = partial(lr_at, cur)
    assert cur.total_steps == 1000 and cur.global_warmup_steps == 20
    assert lr(0) == pytest.approx(5e-5)  # 1e-3 × 1/20
    assert lr(19) == pytest.approx(1e-3)
    assert lr(20) == pytest.approx(1e-3)
    assert lr(510) == pytest.approx(5.5e-4)  # half way through the 980 cosine steps
    assert lr(999) == pytest.approx(1.0000231e-4, rel=1e-6)  # 1e-4 + 9e-4 × 0.5 × (1 - cos(π/980))
    assert state_at(cur, 9, 9 * 256).warmup_progress == pytest.approx(0.5)


def test_global_schedule_scales_each_stage_peak():
    cur = make(
        [
            {"step": 0, "seq_len": 64, "batch_size": 4, "peak_lr": 1e-3},
            {"step": 500, "seq_len": 128, "batch_size": 2, "peak_lr": 5e-4},
        ],
        target=256_000,
        schedule="global",
    )
    assert lr_at(cur, 510) == pytest.approx(2.75e-4)  # 5e-4 × 0.55, no jump-up warmup needed
    expected = 5e-4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 580 / 980)))
    assert lr_at(cur, 600) == pytest.approx(expected)


# ------------------------------------------------------------------------------ token boundaries
def test_token_budget_boundaries():
    cur = make(
        [
            {"tokens": 1000, "seq_len": 8, "batch_size": 16},  # 128 tokens/step
            {"tokens": 1000, "seq_len": 16, "tokens_per_batch": 256},  # batch 16, 256 tokens/step
        ]
    )
    s0, s1 = cur.stages
    assert cur.target_tokens == 2000  # the sum of the budgets
    # stage 1 needs ceil(1000/128) = 8 steps (1024 tokens); stage 2 ceil((2000-1024)/256) = 4 steps
    assert (s0.start_step, s0.end_step, s0.end_tokens) == (0, 8, 1024)
    assert (s1.start_step, s1.end_step, s1.start_tokens, s1.end_tokens) == (8, 12, 1024, 2048)
    assert (s0.token_threshold, s1.token_threshold) == (0, 1000)
    assert state_at(cur, 7, 896).stage_index == 0
    assert state_at(cur, 8, 999).stage_index == 0  # the token counter decides, not the step
    assert state_at(cur, 8, 1000).stage_index == 1
    assert state_at(cur, 8, 1024).seq_len == 16
    assert state_at(cur, 12, 2048).done


def test_streaming_preset_switches_at_its_token_thresholds():
    cur = resolve_schedule(load_preset("streaming-1b"))
    first, second = cur.stages[:2]
    # 10M / 65,536 = 152.6: the switch is the first step at which 10M tokens have been seen
    assert (first.end_step, second.start_step, second.start_tokens) == (153, 153, 153 * 65_536)
    assert second.token_threshold == 10_000_000
    assert state_at(cur, 152, 152 * 65_536).stage_index == 0
    assert state_at(cur, 153, 153 * 65_536).stage_index == 1
    # running sums of 10M/20M/30M/40M/75M/100M/125M/150M/200M/250M
    assert [s.token_threshold for s in cur.stages] == [
        n * 1_000_000 for n in (0, 10, 30, 60, 100, 175, 275, 400, 550, 750)
    ]


def test_walking_the_counters_matches_the_table():
    """Run the counters as a trainer would: the stage from state_at always matches the table."""
    cur = resolve_schedule(load_preset("streaming-1b"))
    step, tokens = 0, 0
    while not (state := state_at(cur, step, tokens)).done:
        plan = cur.stages[state.stage_index]
        assert plan.start_step <= step < plan.end_step
        step, tokens = step + 1, tokens + state.tokens_per_step
    assert (step, tokens) == (cur.total_steps, cur.total_tokens)
    assert tokens >= 1_000_000_000 > tokens - cur.stages[-1].tokens_per_step


def test_the_two_lookups_and_the_token_counter_at_a_step():
    cur = make(
        [
            {"tokens": 1000, "seq_len": 8, "batch_size": 16},  # 128 tokens/step, steps 0..7
            {"tokens": 1000, "seq_len": 16, "tokens_per_batch": 256},  # 256 tokens/step, steps 8..11
        ]
    )
    # Tokens before step k: 128 per step up to step 8 (1024), then 256 per step.
    assert [tokens_at_step(cur, k) for k in (0, 7, 8, 10, 12)] == [0, 896, 1024, 1536, 2048]
    assert [stage_of_step(cur, k) for k in (0, 7, 8, 11, 50)] == [0, 0, 1, 1, 1]
    # On counters a run never has (step 8 with 999 tokens) only the real lookup answers by tokens.
    assert (stage_index_at(cur, 8, 999), stage_of_step(cur, 8)) == (0, 1)


@pytest.mark.parametrize(
    "overrides", [["curriculum.target_tokens=20M"], ["train.max_steps=3000"]], ids=["tokens", "max-steps"]
)
def test_both_lookups_agree_wherever_the_counters_are_a_runs(overrides):
    """Token budgets (streaming-1b) and a max_steps cut that leaves stages unrun (aggressive): at the token
    counter of every step, past the end too, the real lookup and the table's agree."""
    preset = "streaming-1b" if "tokens" in overrides[0] else "aggressive"
    cur = resolve_schedule(load_preset(preset, overrides))
    switches = [k for k in range(1, cur.total_steps + 5) if stage_of_step(cur, k) != stage_of_step(cur, k - 1)]
    assert switches == ([153] if preset == "streaming-1b" else [2000])  # 10M / 65,536 → 153; aggressive: step 2000
    for k in range(cur.total_steps + 5):
        assert stage_index_at(cur, k, tokens_at_step(cur, k)) == stage_of_step(cur, k), k


def test_the_schedule_is_frozen_and_resolves_its_end_lrs_once(two_stage):
    with pytest.raises(dataclasses.FrozenInstanceError):
        two_stage.total_steps = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        two_stage.stages[0].peak_lr = 1.0  # type: ignore[misc]
    assert isinstance(two_stage.stages, tuple)
    # Stage 0 ends at 1e-4 + 9e-4 × 0.5 × (1 - cos(π/90)); stage 1 at 5e-5 + 4.5e-4 × 0.5 × (1 - cos(π/80)).
    assert two_stage.end_lrs == pytest.approx((1.00274128e-4, 5.0173466e-5), rel=1e-6)
    # No cache to warm: a fresh schedule asked for stage 1's warmup first gives the same LR.
    fresh = make(
        [
            {"step": 0, "seq_len": 64, "batch_size": 4, "peak_lr": 1e-3, "warmup_steps": 10},
            {"step": 100, "seq_len": 128, "batch_size": 2, "peak_lr": 5e-4, "warmup_steps": 20},
        ],
        target=51_200,
    )
    assert lr_at(fresh, 100) == pytest.approx(1.20260422e-4, rel=1e-7) and fresh == two_stage


def test_a_stage_that_never_runs_passes_its_end_lr_on():
    cur = resolve_schedule(load_preset("aggressive", ["train.max_steps=3000"]))
    assert [s.steps for s in cur.stages] == [2000, 1000, 0, 0, 0, 0]
    assert cur.end_lrs[2:] == (cur.end_lrs[1],) * 4
    assert cur.end_lrs[1] == lr_at(cur, 2999)



# ------------------------------------------------------------------------------- stopping, mix
def test_max_steps_cuts_the_schedule():
    cur = resolve_schedule(load_preset("aggressive", ["train.max_steps=3000"]))
    assert cur.total_steps == 3000
    assert [s.steps for s in cur.stages] == [2000, 1000, 0, 0, 0, 0]
    assert sum("never runs" in w for w in cur.warnings) == 4
    assert state_at(cur, 2999, 2999 * 32_768).stage_index == 1
    end = state_at(cur, 3000, 3000 * 32_768)
    assert end.done and end.done_reason == "reached max_steps=3000" and end.stage_index == 1


def test_mix_normalised_inherited_and_uniform():
    cur = make(
        [
            {"step": 0, "seq_len": 64, "batch_size": 4, "mix": {"a": 3, "b": 1}},
            {"step": 10, "seq_len": 64, "batch_size": 4},
            {"step": 20, "seq_len": 64, "batch_size": 4, "mix": {"c": 1.0}},
        ],
        target=30 * 256,
        sources=("a", "b", "c"),
    )
    assert cur.stages[0].mix == {"a": 0.75, "b": 0.25, "c": 0.0}
    assert cur.stages[1].mix == cur.stages[0].mix
    assert cur.stages[2].mix == {"a": 0.0, "b": 0.0, "c": 1.0}
    assert "curriculum.stages[0].mix sums to 4; weights normalised to sum to 1" in cur.warnings
    assert state_at(cur, 5, 5 * 256).mix == {"a": 0.75, "b": 0.25, "c": 0.0}
    uniform = make([{"seq_len": 64, "batch_size": 4}], target=256, sources=("a", "b"))
    assert uniform.stages[0].mix == {"a": 0.5, "b": 0.5}


def test_warmup_tokens_is_adaptive_and_capped():
    cur = make(
        [
            {"tokens": "1M", "seq_len": 64, "batch_size": 16, "warmup_tokens": 10_240},  # 1024/step: 10 steps
            {"tokens": "1M", "seq_len": 64, "batch_size": 4, "warmup_tokens": 10_240, "warmup_cap": 25},  # 40 → 25
        ]
    )
    assert [s.warmup_steps for s in cur.stages] == [10, 25]
    assert "capped at 25" in cur.stages[1].warmup_note


def test_state_carries_what_the_trainer_needs():
    cur = resolve_schedule(load_preset("lr-extreme"))
    state = state_at(cur, 2500, 2500 * 16_384)
    assert (state.stage_index, state.stage_name, state.num_stages) == (1, "high", 5)
    assert (state.seq_len, state.batch_size, state.tokens_per_step, state.grad_clip) == (128, 128, 16_384, 2.0)
    assert state.peak_lr == pytest.approx(4.2e-3)
    assert (state.stage_start_step, state.stage_end_step) == (2000, 4000)
    assert state.mix == {"wiki": 1.0} and not state.done


# ------------------------------------------------------------------------- warmups and their reports
@pytest.mark.parametrize("mode", ["global", "wsd", "linear"])
@pytest.mark.parametrize("field,value", [("warmup_steps", 200), ("warmup_tokens", "50k")])
def test_stage_zeros_own_warmup_under_one_curve_is_refused_not_ignored(mode, field, value):
    # The run's one warmup is the curve's: a warmup written on stage 0 was dropped without a word (the LR at its
    # peak from step 0 with global_warmup_fraction 0). A later stage's warmup re-warms and stays allowed.
    from gradus.config.checks import validate

    raw = {"model": {"preset": "tiny", "max_seq_len": 256}, "data": {"sources": [{"name": "a", "builtin": "arithmetic"}]},
           "curriculum": {"schedule": mode, "target_tokens": 256_000,
                          "stages": [{"tokens": 128_000, "seq_len": 64, "batch_size": 4, field: value},
                                     {"tokens": 128_000, "seq_len": 128, "batch_size": 2, "warmup_steps": 10}]}}
    _, problems = validate(raw)
    assert len(problems) == 1 and problems[0].startswith(f"curriculum.stages[0].{field}={value}: under schedule {mode}")
    assert "move it to curriculum.global_warmup_tokens" in problems[0]
    del raw["curriculum"]["stages"][0][field]
    assert validate(raw)[1] == []
    raw["curriculum"]["schedule"] = "per_stage"
    raw["curriculum"]["stages"][0][field] = value
    assert validate(raw)[1] == []


def test_warmup_progress_follows_the_global_warmup_into_later_stages():
    # streaming-1b's 308-step global warmup runs into stage 1 (step 200 is ~65% of the way): the metric said 1.0.
    cur = resolve_schedule(load_preset("streaming-1b"))
    warm = cur.global_warmup_steps
    assert cur.stages[1].start_step < warm - 1
    step = cur.stages[1].start_step
    state = state_at(cur, step, tokens_at_step(cur, step))
    assert state.stage_index == 1 and state.warmup_progress == pytest.approx((step + 1) / warm)
    after = state_at(cur, warm, tokens_at_step(cur, warm))
    assert after.warmup_progress == 1.0


def test_per_stage_takes_its_default_first_warmup_from_global_warmup_tokens():
    cur = make([{"step": 0, "seq_len": 64, "batch_size": 4}], target=256_000, curriculum={"global_warmup_tokens": 25_600})
    assert cur.stages[0].warmup_steps == 100 and "global_warmup_tokens" in cur.stages[0].warmup_note


def test_a_wsd_cooldown_that_overlaps_the_warmup_is_reported_where_it_starts():
    cur = make([{"step": 0, "seq_len": 64, "batch_size": 4}], target=25_600, schedule="wsd",
               curriculum={"global_warmup_fraction": 0.5, "cooldown_fraction": 0.6})
    assert cur.total_steps == 100 and cur.global_warmup_steps == 50 and cur.cooldown_steps == 50
    assert cur.to_json()["cooldown_start_step"] == 50
    assert any("overlap" in w and "peaks at step 50" in w for w in cur.warnings)
    assert max(range(100), key=lambda s: lr_at(cur, s)) == 49  # the curve itself is as it was


def test_a_stage_whose_budget_falls_inside_the_last_step_of_the_one_before_says_so():
    cur = make([{"tokens": 10_000, "seq_len": 64, "tokens_per_batch": 8192},
                {"tokens": 4_000, "seq_len": 128, "tokens_per_batch": 8192},
                {"tokens": 100_000, "seq_len": 256, "tokens_per_batch": 8192}], schedule="wsd")
    [warning] = [w for w in cur.warnings if "never runs" in w]
    assert "its budget lies inside stage 0's last step (ending at 16,384 tokens)" in warning
    assert "target_tokens or max_steps" not in warning
