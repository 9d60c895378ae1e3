"""The machinery of ``benchmarks/curriculum_speedup.py``: an arm's config, the tokenizer, running and tuning
the arms, and the per-arm summary and table.

The arms themselves are in :mod:`gradus.experiments.speedup_arms`; the analysis (crossings, calibrated
seconds, speedups) is :mod:`gradus.experiments.analysis`, shared with ``gradus compare``. The script keeps
only its flags, the calls and its output (JSON, table, plot).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from gradus.config import to_dict
from gradus.errors import GradusError
from gradus.experiments.analysis import (
    RunRecord,
    at_evaluations,
    summarise_runs,
)
from gradus.experiments.common import describe_run as describe
from gradus.experiments.runner import Runner, Task
from gradus.experiments.speedup_arms import ARMS, LR_A, Arm, Settings, off_regime_batch
from gradus.experiments.tuning import LRTuner, Tuned, tune_all
from gradus.train.storage.run_dir import RunDir

ADAPTIVE_EVALS = 4
"""An adaptive arm evaluates this many times as often as the others (its length rule reads the evaluations)."""


# ==================================================================================== configs
def data_section(s: Settings, data: Path) -> dict:
    """The ``data`` sources and held-out split of every run (and of the tokenizer's training): a folder with
    ``train.jsonl`` and ``valid.jsonl`` (WikiText-2: the held-out split through ``validation_split``), or one
    JSONL file whose documents are held out by a hash of their text (``s.holdout`` of them); ``s.template``
    joins a record's fields into its text."""
    # The template key is only written when set, so configs (and --reuse's identity check) of runs on plain
    # text stay what they were before the setting existed.
    fields = {"template": s.template} if s.template is not None else {}
    if data.is_dir():
        # valid.jsonl is the held-out split, so no training document needs to be held out by hash.
        return {"sources": [{"name": "wiki", "path": str(data / "train.jsonl"),
                             "validation_split": str(data / "valid.jsonl"), **fields}],
                "validation": {"fraction": 0.0}}
    return {"sources": [{"name": "corpus", "path": str(data), **fields}], "validation": {"fraction": s.holdout}}


def check_data(data: Path) -> str | None:
    """Why ``data`` cannot feed the benchmark (one line), or None."""
    if data.is_dir():
        missing = [n for n in ("train.jsonl", "valid.jsonl") if not (data / n).is_file()]
        return f"{data} lacks {' and '.join(missing)}; give a folder with both or one JSONL file" if missing else None
    return None if data.is_file() else f"{data} does not exist; give a folder with train.jsonl and valid.jsonl or a JSONL file"


def make_config(s: Settings, arm: Arm, lr: float, seed: int, data: Path, tokenizer: Path):
    """The full gradus config of one run (validated by gradus itself)."""
    from gradus.config import from_dict

    regime = arm.regime
    sources = data_section(s, data)
    curriculum = arm.build(s)
    curriculum["target_tokens"] = s.budget
    raw = {
        "name": f"{arm.name}-lr{lr:g}-seed{seed}",
        "model": {"preset": s.model, "max_seq_len": s.final_len,
                  **({"d_model": s.d_model} if s.d_model is not None else {})},
        "data": {
            "sources": sources["sources"],
            "tokenizer": {"name_or_path": str(tokenizer)},
            "validation": {**sources["validation"], "max_documents": 1000, "tokens": s.eval_tokens},
            "packing": {"lanes": s.lanes},
        },
        "curriculum": curriculum,
        "optim": {"base_lr": lr},
        "train": {
            "seed": seed,
            "eval_every": s.eval_every(regime),
            # Under a batch ramp a step is not a fixed number of tokens: evaluate at the same token counts as
            # the constant-batch arms (which keep the step cadence: the same points, and their runs reusable).
            **({"eval_every_tokens": s.budget // s.eval_points} if off_regime_batch(s, regime, curriculum) else {}),
            # An adaptive arm's length rule reads the evaluations: ADAPTIVE_EVALS times as many, the others'
            # points among them (its crossing is read on those alone: :func:`shared_points`).
            **({"eval_every_tokens": s.budget // (ADAPTIVE_EVALS * s.eval_points)} if arm.adaptive else {}),
            "eval_reference_seq_len": s.final_len,
            # The same cadence for every arm: no extra evaluations at stage changes.
            "eval_at_stage_change": False,
            "early_stopping_patience": None,
            "checkpoint_every": None,
            # Written only when set, so the configs of runs of record (and --reuse's identity check) stay as they were.
            **({"checkpoint_every_tokens": s.checkpoint_every_tokens} if s.checkpoint_every_tokens else {}),
            "device": "cpu",
            "compile": "off",
            **dict(arm.train),
        },
        "logging": {"log_every": max(1, s.eval_every(regime) // 4), "tensorboard": False, "progress_bar": False},
    }
    return from_dict(raw, origin=f"curriculum_speedup:{arm.name}")


# ======================================================================================= runs
# Runs, LR tuning, the crossing analysis, the calibrated clock and the curves' panels are gradus's own
# (gradus.experiments, the code of `gradus sweep` and `gradus compare`): this script keeps the benchmark's
# settings, arms and report. Names it used to define are re-exported here (Run, to_target, ...).
Run = RunRecord


def execute(s: Settings, arms: Sequence[Arm], data: Path, tokenizer: Path, work: Path, *, jobs: int, threads: int,
            reuse: bool, log: Callable[[str], None], archive: Path | None = None) -> dict[str, Tuned]:
    """Tune every arm, ``jobs`` runs at a time, each run a ``gradus train`` process with ``threads`` torch
    threads in ``work/runs/<arm>/lr<LR>-seed<S>`` (gradus.experiments.runner); with ``archive``, every finished
    run's record is kept there too and read back from there when ``work`` lost it (:func:`~gradus.experiments.
    runner.archive_run`)."""

    def maker(arm: Arm) -> Callable[[float, int], Task]:
        def make(lr: float, seed: int) -> Task:
            cfg = make_config(s, arm, lr, seed, data, tokenizer)
            return Task(arm.name, lr, seed, to_dict(cfg), work / "runs" / arm.name / f"lr{lr:g}-seed{seed}")
        return make

    tuners = {a.name: LRTuner(a.name, a.lr_grid, s.seeds, s.max_extensions, maker(a), s.finalists) for a in arms}
    runner = Runner(jobs=jobs, threads=threads, log=log, reuse=reuse, folder=work, folder_flag="--work",
                    archive=archive)

    def finished(run: Run) -> None:
        log(describe(run))
        shutil.rmtree(RunDir(Path(run.run_dir)).checkpoints, ignore_errors=True)  # keep metrics and config, not weights

    def drive(first: list[Task], unlock: Callable[[Run], list[Task]]) -> object:
        return runner.run(first, on_done=lambda run: (finished(run), unlock(run))[1])

    return tune_all(tuners, drive)


# =================================================================================== analysis
def stage_plan(s: Settings, arm: Arm, data: Path, tokenizer: Path) -> list[dict]:
    """Each stage's shape and token range, from the pure curriculum: what the plot marks and the
    calibrated clock weighs."""
    from gradus.curriculum import resolve_schedule

    cur = resolve_schedule(make_config(s, arm, arm.lr_grid[0], 0, data, tokenizer))
    return [{"stage": st.name, "seq_len": st.seq_len, "batch_size": st.batch_size,
             "tokens_per_step": st.tokens_per_step, "start_tokens": st.start_tokens, "end_tokens": st.end_tokens,
             "peak_lr_per_unit_base": st.peak_lr / arm.lr_grid[0]} for st in cur.stages]


def stage_plan_of_run(run_dir: str | Path) -> list[dict]:
    """The stages an adaptive run followed (its config.yaml with its decisions applied), shaped as
    :func:`stage_plan`'s, for the calibrated clock: each adaptive run has its own table."""
    from gradus.config import load_config
    from gradus.curriculum import resolve_schedule
    from gradus.curriculum.adaptive import accepted_edits, edited_config

    run = RunDir(Path(run_dir))
    cfg = load_config(run.config)
    cur = resolve_schedule(edited_config(cfg, accepted_edits(run.read_decisions())))
    return [{"stage": st.name, "seq_len": st.seq_len, "batch_size": st.batch_size,
             "tokens_per_step": st.tokens_per_step, "start_tokens": st.start_tokens, "end_tokens": st.end_tokens,
             "peak_lr_per_unit_base": st.peak_lr / cfg.optim.base_lr} for st in cur.stages if st.steps]


def shared_points(run: RunRecord) -> RunRecord:
    """An adaptive run's curve at the evaluations every arm has (each ADAPTIVE_EVALS-th of its own, the last
    included). Read at all of its own, the first crossing of a noisy curve comes earlier the denser the points:
    the same training read at 64 points instead of 16 crossed a target 4% sooner (WikiText-2 2M, 2026-12-07), a
    gain the arm did not make."""
    return at_evaluations(run, [i for i in range(len(run.tokens)) if (i + 1) % ADAPTIVE_EVALS == 0])


def summarise(t: Tuned, arm: Arm, target: float, stages: list[dict], cost: dict[tuple[int, int], float]) -> dict:
    """The JSON record of one arm (speedups are filled in by :func:`add_speedups`); an adaptive arm's curves at
    the evaluations every arm has (:func:`shared_points`)."""
    rec = summarise_runs(arm.name, [shared_points(r) for r in t.runs] if arm.adaptive else t.runs, target, stages,
                         cost)
    return {
        "name": arm.name,
        "regime": arm.regime,
        "description": arm.description,
        "tokens_per_step": stages[0]["tokens_per_step"],
        "lr": t.best_lr,
        "lr_inside_grid": t.inside,
        "lr_grid": t.grid_losses(),
        "lr_grid_guard_events": {f"{lr:g}": run.guard_events for lr, run in sorted(t.grid.items())},
        "lr_finalists": t.finalist_losses(),
        **{k: v for k, v in rec.items() if k not in ("name", "tokens_per_step")},
    }


def find_lrs(s: Settings, data: Path, tokenizer: Path, work: Path, threads: int,
             log: Callable[[str], None]) -> Settings:
    """Run ``gradus lr-find``'s sweep (:func:`gradus.train.lr_find.run_lr_find`) at the textbook lengths on
    this model and data (seed 0), cache it in ``work``, and return the settings with its suggestions."""
    from gradus.train.lr_find import run_lr_find

    lengths = [s.final_len // 8, s.final_len // 4, s.final_len // 2, s.final_len]
    cache = work / f"lr_find-{s.model}{f'-d{s.d_model}' if s.d_model else ''}-{s.vocab_size}-{s.tokens_per_step}-{s.lr_find_steps}-lanes{s.lanes}.json"
    if cache.is_file():
        found = {int(k): v for k, v in json.loads(cache.read_text())["suggested"].items()}
    else:
        cfg = make_config(s, ARMS["seqwarm-textbook"], LR_A[1], s.seeds[0], data, tokenizer)
        import torch

        t0 = time.perf_counter()
        before = torch.get_num_threads()
        torch.set_num_threads(threads)  # as the runs (gradus.experiments.runner): OpenMP threads collapse on a shared box
        try:
            result = run_lr_find(cfg, lengths, steps=s.lr_find_steps)
        finally:
            torch.set_num_threads(before)
        found = result.suggestions()
        cache.write_text(json.dumps({"suggested": found, "report": result.to_json(),
                                     "seconds": time.perf_counter() - t0}, default=str))
    missing = [L for L in lengths if L not in found]
    if missing:
        raise GradusError(f"lr-find gave no suggestion at length(s) {missing}")
    log("  lr-find suggestions: " + ", ".join(f"{L}: {found[L]:.3g}" for L in lengths))
    return replace(s, lr_find=tuple((L, float(found[L])) for L in lengths))
