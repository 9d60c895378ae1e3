"""gradus.experiments.tuning: the LR grid at the first seed, its ×2 extensions at an edge, and which LRs run at
the other seeds (the first seed's best alone, or its best few with the lowest median winning), driven by a
hand-made table of final losses instead of training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gradus.experiments.analysis import RunRecord
from gradus.experiments.runner import Task
from gradus.experiments.tuning import LRTuner, finalists_text, tune_all


def _drive(losses: dict[tuple[float, int], float], grid, seeds, *, max_extensions=2, finalists=1):
    """Tune one arm against ``losses[(lr, seed)]``; return the tuned arm and every (lr, seed) that ran."""
    ran: list[tuple[float, int]] = []

    def make(lr: float, seed: int) -> Task:
        return Task("arm", lr, seed, {}, Path(f"lr{lr:g}-seed{seed}"))

    def run(first: list[Task], on_done) -> None:
        queue = list(first)
        while queue:
            task = queue.pop(0)
            ran.append((task.lr, task.seed))
            queue += on_done(RunRecord("arm", task.lr, task.seed, final_val_loss=losses[(task.lr, task.seed)]))

    tuner = LRTuner("arm", grid, seeds, max_extensions, make, finalists)
    return tune_all({"arm": tuner}, run)["arm"], ran


def test_the_grid_extends_at_an_edge_and_the_best_lr_alone_runs_at_the_other_seeds():
    losses = {(1e-3, 0): 5.5, (2e-3, 0): 5.4, (4e-3, 0): 5.3, (8e-3, 0): 5.2, (1.6e-2, 0): 5.6,
              (8e-3, 1): 5.25, (8e-3, 2): 5.22}
    tuned, ran = _drive(losses, [1e-3, 2e-3, 4e-3], [0, 1, 2])
    assert tuned.best_lr == 8e-3 and tuned.inside
    assert sorted(tuned.grid) == [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]  # two extensions upwards
    assert [r.final_val_loss for r in tuned.runs] == [5.2, 5.25, 5.22]
    assert [s for lr, s in ran if s > 0] == [1, 2] and all(lr == 8e-3 for lr, s in ran if s > 0)
    assert list(tuned.finalists) == [8e-3]


def test_with_two_finalists_a_lucky_first_seed_loses_to_the_lower_median():
    # The 1M-token WSD baseline of BENCHMARKS.md in small: 8e-3 best at seed 0 by 0.05, far worse at 1 and 2.
    losses = {(4e-3, 0): 5.295, (8e-3, 0): 5.250, (1.6e-2, 0): 5.871,
              (8e-3, 1): 5.540, (8e-3, 2): 5.689, (4e-3, 1): 5.31, (4e-3, 2): 5.33,
              (2e-3, 0): 5.36, (2e-3, 1): 5.35, (2e-3, 2): 5.40}
    one, _ = _drive(losses, [4e-3, 8e-3, 1.6e-2], [0, 1, 2], finalists=1)
    assert one.best_lr == 8e-3
    two, ran = _drive(losses, [4e-3, 8e-3, 1.6e-2], [0, 1, 2], finalists=2)
    # 4e-3 wins by median at the grid's lower edge, so 2e-3 runs at every seed; it loses, and 4e-3 is inside.
    assert two.best_lr == 4e-3 and two.inside is True
    assert [r.final_val_loss for r in two.runs] == [5.295, 5.31, 5.33]
    assert {lr: [r.final_val_loss for r in runs] for lr, runs in two.finalists.items()} == {
        2e-3: [5.36, 5.35, 5.40], 4e-3: [5.295, 5.31, 5.33], 8e-3: [5.250, 5.540, 5.689]}
    assert sorted(two.grid) == [2e-3, 4e-3, 8e-3, 1.6e-2]  # the extension's first-seed run is a grid run
    assert sorted((lr, s) for lr, s in ran if s > 0) == [(2e-3, 1), (2e-3, 2), (4e-3, 1), (4e-3, 2), (8e-3, 1),
                                                         (8e-3, 2)]
    assert (1.6e-2, 1) not in ran  # the third LR stays at the first seed
    assert sorted((r.lr, r.seed) for r in two.all_runs) == sorted(ran)  # every run once, for the calibration
    spent, _ = _drive(losses, [4e-3, 8e-3, 1.6e-2], [0, 1, 2], finalists=2, max_extensions=0)
    assert spent.best_lr == 4e-3 and spent.inside is False  # no extension left: the edge is reported


def test_a_median_winner_at_the_edge_extends_until_inside_within_the_same_budget():
    # The WikiText-2 1024 recheck of BENCHMARKS.md in small: seed 0 prefers 4e-3, the median prefers 2e-3,
    # then 1e-3 beats that too, and 5e-4 is worse: two extensions after the finalists.
    losses = {(2e-3, 0): 5.52, (4e-3, 0): 5.50, (8e-3, 0): 5.70, (4e-3, 1): 5.60, (4e-3, 2): 5.59,
              (2e-3, 1): 5.55, (2e-3, 2): 5.54, (1e-3, 0): 5.51, (1e-3, 1): 5.53, (1e-3, 2): 5.52,
              (5e-4, 0): 5.60, (5e-4, 1): 5.61, (5e-4, 2): 5.62}
    tuned, ran = _drive(losses, [2e-3, 4e-3, 8e-3], [0, 1, 2], finalists=2, max_extensions=2)
    assert tuned.best_lr == 1e-3 and tuned.inside
    assert sorted(tuned.finalists) == [5e-4, 1e-3, 2e-3, 4e-3]
    assert [lr for lr, s in ran if s == 0] == [2e-3, 4e-3, 8e-3, 1e-3, 5e-4]
    once, _ = _drive(losses, [2e-3, 4e-3, 8e-3], [0, 1, 2], finalists=2, max_extensions=1)
    assert once.best_lr == 1e-3 and not once.inside  # the budget ran out at the edge: reported, not hidden


def test_a_diverged_lr_is_never_a_finalist_and_a_diverging_seed_loses():
    losses = {(1e-3, 0): 5.4, (2e-3, 0): 5.3, (4e-3, 0): math.inf,
              (2e-3, 1): math.inf, (1e-3, 1): 5.45}
    tuned, ran = _drive(losses, [1e-3, 2e-3, 4e-3], [0, 1], finalists=3, max_extensions=0)
    assert (4e-3, 1) not in ran
    assert tuned.best_lr == 1e-3  # 2e-3 diverged at seed 1: its median is not finite


def test_the_reports_losses_and_finalists_line_name_every_lr_and_mark_divergence():
    losses = {(1e-3, 0): 5.4, (2e-3, 0): 5.3, (4e-3, 0): math.inf,
              (2e-3, 1): math.inf, (1e-3, 1): 5.45}
    tuned, _ = _drive(losses, [1e-3, 2e-3, 4e-3], [0, 1], finalists=2, max_extensions=0)
    assert tuned.grid_losses() == {"0.001": 5.4, "0.002": 5.3, "0.004": None}
    assert tuned.finalist_losses() == {"0.002": [5.3, None], "0.001": [5.4, 5.45]}
    assert finalists_text(tuned.finalist_losses()) == (
        "finalists, final loss per seed (the lowest median chosen): 0.001: 5.400/5.450; 0.002: 5.300/div")
    assert finalists_text({"0.001": [5.4, 5.45]}) is None  # one LR at every seed: nothing was chosen among


def test_fewer_than_one_finalist_is_refused():
    with pytest.raises(ValueError, match="finalists must be at least 1"):
        LRTuner("arm", [1e-3, 2e-3, 4e-3], [0], 0, lambda lr, seed: None, finalists=0)
