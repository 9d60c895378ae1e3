"""What the trainer does when the guard gives up, and where a run's outcome is written for schedulers.

* :func:`data_position`: where the data pipeline stands (documents and tokens read), named in guard records
  and in the divergence error, so the offending data can be found.
* :func:`diverged_error`: the one-line :class:`~gradus.errors.DivergedError` (exit code 3).
* :func:`no_checkpoint_error`: when a rollback finds nothing to go back to (the rollback itself is the
  trainer's: :meth:`gradus.train.trainer.Trainer._rollback`).
* :func:`record_result`, :func:`record_failure`: the run's outcome in its status file
  (:meth:`gradus.train.storage.run_dir.RunDir.write_status`): ``finished``, ``stopped`` (by a signal or
  ``--stop-at-step``; resumable), ``diverged`` or ``failed``, with the step and the exit code; and
  :func:`exit_code`, read back from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradus.errors import DivergedError, GradusError
from gradus.train.storage.run_dir import RunDir

if TYPE_CHECKING:
    from gradus.train.run import RunParts

EXIT_CODES = {"finished": 0, "stopped": 0, "failed": 1, "bad_input": 2, "diverged": 3}
"""The documented exit codes of ``gradus train`` by outcome (README, "Resume, preemption, divergence")."""


def data_position(metrics: dict[str, float]) -> dict[str, int]:
    """Documents and tokens the data pipeline has read (from its ``metrics()``), as plain ints."""
    return {"documents": int(metrics.get("data/documents", 0)), "tokens": int(metrics.get("data/tokens_total", 0))}


def diverged_error(event: Any, position: dict[str, int], guard_cfg: Any) -> DivergedError:
    """The error that ends a run whose guard gave up at ``event`` (kind ``diverged``)."""
    hint = ("lower optim.base_lr or the stages' LR, or set train.guard.skip_bad_batches: true to skip the "
            "offending batches" if not guard_cfg.skip_bad_batches else "lower optim.base_lr or the stages' LR")
    return DivergedError(
        f"training diverged at step {event.step}: {event.detail}; data position {position['documents']:,} "
        f"documents, {position['tokens']:,} tokens; {hint}"
    )


def no_checkpoint_error(event: Any, guard_cfg: Any) -> DivergedError:
    """The error when non-finite steps call for a rollback and no checkpoint was written before them."""
    return DivergedError(
        f"training diverged: {guard_cfg.max_bad_steps} non-finite steps in a row at step {event.step} and no "
        f"checkpoint to roll back to; lower optim.base_lr or the stages' LR"
    )


def check_ranks_in_sync(rt: Any, model: Any, write: Any, step: int) -> None:
    """Under DDP, confirm every rank ends with the same weights: a cheap checksum, all-gathered and written
    as a ``dist/weights_checksum`` record; ranks whose weights drifted apart raise :class:`GradusError`."""
    from gradus.train.parallel import is_sharded

    if not rt.distributed or is_sharded(model):  # FSDP: one copy of each weight, sharded; nothing to compare
        return
    gathered = rt.gather(float(sum(p.detach().double().sum() for p in model.parameters())))
    in_sync = all(g == gathered[0] for g in gathered)
    write({"event": "dist/weights_checksum", "step": step, "checksums": gathered, "in_sync": in_sync})
    if not in_sync:
        raise GradusError(f"ranks ended with different weights (checksums {gathered}); please report this")


DIVERGED_LOSS_FACTOR = 2.0
"""A run that ends with its recent loss above this × ln(vocab) (twice the loss of guessing uniformly, which
an untrained model starts near) diverged even though every loss was finite."""


RECENT_STEPS = 10
"""How many of the last losses :func:`record_result` judges (by their median)."""


def finite_divergence(recent_loss: float | None, vocab_size: int) -> str | None:
    """Why a run whose losses stayed finite still diverged, or None."""
    bar = DIVERGED_LOSS_FACTOR * math.log(max(2, vocab_size))
    if recent_loss is not None and recent_loss > bar:
        return (f"the loss ended at {recent_loss:,.4g}, above {DIVERGED_LOSS_FACTOR:g} × ln(vocab {vocab_size}) = "
                f"{bar:.2f}: training diverged; lower optim.base_lr or the stages' LR")
    return None


def result_status(parts: RunParts, result: Any) -> tuple[str, str] | None:
    """How a run that returned ended, for ``status.json``: ``stopped`` (a signal or ``--stop-at-step``:
    resumable), ``diverged`` (a finite loss far above an untrained model's) or ``finished``, with the reason;
    None on ranks other than the main one (which writes nothing)."""
    if not parts.rt.is_main:
        return None
    outcome, reason = ("stopped" if str(result.reason).startswith("stopped") else "finished"), str(result.reason)
    # The median of the last losses: one spike (kept in the guard's history before its warm-up) is no divergence.
    recent = sorted(list(parts.guard.history)[-RECENT_STEPS:])
    why = finite_divergence(recent[len(recent) // 2] if recent else None, parts.shape.vocab_size)
    if why is not None:
        outcome, reason = "diverged", why
    return outcome, reason


def record_result(run: RunDir, result: Any, status: tuple[str, str] | None) -> None:
    """Write ``status.json`` for a run that returned, as :func:`result_status` judged it (nothing for None)."""
    if status is not None:
        outcome, reason = status
        run.write_status(outcome, result.step, reason, EXIT_CODES[outcome])


def exit_code(run_dir: Path, step: int) -> tuple[int, str | None]:
    """The exit code ``gradus train`` ends with, from the run's ``status.json`` written at ``step``, and
    the line to print when it is not 0 (a diverged run must not exit 0 like a healthy one). A status of
    another step (a rank other than 0 reading before rank 0 wrote) counts as finished."""
    status = RunDir.of(run_dir).read_status()
    if status is None or status.get("step") != step:
        return 0, None
    code = int(status.get("exit_code", 0))
    return code, (status.get("reason") if code else None)


def record_failure(run: RunDir, rt: Any, progress: Any, exc: BaseException) -> None:
    """``status.json`` for a run that raised once its metrics writer was open (``progress``, the run's
    counters, is None before: a run directory refused at set-up keeps the status it had): ``diverged`` or
    ``failed``. ``rt``: the runtime (None when it was not set up); rank 0 writes."""
    if progress is None or rt is None or not rt.is_main:
        return
    outcome = "diverged" if isinstance(exc, DivergedError) else "failed"
    code = exc.exit_code if isinstance(exc, GradusError) else EXIT_CODES["failed"]
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    run.write_status(outcome, progress.step, reason, code)


def remove_failed_start(run: RunDir, rt: Any, parents: Sequence[Path] = ()) -> None:
    """Remove a run directory that this process created and whose set-up was refused for bad input, so a failed
    start leaves nothing behind (rank 0; never raises). Only called when the folder did not exist before.
    ``parents``: the folders above it that were made with it (nearest first), removed while empty."""
    import shutil

    if rt is not None and not rt.is_main:
        return
    if run.has_checkpoints():  # never the case in set-up; checked so that nothing trained is ever removed
        return
    shutil.rmtree(run.path, ignore_errors=True)
    for folder in parents:
        try:
            folder.rmdir()  # only an empty folder: anything another run put there stays
        except OSError:
            break
