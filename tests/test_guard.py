"""Loss-spike guard: back-off and recovery, NaN skip, rollback after repeated bad steps."""

import math

import pytest

from gradus.config import GuardConfig
from gradus.train.guard import LossGuard


def fed(guard: LossGuard, losses, start=0):
    events = []
    for i, loss in enumerate(losses):
        e = guard.observe(start + i, loss, 1.0)
        if e:
            events.append(e)
    return events


def test_spike_halves_lr_and_recovers_linearly():
    g = LossGuard(GuardConfig(spike_factor=2.0, window=10, warmup_steps=5, lr_backoff=0.5, recover_steps=10))
    assert fed(g, [3.0] * 10) == []
    assert g.lr_factor(10) == 1.0
    (event,) = fed(g, [6.5], start=10)
    assert event.kind == "spike" and event.step == 10
    assert g.lr_factor(11) == pytest.approx(0.5)       # from the next step on
    assert g.lr_factor(16) == pytest.approx(0.75)      # halfway through recovery
    assert g.lr_factor(21) == pytest.approx(1.0)
    # The spike did not enter the running mean.
    assert g.running_mean() == pytest.approx(3.0)


def test_loss_below_factor_is_not_a_spike():
    g = LossGuard(GuardConfig(spike_factor=2.0, window=10, warmup_steps=5))
    assert fed(g, [3.0] * 10 + [5.9]) == []


def test_no_spike_judged_before_warmup():
    g = LossGuard(GuardConfig(spike_factor=2.0, window=10, warmup_steps=5))
    assert fed(g, [3.0, 3.0, 100.0]) == []


def test_nan_skips_then_rolls_back_and_halves_lr():
    g = LossGuard(GuardConfig(max_bad_steps=3))
    fed(g, [3.0] * 30)
    kinds = [g.observe(30 + i, math.nan, 1.0).kind for i in range(3)]
    assert kinds == ["skip", "skip", "rollback"]
    assert g.rollback_factor == 0.5
    assert g.lr_factor(100) == 0.5
    # An infinite gradient norm counts as bad too; a good step resets the run of bad ones.
    assert g.observe(40, 3.0, math.inf).kind == "skip"
    assert g.observe(41, 3.0, 1.0) is None
    assert g.bad_in_row == 0


def test_state_round_trip():
    g = LossGuard(GuardConfig(window=5, warmup_steps=2))
    fed(g, [2.0, 2.1, 1.9, 9.0])
    h = LossGuard(GuardConfig(window=5, warmup_steps=2))
    h.load_state_dict(g.state_dict())
    assert h.state_dict() == g.state_dict()
    assert h.lr_factor(5) == g.lr_factor(5) < 1.0
