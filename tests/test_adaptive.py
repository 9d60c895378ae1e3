"""Adaptive stages as data and as decisions (issue 30 §2), without training: the edited table
(gradus.curriculum.adaptive), the LR curve's token forms (gradus.curriculum.resolve), the controller's rules on
synthetic signals (gradus.train.controller), and the bad input an adaptive config is refused for
(gradus.config.checks). Run-level behaviour is in test_adaptive_run.py."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from builders import TINY_STAGES, tiny_config

from gradus.config import from_dict
from gradus.config.checks import validate
from gradus.curriculum import lr_at, resolve_schedule, state_at
from gradus.curriculum.adaptive import (
    Edit,
    accepted_edits,
    adapted_schedule,
    batch_rule_on,
    compute_at,
    envelope,
    envelope_lines,
    max_tokens_per_step,
    next_longer,
    stable_phase,
    token_curve,
)
from gradus.curriculum.resolve import steps_starting_below
from gradus.presets import preset_path
from gradus.train.controller import AdaptiveController, Branch

REPO = Path(__file__).resolve().parents[1]
# Nothing here reads the sources or the tokenizer: resolving a schedule only needs the config to validate.
UNREAD = Path("/nonexistent/gradus-test-data")
SQRT2 = 2 ** 0.5


def _raw(stages=None, **adaptive) -> dict:
    """The tiny config as raw data: stages s16/s32/s64 of 40 steps of 256 tokens each (30,720 tokens), wsd with a
    5% warmup (6 steps) and a 20% cooldown (24 steps), and an adaptive section (``adaptive`` merged into it)
    whose batch rule runs on one process (``enabled: true``; its default, auto, would not)."""
    stages = stages or [dict(s, tokens=40 * 256) for s in TINY_STAGES]
    d = tiny_config(UNREAD, str(UNREAD / "tokenizer.json"), stages=stages)
    section = {"check_every_tokens": 512,
               "batch": {"enabled": True, "rho": 0.01, "patience": 2, "min_samples": 2, "max_tokens_per_step": 1024,
                         "verify": {"fraction": 0.05}},
               "length": {"threshold": 0.9, "patience": 1}}
    for key, value in adaptive.items():
        section[key] = {**section[key], **value} if isinstance(value, dict) and key in section else value
    d["curriculum"].update(schedule="wsd", global_warmup_fraction=0.05, cooldown_fraction=0.2, adaptive=section)
    return d


def _cfg(stages=None, **adaptive):
    return from_dict(_raw(stages, **adaptive))


def _cells(schedule) -> dict:
    """Everything a run reads from a schedule (not the lr_note prose, which says how a peak was derived)."""
    return {
        "stages": [(s.index, s.name, s.seq_len, s.batch_size, s.tokens_per_step, s.start_step, s.end_step,
                    s.start_tokens, s.end_tokens, s.token_threshold, s.peak_lr, s.warmup_steps, s.decay,
                    s.min_lr_ratio, s.grad_clip, s.mix, s.rope_scaling, s.kind) for s in schedule.stages],
        "total_steps": schedule.total_steps, "total_tokens": schedule.total_tokens,
        "target_tokens": schedule.target_tokens, "global_warmup_steps": schedule.global_warmup_steps,
        "cooldown_steps": schedule.cooldown_steps, "end_lrs": schedule.end_lrs, "mode": schedule.mode,
        "floor_ratio": schedule.floor_ratio, "cooldown_shape": schedule.cooldown_shape,
    }


def _rows(schedule) -> list[tuple]:
    """(name, seq_len, batch, tokens/step, start step, end step, start tokens, end tokens, warmup) per stage."""
    return [(s.name, s.seq_len, s.batch_size, s.tokens_per_step, s.start_step, s.end_step, s.start_tokens,
             s.end_tokens, s.warmup_steps) for s in schedule.stages]


def _lr_at_tokens(schedule, tokens: int) -> float:
    """The LR of the step that starts at ``tokens``."""
    for s in schedule.stages:
        if s.start_tokens <= tokens < s.end_tokens:
            assert (tokens - s.start_tokens) % s.tokens_per_step == 0
            return lr_at(schedule, s.start_step + (tokens - s.start_tokens) // s.tokens_per_step)
    raise AssertionError(tokens)


# ------------------------------------------------------------------------------------- the edited table
def test_no_edits_reproduce_the_table_of_the_demo_preset_and_of_a_tiny_config():
    demo = yaml.safe_load(preset_path("demo").read_text(encoding="utf-8"))
    demo["curriculum"].update(schedule="wsd", cooldown_fraction=0.2,
                              adaptive={"batch": {"rho": 2.0, "max_tokens_per_step": 16384}})
    tiny = tiny_config(UNREAD, str(UNREAD / "tokenizer.json"))  # 6 + 5 + 5 steps: a cooldown of ceil(3.2) = 4
    tiny["curriculum"].update(schedule="wsd", global_warmup_fraction=0.1, cooldown_fraction=0.2, adaptive={})
    # Budgets that are no whole number of steps (the stages overshoot them), two tokens per step, a target past
    # the budgets (the last stage runs on): the token forms of the curve must still give the same steps.
    odd = _raw(stages=[dict(TINY_STAGES[0], tokens=1000), dict(TINY_STAGES[1], tokens=1500, tokens_per_batch=512),
                       dict(TINY_STAGES[2], tokens=1300)])
    odd["curriculum"].update(global_warmup_fraction=0.3, cooldown_fraction=0.3, target_tokens=5000)
    for raw, stages, steps in ((demo, 4, 600), (tiny, 3, 16), (odd, 3, None)):
        cfg = from_dict(raw)
        base = resolve_schedule(cfg)
        assert len(base.stages) == stages and base.global_warmup_steps > 0 and base.cooldown_steps > 1
        if steps is not None:
            assert base.total_steps == steps
        assert _cells(adapted_schedule(cfg, ())) == _cells(base)
        assert _cells(adapted_schedule(cfg, (), base)) == _cells(base)
    # The demo's numbers, so that an equality of two wrong tables cannot pass: 600 steps of 4,096 tokens,
    # a warmup of ceil(0.05 × 600) = 30 steps and a cooldown of 120.
    demo_base = resolve_schedule(from_dict(demo))
    assert (demo_base.global_warmup_steps, demo_base.cooldown_steps) == (30, 120)
    assert [(s.start_step, s.end_step) for s in demo_base.stages] == [(0, 60), (60, 150), (150, 270), (270, 600)]
    assert token_curve(demo_base) == (30 * 4096, 120 * 4096)


def test_a_batch_edit_in_the_middle_of_a_stage_splits_it_there():
    stages = [dict(s, tokens=40 * 256) for s in TINY_STAGES]
    stages[1]["warmup_steps"] = 4  # the split stage has a warmup of its own: its head keeps it, the tail has none
    cfg = _cfg(stages=stages, batch={"alpha": 0.25})
    base = resolve_schedule(cfg)
    assert _rows(base) == [("s16", 16, 16, 256, 0, 40, 0, 10240, 0), ("s32", 32, 8, 256, 40, 80, 10240, 20480, 4),
                           ("s64", 64, 4, 256, 80, 120, 20480, 30720, 0)]
    assert (base.global_warmup_steps, base.cooldown_steps) == (6, 24)
    edited = adapted_schedule(cfg, [Edit("batch", 15360, 2)])  # step 60, half way through s32
    assert _rows(edited) == [
        ("s16", 16, 16, 256, 0, 40, 0, 10240, 0),
        ("s32", 32, 8, 256, 40, 60, 10240, 15360, 4),
        ("s32×2", 32, 16, 512, 60, 70, 15360, 20480, 0),
        ("s64×2", 64, 8, 512, 70, 90, 20480, 30720, 0),
    ]
    peak = 3e-3
    assert [s.peak_lr for s in edited.stages] == [peak, peak, peak * 2 ** 0.25, peak * 2 ** 0.25]
    assert [s.token_threshold for s in edited.stages] == [0, 10240, 15360, 20480]
    assert edited.total_tokens == base.total_tokens == edited.target_tokens == 30720
    assert edited.total_steps == 90
    # The LR curve stays in tokens: the warmup keeps its 6 steps (1,536 tokens), the cooldown starts at the same
    # 24,576 tokens (24 steps of 256 before, 12 of 512 now).
    assert edited.global_warmup_steps == 6
    assert stable_phase(base) == stable_phase(edited) == (1536, 24576)
    assert edited.cooldown_steps == 12 and edited.total_steps - edited.cooldown_steps == 78
    assert token_curve(edited) == token_curve(base) == (1536, 6144)
    # Before the edit the LR is the table's, step for step; from it on, × 2^alpha until the cooldown.
    for tokens in (0, 1280, 10240, 11264, 15104):
        assert _lr_at_tokens(edited, tokens) == _lr_at_tokens(base, tokens), tokens
    for tokens in (15360, 20480, 24064):
        assert _lr_at_tokens(edited, tokens) == pytest.approx(_lr_at_tokens(base, tokens) * 2 ** 0.25), tokens


def test_a_length_edit_ends_the_running_stage_and_the_next_keeps_its_end():
    cfg = _cfg()
    edited = adapted_schedule(cfg, [Edit("length", 5120)])
    assert _rows(edited) == [("s16", 16, 16, 256, 0, 20, 0, 5120, 0), ("s32", 32, 8, 256, 20, 80, 5120, 20480, 0),
                             ("s64", 64, 4, 256, 80, 120, 20480, 30720, 0)]
    assert [s.peak_lr for s in edited.stages] == [3e-3] * 3
    # After a batch edit the length edit ends the split tail; both apply in token order, whatever the list's.
    both = adapted_schedule(cfg, [Edit("length", 5120), Edit("batch", 2560, 2)])
    assert _rows(both) == [("s16", 16, 16, 256, 0, 10, 0, 2560, 0), ("s16×2", 16, 32, 512, 10, 15, 2560, 5120, 0),
                           ("s32×2", 32, 16, 512, 15, 45, 5120, 20480, 0),
                           ("s64×2", 64, 8, 512, 45, 65, 20480, 30720, 0)]
    assert next_longer(both, 0) is None  # the tail of a split has the same length: the length rule's only move is on
    assert next_longer(both, 1).name == "s32×2" and next_longer(both, 3) is None


def test_edits_that_cannot_apply_raise_and_edits_round_trip_as_json():
    cfg = _cfg()
    with pytest.raises(ValueError, match="no stage to end there"):
        adapted_schedule(cfg, [Edit("length", 25600)])  # in the last stage
    with pytest.raises(ValueError, match="no stage to end there"):
        adapted_schedule(cfg, [Edit("length", 10240)])  # where s32 starts anyway: nothing of s16 to end
    with pytest.raises(ValueError, match="by 2 or more, not 1"):
        adapted_schedule(cfg, [Edit("batch", 5120, 1)])
    for edit in (Edit("batch", 4096, 2), Edit("length", 6144), Edit("batch", 8192, 4)):
        data = json.loads(json.dumps(edit.to_json()))
        assert Edit.from_json(data) == edit
    assert Edit.from_json({"kind": "length", "tokens": "6144"}) == Edit("length", 6144, 1)
    with pytest.raises(ValueError, match="unknown adaptive edit kind 'seq'"):
        Edit.from_json({"kind": "seq", "tokens": 1})
    records = [{"kind": "batch", "verdict": "skipped"}, {"kind": "batch", "verdict": "accepted",
                                                         "edit": {"kind": "batch", "tokens": 4096, "factor": 2}},
               {"kind": "batch", "verdict": "rejected"},
               {"kind": "length", "verdict": "accepted", "edit": {"kind": "length", "tokens": 6144, "factor": 1}}]
    assert accepted_edits(records) == [Edit("batch", 4096, 2), Edit("length", 6144, 1)]


def test_the_envelope_lists_every_reachable_shape_once():
    stages = [{"name": "a", "tokens": 4096, "seq_len": 16, "batch_size": 16},    # 256 tokens per step
              {"name": "b", "tokens": 4096, "seq_len": 32, "batch_size": 16},    # 512: more than a's
              {"name": "c", "tokens": 4096, "seq_len": 64, "batch_size": 4}]     # 256: fewer than b's
    cfg = _cfg(stages=stages)
    base = resolve_schedule(cfg)
    shapes = envelope(cfg, base)
    got = [(s.seq_len, s.batch_size) for s in shapes]
    # a: 256, 512, 1024; b: its own 512 and 1024 (never below its table); c: its own 256, and 512 and 1024 once an
    # earlier stage (or itself) doubled.
    assert sorted(got) == [(16, 16), (16, 32), (16, 64), (32, 16), (32, 32), (64, 4), (64, 8), (64, 16)]
    assert len(set(got)) == len(got)
    assert [s.index for s in shapes] == list(range(len(shapes)))
    assert all(s.tokens_per_step == s.seq_len * s.batch_size <= 1024 for s in shapes)
    # Every table a run can reach is inside it.
    for edits in ([Edit("batch", 512, 2)], [Edit("batch", 512, 2), Edit("batch", 2048, 2)],
                  [Edit("batch", 6144, 2)], [Edit("batch", 9216, 2)], [Edit("length", 1024), Edit("batch", 2048, 2)]):
        for s in adapted_schedule(cfg, edits).stages:
            assert (s.seq_len, s.batch_size) in got, (edits, s)
    assert max_tokens_per_step(cfg, base) == 1024
    unbounded = _raw(stages=stages)
    del unbounded["curriculum"]["adaptive"]["batch"]["max_tokens_per_step"]
    assert max_tokens_per_step(from_dict(unbounded), base) == 8 * 256
    off = _cfg(stages=stages, batch={"enabled": False})
    assert [(s.seq_len, s.batch_size) for s in envelope(off, base)] == [(16, 16), (32, 16), (64, 4)]


def test_a_doubled_batch_is_rounded_to_the_stages_batch_multiple_in_the_table_and_the_envelope():
    # s16 at 16 × 16 = 256 tokens per step, then s48 at 16 × 48 = 768: two doublings in s16 leave a floor of 1,024
    # tokens per step, 21.3 rows of 48; the table rounds a derived batch to its multiple of 8, so the run does too.
    stages = [dict(TINY_STAGES[0], tokens=40 * 256),
              dict(TINY_STAGES[1], seq_len=48, tokens=40 * 768, tokens_per_batch=768)]
    cfg = _cfg(stages, batch={"max_tokens_per_step": 1024, "verify": {"enabled": False}})
    base = resolve_schedule(cfg)
    shapes = [(s.seq_len, s.batch_size) for s in envelope(cfg, base)]
    assert all(b % 8 == 0 for length, b in shapes if length == 48), shapes
    edited = adapted_schedule(cfg, [Edit("batch", 8 * 256, 2), Edit("batch", 12 * 256, 2)], base)
    assert [(s.seq_len, s.batch_size) for s in edited.stages] == [(16, 16), (16, 32), (16, 64), (48, 24)]
    assert all((s.seq_len, s.batch_size) in shapes for s in edited.stages)
    # Its LR follows the batch it runs at (24 rows of 48 against the table's 16): × 1.5^alpha, named so.
    assert edited.stages[-1].name.endswith("×1.5")
    assert edited.stages[-1].peak_lr == pytest.approx(base.stages[1].peak_lr * 1.5 ** 0.5)


def test_compute_at_weights_each_stages_tokens_by_its_cost():
    cfg = _cfg()
    base = resolve_schedule(cfg)
    cost = {16: 1.0, 32: 1.5, 64: 2.5}.get
    assert compute_at(base, 0, cost) == 0.0
    assert compute_at(base, 4096, cost) == 4096.0
    assert compute_at(base, 15000, cost) == 10240 * 1.0 + (15000 - 10240) * 1.5
    assert compute_at(base, 30720, cost) == 10240 * (1.0 + 1.5 + 2.5)
    assert compute_at(base, 31744, cost) == 10240 * (1.0 + 1.5 + 2.5) + 1024 * 2.5  # past the end: the last shape
    # In tokens: a batch edit does not change it; a length edit does, from its token count on.
    assert compute_at(adapted_schedule(cfg, [Edit("batch", 5120, 2)]), 15000, cost) == 10240 + 4760 * 1.5
    assert compute_at(adapted_schedule(cfg, [Edit("length", 5120)]), 15000, cost) == 5120 + 9880 * 1.5


def test_warmup_and_cooldown_in_tokens_count_the_steps_that_start_below():
    stages = [{"name": "a", "tokens": 2560, "seq_len": 16, "batch_size": 16},   # 10 steps of 256: 0..2,560
              {"name": "b", "tokens": 5120, "seq_len": 32, "batch_size": 16}]   # 10 steps of 512: ..7,680
    raw = tiny_config(UNREAD, str(UNREAD / "tokenizer.json"), stages=stages)
    raw["curriculum"].update(schedule="wsd", global_warmup_tokens=700, cooldown_tokens=1500)
    schedule = resolve_schedule(from_dict(raw))
    bounds = [(s.start_step, s.end_step, s.start_tokens, s.end_tokens, s.token_threshold) for s in schedule.stages]
    assert bounds == [(0, 10, 0, 2560, 0), (10, 20, 2560, 7680, 2560)]
    table = {0: 0, 1: 1, 256: 1, 257: 2, 700: 3, 2559: 10, 2560: 10, 2561: 11, 3072: 11, 3073: 12, 6180: 18,
             7679: 20, 7680: 20, 9000: 20}
    assert {t: steps_starting_below(bounds, t) for t in table} == table
    # 700 tokens: the steps starting at 0, 256 and 512. The last 1,500 tokens start at 6,180: the steps starting at
    # 6,656 and 7,168 (the one at 6,144 starts before), so a cooldown of 2.
    assert schedule.global_warmup_steps == 3
    assert schedule.cooldown_steps == 2
    raw["curriculum"].update(global_warmup_tokens=2561, cooldown_tokens=5121)
    schedule = resolve_schedule(from_dict(raw))
    # 7,680 - 5,121 = 2,559: 10 steps start below it, but the warmup's 11 steps reach into them, and the cooldown
    # starts once the warmup ends (the schedule says so, and warns): 9.
    assert (schedule.global_warmup_steps, schedule.cooldown_steps) == (11, 9)
    assert any("warmup (11 steps) and cooldown (10 steps) overlap" in w for w in schedule.warnings)
    raw["curriculum"].update(global_warmup_tokens=1, cooldown_tokens=1)
    schedule = resolve_schedule(from_dict(raw))
    assert (schedule.global_warmup_steps, schedule.cooldown_steps) == (1, 1)


# ------------------------------------------------------------------------------------------ the controller
class Driver:
    """Steps a controller through a run as the trainer does, with the signals the test gives: the noise scale and
    its sample count at each step, a validation loss where the test evaluates, the main-run losses in a window."""

    def __init__(self, cfg, cost=lambda seq_len: 1.0, step: int = 0, tokens: int = 0, world_size: int = 1):
        self.published: list[list[dict]] = []
        self.base = resolve_schedule(cfg)
        self.c = AdaptiveController(cfg, self.base, cost, publish=lambda r: self.published.append(json.loads(json.dumps(r))),
                                    world_size=world_size)
        self.step, self.tokens = step, tokens
        self.held_out: list[list[float]] | None = None  # the main run's held-out rows at a window's end

    def run(self, b_simple=None, samples=100, val=None, loss=None):
        """One step: returns what after_step returned. Where the step ends a verification window, the main run's
        held-out rows (:attr:`held_out`) go with it, as the trainer evaluates them there."""
        state = state_at(self.c.schedule, self.step, self.tokens)
        self.step, self.tokens = self.step + 1, self.tokens + state.tokens_per_step
        if loss is not None:
            self.c.observe_step(self.tokens, loss)
        held_out = self.held_out if self.c.concluding(self.tokens) else None
        return self.c.after_step(self.step, self.tokens, state, b_simple, samples, val, held_out=held_out)

    def to(self, step, **signals):
        """Steps until ``step`` steps are done; no step may return a branch."""
        while self.step < step:
            assert self.run(**signals) is None


def test_by_default_the_batch_rule_runs_over_two_or_more_processes_and_not_on_one():
    raw = _raw(batch={"verify": {"enabled": False}})
    del raw["curriculum"]["adaptive"]["batch"]["enabled"]
    cfg = from_dict(raw)
    assert cfg.curriculum.adaptive.batch.enabled == "auto"
    assert (batch_rule_on(cfg, 1), batch_rule_on(cfg, 2), batch_rule_on(cfg, None)) == (False, True, None)
    base = resolve_schedule(cfg)
    # One process prepares only the table's shapes; two prepare the doublings too, as gradus schedule does.
    assert [(s.seq_len, s.batch_size) for s in envelope(cfg, base, 1)] == [(s.seq_len, s.batch_size) for s in base.stages]
    assert len(envelope(cfg, base, 2)) == len(envelope(cfg, base)) > len(base.stages)
    one, two, unknown = (envelope_lines(cfg, base, w) for w in (1, 2, None))
    assert any("batch: off on one process (enabled: auto)" in line and "enabled: true" in line for line in one)
    assert not any("B_simple" in line for line in one)
    assert any("B_simple" in line for line in two) and not any("off on one process" in line for line in two)
    assert any("auto: in a run over two or more data-parallel processes, not on one" in line for line in unknown)
    # With the noise scale far above every threshold, one process never checks; two double at the first chance.
    alone, pair = Driver(cfg, world_size=1), Driver(cfg, world_size=2)
    for d in (alone, pair):
        d.to(40, b_simple=1e9, samples=100)
    assert alone.c.records == [] and alone.c.edits == [] and alone.c.batch_checks == 0
    # (after the warmup's 6 steps, 2 checks of patience, every 512 tokens; then up to the bound, 1,024 tokens/step)
    assert pair.c.edits == [Edit("batch", 8 * 256, 2), Edit("batch", 8 * 256 + 2 * 512, 2)]
    assert "adaptive/batch_threshold" not in alone.c.metrics(256) and "adaptive/batch_threshold" in pair.c.metrics(256)


def test_the_batch_rule_needs_patience_checks_in_a_row_with_enough_samples():
    cfg = _cfg(batch={"patience": 3, "min_samples": 5, "verify": {"enabled": False}})
    d = Driver(cfg)
    c = d.c
    d.to(7)  # no samples yet: no check counts
    assert c.records == [] and c.batch_checks == 0
    threshold = 0.01 * 256
    counts = []
    # (b_simple, samples) at steps 8..22; checks are the even steps (every 512 tokens at 256 per step)
    plan = {8: (10.0, 10), 9: (10.0, 10), 10: (10.0, 10), 12: (threshold * 0.9, 10), 14: (10.0, 10),
            16: (10.0, 4), 18: (math.nan, 10), 20: (10.0, 10), 22: (10.0, 10)}
    for step in range(8, 23):
        b, samples = plan.get(step, (None, 0))
        assert d.run(b_simple=b, samples=samples) is None
        counts.append((step, c.batch_checks, len(c.edits)))
    assert counts == [(8, 1, 0), (9, 1, 0), (10, 2, 0), (11, 2, 0), (12, 0, 0), (13, 0, 0), (14, 1, 0), (15, 1, 0),
                      (16, 1, 0), (17, 1, 0), (18, 1, 0), (19, 1, 0), (20, 2, 0), (21, 2, 0), (22, 0, 1)]
    assert c.edits == [Edit("batch", 22 * 256, 2)]
    [record] = c.records
    assert record["verdict"] == "accepted" and record["step"] == 22 and record["tokens"] == 5632
    assert record["signal"] == {"b_simple": 10.0, "tokens_per_step": 256, "rho": 0.01, "checks": 3}
    assert record["proposal"] == {"tokens_per_step": 512, "lr_factor": SQRT2}
    assert record["edit"] == {"kind": "batch", "tokens": 5632, "factor": 2}
    # Verify disabled: the schedule changed at once, from the token count on.
    before, after = state_at(c.schedule, 21, 5376), state_at(c.schedule, 22, 5632)
    assert (before.tokens_per_step, after.tokens_per_step, after.batch_size) == (256, 512, 32)
    assert after.peak_lr == pytest.approx(3e-3 * SQRT2)
    assert d.published[-1] == c.records


@pytest.mark.parametrize("fraction, steps", [(0.05, 4), (0.01, 4), (0.07, 5)])
def test_a_verified_proposal_returns_a_branch_of_whole_doubled_steps(fraction, steps):
    cfg = _cfg(batch={"patience": 1, "min_samples": 1, "verify": {"fraction": fraction}})
    d = Driver(cfg, step=7, tokens=7 * 256)  # past the 6-step warmup
    branch = d.run(b_simple=10.0)
    assert isinstance(branch, Branch)
    # fraction × 30,720 tokens, rounded up to whole steps of 2 × 256, at least 4 of them
    assert branch.until == 2048 + steps * 512
    assert (branch.until - 2048) % 512 == 0 and (branch.until - 2048) // 512 >= 4
    assert steps == max(4, math.ceil(fraction * 30720 / 512))
    assert state_at(branch.schedule, 8, 2048).tokens_per_step == 512  # the branch runs the proposal
    assert state_at(d.c.schedule, 8, 2048).tokens_per_step == 256  # the main run does not, yet
    assert d.c.edits == [] and d.c.records == [] and d.published == []
    assert d.c.due(branch.until, 256) and not d.c.due(branch.until - 256, 256)


def _verification(branch_losses, main_losses, branch_rows=None, main_rows=None):
    """A proposal at step 8 (2,048 tokens) verified over 2,048 tokens: the branch's 4 steps of 512 and the main
    run's 8 steps of 256, and each side's held-out rows at the window's end ([loss sum, tokens] each; None for
    the branch: as a checkpoint from before that comparison carries). Returns the driver after the window's
    last step."""
    cfg = _cfg(batch={"patience": 1, "min_samples": 1, "verify": {"fraction": 0.05, "z": 2.0}})
    d = Driver(cfg, step=7, tokens=7 * 256)
    branch = d.run(b_simple=10.0)
    assert branch is not None and branch.until == 4096
    d.c.branch_done([(2048 + 512 * (i + 1), v) for i, v in enumerate(branch_losses)], branch_rows,
                    None if branch_rows is None else 16)
    d.held_out = main_rows
    d.c.observe_step(2048, 99.0)  # before the window (the proposal's own step): not the main side
    for i, loss in enumerate(main_losses):
        assert d.c.concluding(d.tokens + 256) == (i == len(main_losses) - 1)
        got = d.run(b_simple=None, loss=loss)
        assert got is None and (d.c.pending is None) == (i == len(main_losses) - 1)
    d.c.observe_step(4352, 99.0)  # after it: ignored
    return d


# The main run's training losses in the window: 3.01 on average over its second half.
MAIN = [9.0, 1.0, 9.0, 1.0, 3.00, 3.02, 3.00, 3.02]  # the first half (wild) does not count
# Held-out rows of 16 tokens: the main run's mean loss 3.0 (row means 2.9, 3.1, 3.0, 3.0).
MAIN_ROWS = [[2.9 * 16, 16], [3.1 * 16, 16], [3.0 * 16, 16], [3.0 * 16, 16]]


def _held(means):
    return [[m * 16, 16] for m in means]


def test_a_branch_no_worse_than_the_main_run_on_the_held_out_rows_is_accepted():
    # Its training loss over the window is behind (3.10 against 3.01: the main run's smaller batch has just
    # stepped on the text before what it predicts); on held-out rows it is level (2.91, 3.09, 3.02, 2.98).
    d = _verification([7.0, 0.5, 3.10, 3.10], MAIN, _held([2.91, 3.09, 3.02, 2.98]), MAIN_ROWS)
    c = d.c
    assert c.edits == [Edit("batch", 4096, 2)]  # from where the main run is, at the window's end
    [record] = c.records
    assert record["verdict"] == "accepted" and record["step"] == 16 and record["proposed_at_step"] == 8
    comparison = record["comparison"]
    assert comparison["branch_tokens"] == 2048
    assert comparison["held_out_rows"] == 4 and comparison["held_out_seq_len"] == 16
    assert comparison["branch_loss"] == pytest.approx(3.0) and comparison["main_loss"] == pytest.approx(3.0)
    se = math.sqrt(statistics.variance([0.01, -0.01, 0.02, -0.02]) / 4)
    assert comparison["margin"] == pytest.approx(2 * se)
    # The training-loss comparison, kept for the record.
    assert comparison["joined_branch_loss"] == pytest.approx(3.10)
    assert comparison["every_main_loss"] == pytest.approx(3.01)
    assert state_at(c.schedule, 16, 4096).tokens_per_step == 512
    assert state_at(c.schedule, 15, 3840).tokens_per_step == 256
    assert c.metrics() == {"adaptive/edits": 1, "adaptive/branch_tokens": 2048}
    assert record["branch_tokens_total"] == 2048


def test_a_branch_behind_on_the_held_out_rows_beyond_the_margin_is_rejected_and_rho_rises():
    # Ahead in training loss, 0.05 behind on every held-out row (a margin of 0: no scatter in the difference).
    d = _verification([3.0, 3.0, 2.9, 2.9], MAIN, _held([2.95, 3.15, 3.05, 3.05]), MAIN_ROWS)
    c = d.c
    assert c.edits == [] and c.pending is None
    [record] = c.records
    assert record["verdict"] == "rejected" and "edit" not in record
    assert record["comparison"]["branch_loss"] == pytest.approx(3.05)
    assert record["comparison"]["margin"] == pytest.approx(0.0, abs=1e-9)
    # The proposal read B_simple 10 at 256 tokens per step (0.039 batches, rho 0.01): the threshold becomes
    # twice that reading, 0.078, not merely twice rho (0.02).
    assert record["comparison"]["rho_from_now"] == pytest.approx(2 * 10 / 256) and c.rho_scale == pytest.approx(7.8125)
    assert state_at(c.schedule, 16, 4096).tokens_per_step == 256
    assert c.metrics() == {"adaptive/edits": 0, "adaptive/branch_tokens": 2048}
    # The threshold a step's record carries for the report: rho as raised by the rejection, × its tokens per step.
    assert c.metrics(256)["adaptive/batch_threshold"] == pytest.approx(20.0)
    # The next checks compare with it: 19.9 does not count (doubling rho would have counted it), 20.1 does.
    assert d.run(b_simple=19.9) is None and d.run(b_simple=19.9) is None and c.batch_checks == 0
    assert any(isinstance(d.run(b_simple=20.1), Branch) for _ in range(2))  # patience 1: the next proposal


def test_the_held_out_margin_is_z_standard_errors_of_the_row_by_row_difference():
    # 0.02 behind on average, the rows' differences scattered (+0.12, -0.08, +0.06, -0.02): se 0.0442, margin 0.088.
    d = _verification([3.0] * 4, MAIN, _held([3.02, 3.02, 3.06, 2.98]), MAIN_ROWS)
    [record] = d.c.records
    se = math.sqrt(statistics.variance([0.12, -0.08, 0.06, -0.02]) / 4)
    assert record["comparison"]["margin"] == pytest.approx(2 * se)
    assert record["verdict"] == "accepted"


SE = math.sqrt(statistics.variance([3.01, 3.03]) / 2 + statistics.variance(MAIN[4:]) / 4)


@pytest.mark.parametrize("joined, verdict", [([7.0, 0.5, 3.01, 3.03], "accepted"), ([3.0, 3.0, 3.05, 3.07], "rejected")])
def test_a_pending_branch_from_an_older_checkpoint_is_judged_on_its_training_losses(joined, verdict):
    d = _verification(joined, MAIN, None, MAIN_ROWS)  # mean 3.02 ≤ 3.01 + 2 × se (0.0231); 3.06 above it
    [record] = d.c.records
    assert record["verdict"] == verdict
    assert record["comparison"]["main_loss"] == pytest.approx(3.01)
    assert record["comparison"]["margin"] == pytest.approx(2 * SE) and "held_out_rows" not in record["comparison"]


@pytest.mark.parametrize("verify", [False, True])
def test_no_doubling_is_decided_at_a_stages_last_token(verify):
    # s16 runs 40 steps of 256 tokens to 10,240, then s32 and s64 at 512 tokens per step, the bound 512: a
    # doubling decided at s16's end would land on s32 (at 1,024 tokens per step, past the bound and outside the
    # shapes prepared). Without verification the check at 10,240 is skipped; with it, a window that would end
    # there (proposed at 8,192: four doubled steps of 512) is not proposed.
    stages = [dict(TINY_STAGES[0], tokens=40 * 256),
              dict(TINY_STAGES[1], tokens=20 * 512, tokens_per_batch=512),
              dict(TINY_STAGES[2], tokens=20 * 512, tokens_per_batch=512)]
    cfg = _cfg(stages, batch={"patience": 1, "min_samples": 1, "max_tokens_per_step": 512,
                              "verify": {"enabled": verify, "fraction": 0.05}})
    d = Driver(cfg, step=39 if not verify else 31, tokens=(39 if not verify else 31) * 256)
    assert d.run(b_simple=1e9) is None
    assert d.c.edits == []
    [record] = d.c.records
    assert record["verdict"] == "skipped" and record["tokens"] == (10240 if not verify else 8192)
    assert record["reason"] == ("the stage ends here, and a doubling would apply to the next one" if not verify
                                else "the verification window would not end before the stage does")
    shapes = {(s.seq_len, s.batch_size) for s in envelope(cfg, d.base, 1)}
    while d.step < 60:
        d.run(b_simple=1e9)
        assert state_at(d.c.schedule, d.step, d.tokens).tokens_per_step <= 512
        assert {(s.seq_len, s.batch_size) for s in d.c.schedule.stages} <= shapes
    # A batch edit written at a stage's first token (by hand, or an older run) doubles the stage that ran up to it.
    edited = adapted_schedule(cfg, [Edit("batch", 10240, 2)], d.base)
    assert [(s.seq_len, s.tokens_per_step) for s in edited.stages] == [(16, 256), (32, 512), (64, 512)]


def test_a_verdict_leaves_the_batch_check_of_its_step_to_the_next_one():
    # The window ends at 4,096 tokens, a multiple of check_every (512): the step that reaches the verdict must not
    # also check on the table before it, which recorded a false skip and counted a stale reading toward the next
    # proposal (patience 2: after an accepted doubling the next needs two fresh checks).
    cfg = _cfg(batch={"patience": 2, "min_samples": 1, "verify": {"fraction": 0.05, "z": 2.0}})
    d = Driver(cfg, step=5, tokens=5 * 256)
    assert d.run(b_simple=10.0) is None                  # step 6 at 1,536 tokens: the first check above rho × 256
    assert d.run(b_simple=10.0) is None                  # step 7: no check (every 512 tokens)
    branch = d.run(b_simple=10.0)                         # step 8 at 2,048 tokens: the second in a row
    assert isinstance(branch, Branch) and branch.until == 4096
    d.c.branch_done([(2048 + 512 * (i + 1), 3.0) for i in range(4)], MAIN_ROWS, 16)
    d.held_out = MAIN_ROWS
    for loss in MAIN:
        d.run(b_simple=10.0, loss=loss)
    assert d.tokens == 4096
    assert [r["verdict"] for r in d.c.records] == ["accepted"]
    assert d.c.batch_checks == 0
    assert d.run(b_simple=10.0) is None  # 4,608: one fresh check, not yet two


def test_a_proposal_outside_the_stable_phase_is_recorded_once_as_skipped():
    cfg = _cfg(batch={"patience": 1, "min_samples": 1})
    d = Driver(cfg)
    d.to(5, b_simple=10.0)  # checks at 512 and 1,024 tokens: in the 1,536-token warmup
    [record] = d.c.records
    assert record["verdict"] == "skipped" and record["step"] == 2 and record["proposal"] is None
    assert record["reason"].startswith("outside the stable phase")
    assert d.published == [d.c.records]
    # The cooldown starts at 24,576: a proposal whose 2,048-token window would reach into it is skipped, once.
    late = Driver(cfg, step=88, tokens=88 * 256)
    late.to(120, b_simple=10.0)
    assert [(r["step"], r["tokens"], r["verdict"]) for r in late.c.records] == [(90, 23040, "skipped")]
    assert late.c.records[0]["reason"] == record["reason"] and late.c.edits == []
    # The last check before it still proposes (22,528 + 2,048 = 24,576).
    edge = Driver(cfg, step=87, tokens=87 * 256)
    assert isinstance(edge.run(b_simple=10.0), Branch) and edge.c.records == []
    # A doubling past max_tokens_per_step is another reason: said once, too.
    capped = Driver(_cfg(batch={"patience": 1, "min_samples": 1, "max_tokens_per_step": 256}), step=7, tokens=7 * 256)
    capped.to(20, b_simple=10.0)
    assert [(r["step"], r["reason"]) for r in capped.c.records] == [
        (8, "512 tokens per step would pass max_tokens_per_step 256")]


def _length_driver(threshold=0.5, patience=2, window=2, z=0.0, interval="t"):
    # window 2, z 0: the gain between the last two evaluations, taken as it is (the rule's simplest form)
    return Driver(_cfg(length={"threshold": threshold, "patience": patience, "window": window, "z": z,
                               "interval": interval}))


def test_the_length_rule_switches_after_patience_evaluations_below_the_threshold():
    d = _length_driver()
    c = d.c
    # (tokens, validation loss): compute = tokens (cost 1), so the gain per doubling is Δloss / log2(t2 / t1)
    evals = {512: 5.0, 1024: 4.0,      # first gain 1.0 per doubling
             2048: 3.6,                # 0.4: below 0.5 × 1.0 (1)
             4096: 2.9,                # 0.7: above, the count restarts
             6144: 2.8,                # 0.1 / log2(1.5) = 0.17: below (1)
             8192: 2.75}               # 0.05 / log2(4/3) = 0.12: below (2): switch
    for step in range(1, 33):
        tokens = step * 256
        d.run(val=evals.get(tokens))
        assert c.edits == ([Edit("length", 8192)] if tokens >= 8192 else []), tokens
        if tokens == 2048:
            assert c.length["below"] == 1
        if tokens == 4096:
            assert c.length["below"] == 0 and c.length["first_gain"] == 1.0
    [record] = c.records
    assert record["kind"] == "length" and record["verdict"] == "accepted" and record["step"] == 32
    assert record["signal"]["ratio"] == pytest.approx(0.05 / math.log2(8192 / 6144))
    assert record["signal"]["evaluations"] == 2 and record["signal"]["first_gain"] == 1.0
    assert record["proposal"] == {"seq_len": 32, "planned_at_tokens": 10240}
    assert _rows(c.schedule)[:2] == [("s16", 16, 16, 256, 0, 32, 0, 8192, 0), ("s32", 32, 8, 256, 32, 80, 8192, 20480, 0)]
    assert state_at(c.schedule, 32, 8192).seq_len == 32
    assert d.published[-1] == c.records


def test_the_length_rule_does_not_fire_at_the_tables_own_boundary():
    d = _length_driver(patience=2)
    evals = {512: 5.0, 1024: 4.0, 2048: 3.6, 10240: 3.5}  # the second evaluation below is s16's last step
    for step in range(1, 41):
        d.run(val=evals.get(step * 256))
    assert d.c.length["seq_len"] == 16 and d.c.length["below"] == 2  # the rule's condition holds there
    assert d.c.closest["length"] == pytest.approx((0.1 / math.log2(10240 / 2048)) / 0.5)  # the lowest ratio / 0.5
    assert d.c.edits == [] and d.c.records == [] and d.published == []
    assert _cells(d.c.schedule) == _cells(d.base)


def _midway():
    """A controller with an accepted length decision and a batch proposal under verification, its branch run and
    three main-run steps of its window observed."""
    cfg = _cfg(batch={"patience": 1, "min_samples": 1}, length={"threshold": 0.5, "patience": 1, "window": 2, "z": 0.0})
    d = Driver(cfg)
    evals = {512: 5.0, 1024: 4.0, 2048: 3.9}  # first gain 1.0, then 0.1: below half of it, switch at 2,048
    for step in range(1, 9):
        assert d.run(val=evals.get(step * 256)) is None
    assert d.c.edits == [Edit("length", 2048)]
    d.to(11)
    branch = d.run(b_simple=10.0)  # step 12, 3,072 tokens, in s32 (2,048..20,480)
    assert branch is not None and branch.until == 3072 + 2048
    d.c.branch_done([(3072 + 512 * i, 4.0 - 0.01 * i) for i in range(1, 5)], _held([3.9, 4.0]), 32)
    d.held_out = _held([3.95, 4.0])
    for loss in (4.1, 4.05, 4.0):
        assert d.run(loss=loss) is None
    return d, cfg


def test_state_dict_restores_schedule_records_and_a_pending_verification():
    d, cfg = _midway()
    c = d.c
    state = c.state_dict()
    assert json.loads(json.dumps(state)) == state  # plain data
    published = []
    fresh = AdaptiveController(cfg, d.base, lambda seq_len: 1.0, publish=lambda r: published.append(list(r)))
    assert fresh.edits == [] and published == []
    fresh.load_state_dict(state)
    assert published == [c.records]  # decisions.jsonl rewritten on restore
    assert fresh.edits == c.edits and fresh.records == c.records and fresh.pending == c.pending
    assert fresh.pending["branch"] and fresh.pending["held_out"] and len(fresh.pending["main"]) == 3
    assert _cells(fresh.schedule) == _cells(c.schedule)
    assert fresh.state_dict() == state
    # Both go on alike: the window ends at step 20 (5,120 tokens).
    twin = Driver(cfg, step=d.step, tokens=d.tokens)
    twin.c = fresh
    twin.held_out = d.held_out
    for loss in (3.95, 3.9, 3.9, 3.85, 3.8):
        assert d.run(loss=loss) is None and twin.run(loss=loss) is None
    assert c.pending is None and fresh.pending is None
    assert c.records[-1]["kind"] == "batch" and c.records[-1]["verdict"] in ("accepted", "rejected")
    assert fresh.records == c.records and fresh.edits == c.edits
    assert published[-1] == fresh.records
    # A controller restored twice from one snapshot gets the same (load copies it).
    again = AdaptiveController(cfg, d.base, lambda seq_len: 1.0)
    again.load_state_dict(state)
    assert again.records == state["records"] and again.pending == state["pending"]


def test_publish_is_called_with_the_records_at_every_change():
    d, _ = _midway()
    # One record so far (the length decision): published once, with it; the proposal itself publishes nothing.
    assert d.published == [d.c.records] and len(d.c.records) == 1
    for loss in (3.95, 3.9, 3.9, 3.85, 3.8):
        d.run(loss=loss)
    assert len(d.published) == 2 and d.published[-1] == d.c.records and len(d.c.records) == 2
    d.c.reset()
    assert d.published[-1] == [] and d.c.edits == [] and _cells(d.c.schedule) == _cells(d.base)


def test_a_length_decision_never_lands_inside_a_pending_verification_window():
    cfg = _cfg(batch={"patience": 1, "min_samples": 1}, length={"threshold": 0.5, "patience": 1, "window": 2, "z": 0.0})
    d = Driver(cfg)
    for step in range(1, 8):
        assert d.run(val={512: 5.0, 1024: 4.0}.get(step * 256)) is None  # first gain 1.0 per doubling
    branch = d.run(b_simple=10.0)  # step 8, 2,048 tokens: a window to 4,096 that fits in s16 (..10,240)
    assert branch is not None and branch.until == 4096
    assert d.c.pending is not None
    d.c.branch_done([(2048 + 512 * i, 3.9) for i in range(1, 5)])
    d.run(loss=3.99)
    d.run(loss=3.99, val=3.99)  # 2,560 tokens: gain 0.01 / log2(2.5), far below half the first: the rule fires
    p = d.c.pending
    if p is not None:  # (a fix may also drop the verification; then nothing is compared across the switch)
        running = next(s for s in d.c.schedule.stages if s.start_tokens <= p["start"] < s.end_tokens)
        assert running.end_tokens >= p["until"], (running.name, running.end_tokens, p["until"])


# ------------------------------------------------------------------------------------------ bad input
def _bad(mutate) -> list[str]:
    raw = _raw()
    mutate(raw)
    cfg, problems = validate(raw)
    assert cfg is None
    return problems


def _stages_by_step(raw):
    raw["curriculum"]["target_tokens"] = 30720
    for st, start in zip(raw["curriculum"]["stages"], (0, 40, 80), strict=True):
        del st["tokens"]
        st["step"] = start


def _shortening(raw):
    stages = raw["curriculum"]["stages"]
    stages[1]["seq_len"], stages[2]["seq_len"] = 64, 32


BAD = {
    "per_stage": (lambda r: r["curriculum"].update(schedule="per_stage"),
                  ["curriculum.schedule=per_stage:", "set curriculum.schedule: wsd"]),
    "global": (lambda r: r["curriculum"].update(schedule="global"),
               ["curriculum.schedule=global:", "curriculum.adaptive.batch", "set schedule: wsd or adaptive.batch.enabled: false"]),
    # auto may run the batch rule (under torchrun), so the config must allow it wherever it is launched
    "global_auto": (lambda r: (r["curriculum"].update(schedule="global"),
                               r["curriculum"]["adaptive"]["batch"].update(enabled="auto")),
                    ["curriculum.schedule=global:", "set schedule: wsd or adaptive.batch.enabled: false"]),
    "enabled_word": (lambda r: r["curriculum"]["adaptive"]["batch"].update(enabled="sometimes"),
                     ["curriculum.adaptive.batch.enabled", "sometimes"]),
    "step": (_stages_by_step, ["curriculum.stages[0].step:", "write each stage's tokens: instead of step:"]),
    "shortens": (_shortening, ["curriculum.stages[2].seq_len=32 is shorter than stage 1's 64", "order the stages by length"]),
    "batch_ramp": (lambda r: r["curriculum"].update(batch_ramp={"direction": "grow"}),
                   ["curriculum.batch_ramp:", "drop batch_ramp or set adaptive.batch.enabled: false"]),
    "max_steps": (lambda r: r["train"].update(max_steps=50),
                  ["train.max_steps=50:", "stop by curriculum.target_tokens or set adaptive.batch.enabled: false"]),
    "seq_batch": (lambda r: r["curriculum"]["stages"][1].update(lr_rule="seq_batch"),
                  ["curriculum.stages[1].lr_rule=seq_batch", "use lr_multiplier or peak_lr"]),
    "max_tokens_per_step": (lambda r: r["curriculum"]["adaptive"]["batch"].update(max_tokens_per_step=128),
                            ["curriculum.adaptive.batch.max_tokens_per_step=128 is below stage 0's 256",
                             "raise it to at least 512"]),
    "rho_zero": (lambda r: r["curriculum"]["adaptive"]["batch"].update(rho=0),
                 ["curriculum.adaptive.batch.rho=0:", "must be above 0"]),
    "rho_negative": (lambda r: r["curriculum"]["adaptive"]["batch"].update(rho=-1.5),
                     ["curriculum.adaptive.batch.rho=-1.5:", "must be above 0"]),
    "alpha_above": (lambda r: r["curriculum"]["adaptive"]["batch"].update(alpha=1.5),
                    ["curriculum.adaptive.batch.alpha=1.5:", "must be in [0, 1]"]),
    "alpha_below": (lambda r: r["curriculum"]["adaptive"]["batch"].update(alpha=-0.1),
                    ["curriculum.adaptive.batch.alpha=-0.1:", "must be in [0, 1]"]),
    # 1 − 0.05 (warmup) − 0.5 (cooldown): a stable phase of 45% of the run, no room for a 45% branch
    "verify_fraction": (lambda r: (r["curriculum"].update(cooldown_fraction=0.5),
                                   r["curriculum"]["adaptive"]["batch"].update(verify={"fraction": 0.45})),
                        ["curriculum.adaptive.batch.verify.fraction=0.45:", "stable phase (45% of the run",
                         "lower it"]),
    # the cooldown written in tokens: 25,000 of the 30,720 leave a stable phase of 14% of the run
    "verify_fraction_tokens": (lambda r: (r["curriculum"].update(cooldown_tokens=25000),
                                          r["curriculum"]["adaptive"]["batch"].update(verify={"fraction": 0.3})),
                               ["curriculum.adaptive.batch.verify.fraction=0.3:", "stable phase (14% of the run"]),
    "noise_scale_off": (lambda r: r["train"].update(noise_scale={"enabled": False}),
                        ["train.noise_scale.enabled=false:", "set train.noise_scale.enabled: true or "
                         "adaptive.batch.enabled: false"]),
    "check_every": (lambda r: (r["curriculum"].update(target_tokens=30720),
                               r["curriculum"]["adaptive"].update(check_every_tokens=30720)),
                    ["curriculum.adaptive.check_every_tokens=30720 is not below target_tokens=30720",
                     "check several times a run"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_adaptive_input_is_one_line_naming_field_value_and_fix(case):
    mutate, parts = BAD[case]
    problems = _bad(mutate)
    assert len(problems) == 1, problems
    line = problems[0]
    assert "\n" not in line and line.startswith(parts[0]), line
    for part in parts[1:]:
        assert part in line, (part, line)


def test_the_same_configs_fixed_are_valid():
    """The bad inputs above are refused for what they say, not for something else of the base config."""
    raw = _raw()
    assert validate(raw)[1] == []
    raw["curriculum"].update(schedule="global")
    raw["curriculum"]["adaptive"]["batch"] = {"enabled": False}  # the length rule alone needs no stable phase
    assert validate(raw)[1] == []
    raw = _raw()
    raw["curriculum"]["adaptive"]["batch"]["verify"] = {"fraction": 0.44}
    raw["curriculum"].update(cooldown_fraction=0.5)
    assert validate(raw)[1] == []
    raw = _raw(batch={"verify": {"fraction": 0.1}})
    raw["curriculum"]["cooldown_tokens"] = 25000
    assert validate(raw)[1] == []
    raw = _raw(batch={"enabled": "auto"})  # auto runs the batch rule only where the launch gives it processes
    raw["train"]["noise_scale"] = {"enabled": False}
    assert validate(raw)[1] == []


def test_a_problem_with_a_value_written_as_8k_is_one_line():
    def mutate(raw):
        raw["curriculum"]["target_tokens"] = "4k"
        raw["curriculum"]["adaptive"]["check_every_tokens"] = "8k"
    problems = _bad(mutate)
    assert len(problems) == 1, problems


def test_check_every_tokens_past_the_stage_budgets_is_refused():
    problems = _bad(lambda r: r["curriculum"]["adaptive"].update(check_every_tokens=100_000))  # the run: 30,720
    assert len(problems) == 1 and problems[0].startswith("curriculum.adaptive.check_every_tokens=100000"), problems


def test_gradus_train_refuses_a_bad_adaptive_config_in_one_line(tmp_path):
    raw = _raw()
    raw["curriculum"]["schedule"] = "global"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "gradus", "train", "--config", str(bad), "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gradus: error: ") and "curriculum.schedule=global" in lines[0]
    assert "set schedule: wsd" in lines[0] and "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


def test_gain_per_doubling_is_the_fitted_slope_and_its_standard_error():
    from gradus.train.controller import gain_per_doubling

    gain, se = gain_per_doubling([[512, 5.0], [1024, 4.0]])  # two points: the old two-point gain, no noise
    assert (gain, se) == (1.0, 0.0)
    gain, se = gain_per_doubling([[1024, 4.0], [2048, 3.5], [4096, 3.0], [8192, 2.5]])  # on a line
    assert gain == pytest.approx(0.5) and se == pytest.approx(0.0, abs=1e-12)
    # x = 0, 1, 2, 3 (log2 of compute / 1024), y = 4.0, 3.4, 3.1, 2.5: slope -0.48, residuals .03 -.09 .09 -.03,
    # Σ(x - 1.5)² = 5, two degrees of freedom
    gain, se = gain_per_doubling([[1024, 4.0], [2048, 3.4], [4096, 3.1], [8192, 2.5]])
    assert gain == pytest.approx(0.48)
    assert se == pytest.approx(math.sqrt((0.03**2 + 0.09**2 + 0.09**2 + 0.03**2) / 2 / 5))
    assert gain_per_doubling([[1024, 4.0], [1024, 3.9]]) is None  # compute did not increase
    assert gain_per_doubling([[0, 4.0], [1024, 3.9]]) is None


# (tokens, validation loss) of one stage: a steady fall of 0.25 per doubling with one evaluation that went up
# (the noise that made two-point gains switch in the 1.3M-token benchmark runs: decisions with negative ratios).
NOISY = {512: 5.0, 1024: 4.75, 2048: 4.5, 2560: 4.42, 3072: 4.5, 3584: 4.31, 4096: 4.26, 4608: 4.21}


def test_one_evaluation_that_went_up_switches_a_two_point_rule():
    d = _length_driver(window=2, z=0.0, patience=1)
    for step in range(1, 21):
        d.run(val=NOISY.get(step * 256))
    assert d.c.edits == [Edit("length", 3072)]  # on the bump: a negative gain
    assert d.c.records[0]["signal"]["ratio"] < 0


def test_the_fitted_rule_is_not_moved_by_one_noisy_evaluation_but_follows_a_real_plateau():
    steady = _length_driver(window=4, z=2.0, patience=1)
    for step in range(1, 21):
        steady.run(val=NOISY.get(step * 256))
    assert steady.c.edits == [] and steady.c.records == []
    # A real plateau: the stage gains 0.5 per doubling at first, then nothing, with small noise.
    plateau = {512: 5.0, 1024: 4.5, 2048: 4.0, 4096: 3.5, 4608: 3.49, 5120: 3.5, 5632: 3.49, 6144: 3.49,
               6656: 3.48, 7168: 3.49}
    d = _length_driver(window=4, z=2.0)
    for step in range(1, 33):
        d.run(val=plateau.get(step * 256))
    [record] = d.c.records
    assert record["kind"] == "length" and record["verdict"] == "accepted"
    assert d.c.edits == [Edit("length", 6144)]  # two fitted gains below (5,632 and 6,144), before s16's end at 10,240
    sig = record["signal"]
    assert sig["window"] == 4 and sig["first_gain"] == pytest.approx(0.5)
    assert sig["ratio_upper"] < 0.5 and sig["ratio_upper"] >= sig["ratio"]


def test_the_end_of_run_line_says_how_close_each_rule_came_when_nothing_was_decided():
    """An adaptive run that followed its table says why: the highest noise scale over the batch threshold at a
    counted check, the lowest length gain ratio over its threshold; after decisions, their counts."""
    cfg = _cfg(batch={"patience": 3, "min_samples": 1, "verify": {"enabled": False}})
    d = Driver(cfg)
    assert d.c.summary() == ("adaptive: no decision, the run followed its table: the batch rule never counted a check "
                             "(too few noise-scale samples per stage); the length rule never had a stage's first gain "
                             "to compare with")
    threshold = 0.01 * 256
    for b in (0.5 * threshold, 0.75 * threshold, 0.25 * threshold):  # checks on even steps, below the threshold
        d.run(b_simple=b)
        d.run(b_simple=b)
    assert d.c.records == [] and d.c.closest["batch"] == pytest.approx(0.75)
    assert "the noise scale peaked at 0.75× its threshold (rho × tokens per step) at a check" in d.c.summary()
    again = Driver(cfg)
    again.c.load_state_dict(d.c.state_dict())  # carried by the checkpoint
    assert again.c.summary() == d.c.summary()
    d.c.closest["length"] = 1.3
    assert "the length gain stayed above its threshold (at least 1.30× it, with its noise)" in d.c.summary()
    d.c.closest["length"] = 0.43  # below the threshold, but not for `patience` evaluations where it could switch
    assert (f"the length gain fell to 0.43× its threshold (with its noise), but not for {cfg.curriculum.adaptive.length.patience} "
            "evaluations in a row where a longer length was left to begin") in d.c.summary()
    rejected = _verification([3.0, 3.0, 3.05, 3.07], MAIN)
    assert rejected.c.summary() == ("adaptive: 0 decision(s) (0 batch, 0 length), 1 proposal(s) rejected by their "
                                    "branch, 2,048 branch tokens; decisions.jsonl has each")


def test_student_t_quantiles_match_the_table_and_the_length_rule_widens_z_for_a_four_point_fit():
    """t(0.975) for 1, 2, 5 and 30 degrees of freedom as printed in every table; z 2 over a 4-evaluation fit (2
    degrees of freedom) is 4.53 standard errors, over 6 evaluations 2.87; interval normal keeps z."""
    from gradus.curriculum.adaptive import length_critical_value, student_t_quantile

    for dof, value in ((1, 12.7062), (2, 4.3027), (5, 2.5706), (30, 2.0423)):
        assert student_t_quantile(0.975, dof) == pytest.approx(value, abs=2e-4)
    assert length_critical_value(2.0, 4, "t") == pytest.approx(4.5265, abs=2e-4)  # (2p-1)/sqrt(2p(1-p)), p = 0.97725
    assert length_critical_value(2.0, 6, "t") == pytest.approx(2.8693, abs=2e-4)
    assert length_critical_value(2.0, 4, "normal") == 2.0 and length_critical_value(2.0, 2, "t") == 2.0
    assert length_critical_value(0.0, 4, "t") == 0.0
    with pytest.raises(ValueError):
        student_t_quantile(0.4, 2)


def test_a_gain_that_fell_within_its_noise_switches_under_the_normal_interval_but_not_under_t():
    """A stage that gained 0.5 per doubling, then about a quarter of that with ±0.03 of noise: the fitted gain's
    ratio is 0.23 and its normal upper bound (z 2 standard errors from a 4-point fit) 0.41, below 0.5, so the
    rule of the 1.3M benchmark runs switched; Student's t for the fit's 2 degrees of freedom widens it past
    0.5 and the stage goes on to its table boundary."""
    evals = {512: 5.0, 1024: 4.5, 2048: 4.0, 4096: 3.5,
             4608: 3.45, 5120: 3.44, 5632: 3.40, 6144: 3.41, 6656: 3.36, 7168: 3.37}
    runs = {}
    for interval in ("normal", "t"):
        d = _length_driver(window=4, z=2.0, patience=1, interval=interval)
        for step in range(1, 33):
            d.run(val=evals.get(step * 256))
        runs[interval] = d.c
    assert runs["normal"].edits == [Edit("length", 6144)]
    sig = runs["normal"].records[0]["signal"]
    assert sig["ratio"] == pytest.approx(0.2336, abs=1e-3) and sig["ratio_upper"] == pytest.approx(0.4150, abs=1e-3)
    assert sig["critical_value"] == 2.0
    assert runs["t"].edits == [] and runs["t"].records == []


def test_the_decision_line_names_the_held_out_comparison():
    from gradus.train.console import decision_line

    d = _verification([7.0, 0.5, 3.10, 3.10], MAIN, _held([2.91, 3.09, 3.02, 2.98]), MAIN_ROWS)
    line = decision_line(d.c.records[0])
    assert line.startswith("adaptive: step 16 (4,096 tokens): batch 256 → 512 tokens/step")
    assert ": accepted (held-out loss at 16 3.0000 vs main 3.0000 ± 0.0183, 2,048 branch tokens); LR × 1.41" in line
    old = _verification([7.0, 0.5, 3.01, 3.03], MAIN, None, MAIN_ROWS)
    assert "(branch loss 3.0200 vs main 3.0100 ± 0.0231, 2,048 branch tokens)" in decision_line(old.c.records[0])


def test_a_verification_without_held_out_rows_is_rejected_with_the_fix():
    d = _verification([3.0] * 4, MAIN, [], [])
    [record] = d.c.records
    assert record["verdict"] == "rejected" and "branch_loss" not in record["comparison"]
    assert record["reason"].startswith("no held-out rows to compare on: hold out documents (data.validation)")
