"""What follows step k (gradus/train/cadence.py), as a table: one row per step and configuration, the
decisions typed in. (evaluation_due by tokens over a batch ramp: tests/test_eval_ema.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gradus.train.cadence import Due, checkpoint_due, crossed_multiple, due_after


def cfg(log_every=10, eval_every=50, eval_every_tokens=None, checkpoint_every=100, checkpoint_every_tokens=None,
        eval_at_stage_change=True):
    """The config fields the cadence reads (it reads nothing else)."""
    return SimpleNamespace(
        logging=SimpleNamespace(log_every=log_every),
        train=SimpleNamespace(eval_every=eval_every, eval_every_tokens=eval_every_tokens,
                              checkpoint_every=checkpoint_every, checkpoint_every_tokens=checkpoint_every_tokens,
                              eval_at_stage_change=eval_at_stage_change))


def stage(index, tokens_per_step=100, done=False):
    """The fields of a StageState the cadence reads."""
    return SimpleNamespace(stage_index=index, tokens_per_step=tokens_per_step, done=done)


S0, S1, END = stage(0), stage(1), stage(1, done=True)
FIELDS = ("log", "evaluate", "checkpoint", "stage_end", "stop_at_step", "evaluate_now")

# (config, step, tokens, tokens at the last checkpoint, state, next, --stop-at-step) -> the decisions in FIELDS
TABLE = [
    (cfg(), 7, 700, 0, S0, S0, None, (False, False, False, False, False, False)),  # nothing: read late
    (cfg(), 10, 1000, 0, S0, S0, None, (True, False, False, False, False, False)),  # log
    (cfg(), 50, 5000, 0, S0, S0, None, (True, True, False, False, False, True)),  # log + evaluate
    (cfg(), 100, 10_000, 0, S0, S0, None, (True, True, True, False, False, True)),  # + checkpoint
    (cfg(), 33, 3300, 0, S0, S1, None, (False, False, True, True, False, True)),  # stage end: checkpoint, evaluate
    (cfg(eval_at_stage_change=False), 33, 3300, 0, S0, S1, None, (False, False, True, True, False, False)),
    (cfg(), 61, 6100, 0, S1, END, None, (True, False, True, True, False, True)),  # the run's end: a stage end, logged
    (cfg(), 12, 1200, 0, S0, S0, 12, (False, False, False, False, True, False)),  # --stop-at-step
    (cfg(), 13, 1300, 0, S0, S0, 12, (False, False, False, False, True, False)),  # (past it: still stops)
    (cfg(checkpoint_every=None), 100, 10_000, 0, S0, S0, None, (True, True, False, False, False, True)),
    # by tokens: an evaluation where the count crosses a multiple of eval_every_tokens in this step
    (cfg(eval_every_tokens=250), 3, 300, 0, S0, S0, None, (False, True, False, False, False, True)),
    (cfg(eval_every_tokens=250), 4, 400, 0, S0, S0, None, (False, False, False, False, False, False)),
    (cfg(eval_every_tokens=250), 5, 500, 0, S0, S0, None, (False, True, False, False, False, True)),
    # by tokens: a checkpoint once checkpoint_every_tokens passed since the last one
    (cfg(checkpoint_every=None, checkpoint_every_tokens=1000), 14, 1400, 500, S0, S0, None,
     (False, False, False, False, False, False)),
    (cfg(checkpoint_every=None, checkpoint_every_tokens=1000), 15, 1500, 500, S0, S0, None,
     (False, False, True, False, False, False)),
]


@pytest.mark.parametrize("row", TABLE, ids=[f"row{i}" for i in range(len(TABLE))])
def test_what_follows_a_step(row):
    config, step, tokens, last_ckpt, state, nxt, stop_at, expected = row
    due = due_after(config, step, tokens, last_ckpt, state, nxt, stop_at)
    assert tuple(getattr(due, f) for f in FIELDS) == expected
    # Every decision above is a sync point; without one (and no signal) a lagged run reads the step late.
    assert due.sync(signalled=False) == any(expected[:5])
    assert due.read_now(lagged=True, signalled=False) == any(expected[:5])
    assert due.read_now(lagged=False, signalled=False) and due.read_now(lagged=True, signalled=True)


def test_the_cadence_is_stateless():
    """Asked twice, or by a resumed run, it answers alike: it reads only its arguments."""
    args = (cfg(eval_every_tokens=250), 5, 500, 0, S0, S0, None)
    assert due_after(*args) == due_after(*args) == Due(False, True, False, False, False, True)


def test_checkpoint_due_at_stage_ends_steps_and_tokens():
    train = cfg(checkpoint_every=4, checkpoint_every_tokens=None).train
    assert [s for s in range(1, 10) if checkpoint_due(train, s, s * 10, 0, stage_end=False)] == [4, 8]
    assert checkpoint_due(train, 3, 30, 0, stage_end=True)
    tokens = cfg(checkpoint_every=None, checkpoint_every_tokens=100).train
    assert not checkpoint_due(tokens, 9, 190, 100, stage_end=False)
    assert checkpoint_due(tokens, 10, 200, 100, stage_end=False)


# (tokens so far, tokens in the step, every) -> whether the step crossed a multiple of `every` tokens
CROSSINGS = [
    (100, 100, 250, False),  # 0 -> 100: no multiple reached
    (250, 100, 250, True),  # 150 -> 250: lands on one
    (300, 100, 250, True),  # 200 -> 300: passes one
    (350, 100, 250, False),  # 250 -> 350: started on it, crossed nothing new
    (500, 250, 250, True),  # 250 -> 500: a step as long as the cadence crosses once per step
    (1000, 800, 250, True),  # 200 -> 1000: a step longer than the cadence (a grown batch) still counts once
    (1024, 64, 1024, True),  # 960 -> 1024: the controller's check cadence, landing exactly
    (1088, 64, 1024, False),  # 1024 -> 1088
    (7, 1, 1, True),  # every token: every step
]


@pytest.mark.parametrize("tokens,step_tokens,every,expected", CROSSINGS)
def test_crossed_multiple(tokens, step_tokens, every, expected):
    """The one "this step crossed a multiple of N tokens" rule, shared by the evaluation cadence and the adaptive
    controller's checks (gradus/train/controller.py): a table."""
    assert crossed_multiple(tokens, step_tokens, every) is expected
