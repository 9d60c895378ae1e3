"""Learning-rate tuning done the same way for every arm: a grid at the first seed, extended ×2 at an edge
until the best value lies strictly inside (up to ``max_extensions`` times), then the best LR at the other
seeds. A small state machine, so the runs of every arm share one pool of workers.

With ``finalists`` > 1 the best few LRs of the first seed all run at every seed and the one with the lowest
median final loss wins: the first seed alone can favour an LR near the edge of stability that lags at other
seeds (seen at 1M tokens in BENCHMARKS.md: WSD at 8e-3 best at seed 0 by 0.05, then 0.29 and 0.44 worse at
seeds 1 and 2), and a target set by such a lucky seed flatters or hurts an arm by chance. When the median
winner sits at an edge of the grid (the first seed preferred a neighbour), the grid extends there again: the
next LR beyond the edge runs at every seed and joins the finalists, within the same ``max_extensions``, so the
chosen LR is inside its grid as a tuned baseline's must be (done by hand twice in BENCHMARKS.md before it was
automatic)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import median

from gradus.experiments.analysis import RunRecord, finite
from gradus.experiments.runner import Task


@dataclass
class Tuned:
    """An arm after tuning: every grid run (first seed), the finalists' runs and the chosen LR's runs at all
    seeds."""

    name: str
    """The arm."""
    grid: dict[float, RunRecord]
    """Final-loss run of every LR tried, at the first seed."""
    best_lr: float
    """The finalist with the lowest median final validation loss over seeds (with one finalist: the first
    seed's best)."""
    runs: list[RunRecord]
    """The best LR's runs, one per seed, in seed order."""
    inside: bool
    """Whether the best LR lies strictly inside the grid (False: it is at an edge the extensions did not pass)."""
    finalists: dict[float, list[RunRecord]] = field(default_factory=dict)
    """Every LR run at all seeds (the best ``finalists`` of the first seed) and its runs in seed order; with
    one finalist, just the best LR."""

    @property
    def all_runs(self) -> list[RunRecord]:
        """Every run this arm made, once each: the grid and the finalists' other seeds."""
        runs = [*self.grid.values(), *(r for rs in self.finalists.values() for r in rs), *self.runs]
        return list({(r.lr, r.seed): r for r in runs}.values())

    def grid_losses(self) -> dict[str, float | None]:
        """The first seed's final loss of every LR tried, by LR in ascending order (None: diverged), as the
        reports write it."""
        return {f"{lr:g}": finite(run.final_val_loss) for lr, run in sorted(self.grid.items())}

    def finalist_losses(self) -> dict[str, list[float | None]]:
        """Every finalist's final loss per seed (None: diverged), as the reports write it."""
        return {f"{lr:g}": [finite(r.final_val_loss) for r in runs] for lr, runs in self.finalists.items()}


def finalists_text(losses: dict[str, list[float | None]]) -> str | None:
    """One line naming each finalist (ascending LR) with its final loss per seed (``div`` where it diverged),
    or None when only one LR ran at every seed (nothing to choose among). Both ``gradus compare`` and the
    benchmark print it, so the two tables read alike."""
    if len(losses) < 2:
        return None
    return "finalists, final loss per seed (the lowest median chosen): " + "; ".join(
        f"{lr}: " + "/".join("div" if x is None else f"{x:.3f}" for x in losses[lr])
        for lr in sorted(losses, key=float))


def default_grid(lr: float) -> tuple[float, ...]:
    """Half, one and twice an LR: the starting grid around a configured value."""
    return tuple(float(f"{lr * f:.3g}") for f in (0.5, 1.0, 2.0))


class LRTuner:
    """The tuning of one arm: ``start()`` gives the grid's tasks, ``finish(record)`` the tasks a finished
    run unlocks (an extension or the other seeds), ``result()`` the tuned arm once ``done``."""

    def __init__(self, name: str, grid: Sequence[float], seeds: Sequence[int], max_extensions: int,
                 make_task: Callable[[float, int], Task], finalists: int = 1):
        if len(grid) < 3:
            raise ValueError(f"{name}: an LR grid needs at least three values, got {list(grid)}")
        if finalists < 1:
            raise ValueError(f"{name}: finalists must be at least 1, got {finalists}")
        self.name, self.seeds, self.max_extensions, self.make_task = name, list(seeds), max_extensions, make_task
        self.n_finalists = finalists
        self.initial = sorted(grid)
        self.grid: dict[float, RunRecord] = {}
        self.pending: set[tuple[float, int]] = set()
        self.extensions = 0
        self.settled = False  # the first seed's grid is final (no more extensions)
        self.finalist_runs: dict[float, dict[int, RunRecord]] = {}

    def _tasks(self, pairs: list[tuple[float, int]]) -> list[Task]:
        self.pending.update(pairs)
        return [self.make_task(lr, seed) for lr, seed in pairs]

    def start(self) -> list[Task]:
        """The first tasks: every grid value at the first seed."""
        return self._tasks([(lr, self.seeds[0]) for lr in self.initial])

    def _inside(self, lr: float) -> bool:
        """Whether ``lr`` lies strictly inside the LRs tried so far."""
        return min(self.grid) < lr < max(self.grid)

    def _beyond(self, best: float, loss: float) -> float | None:
        """The next LR past the grid's edge where ``best`` sits (loss ``loss``), or None when ``best`` is inside,
        its loss is not finite, or the extensions are spent (one is counted when a value is returned)."""
        if self._inside(best) or not math.isfinite(loss) or self.extensions >= self.max_extensions:
            return None
        self.extensions += 1
        return float(f"{(best / 2 if best == min(self.grid) else best * 2):.3g}")

    def _median(self, lr: float) -> float:
        """A finalist's median final loss over the seeds it has run (inf when any diverged)."""
        losses = [r.final_val_loss for r in self.finalist_runs[lr].values()]
        return median(losses) if all(math.isfinite(x) for x in losses) else math.inf

    def finish(self, run: RunRecord) -> list[Task]:
        """Record a finished run; return the tasks it unlocks."""
        self.pending.discard((run.lr, run.seed))
        if self.settled:
            self.finalist_runs[run.lr][run.seed] = run
            if run.seed == self.seeds[0]:
                self.grid[run.lr] = run  # an extension after the finalists: the first seed's run is a grid run
            if self.pending:
                return []
            # Every finalist has run at every seed: extend at the edge where the median winner sits.
            winner = min(self.finalist_runs, key=self._median)
            new = self._beyond(winner, self._median(winner))
            if new is None:
                return []
            self.finalist_runs[new] = {}
            return self._tasks([(new, seed) for seed in self.seeds])
        self.grid[run.lr] = run
        if self.pending:
            return []
        best = min(sorted(self.grid), key=lambda lr: self.grid[lr].final_val_loss)
        new = self._beyond(best, self.grid[best].final_val_loss)
        if new is not None:
            return self._tasks([(new, self.seeds[0])])
        self.settled = True
        converged = [lr for lr in sorted(self.grid) if math.isfinite(self.grid[lr].final_val_loss)] or [best]
        chosen = sorted(converged, key=lambda lr: self.grid[lr].final_val_loss)[:self.n_finalists]
        self.finalist_runs = {lr: {self.seeds[0]: self.grid[lr]} for lr in chosen}
        return self._tasks([(lr, seed) for lr in chosen for seed in self.seeds[1:]])

    @property
    def done(self) -> bool:
        """Every run this arm needs is in."""
        return self.settled and not self.pending

    def result(self) -> Tuned:
        """The tuned arm: the finalist with the lowest median final loss over seeds (ties: the first seed's order)."""
        assert self.done
        finalists = {lr: [runs[k] for k in self.seeds] for lr, runs in self.finalist_runs.items()}
        best = min(finalists, key=self._median)  # dicts keep the first seed's order, so min keeps its ties
        return Tuned(self.name, dict(self.grid), best, finalists[best], self._inside(best),
                     dict(sorted(finalists.items())))


def tune_all(tuners: dict[str, LRTuner], run: Callable[[list[Task], Callable[[RunRecord], list[Task]]], object]
             ) -> dict[str, Tuned]:
    """Drive every tuner through one runner: ``run(first_tasks, on_done)`` (e.g. :meth:`Runner.run`)."""
    first = [t for tuner in tuners.values() for t in tuner.start()]
    run(first, lambda record: tuners[record.arm].finish(record))
    unfinished = [n for n, t in tuners.items() if not t.done]
    if unfinished:
        raise RuntimeError(f"tuning did not finish for {unfinished}")
    return {n: t.result() for n, t in tuners.items()}
