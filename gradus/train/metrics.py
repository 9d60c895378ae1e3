"""Metrics: ``metrics.jsonl`` always, TensorBoard events when tensorboard is installed (the console's lines
are :mod:`gradus.train.console`'s).

The records the trainer writes are built here: :func:`step_record` (every ``log_every`` steps: ``step``,
``tokens``, ``loss``, ``lr``, ``grad_norm``, ``tokens_per_sec``, ``mfu``, ``curriculum/current_seq_len``,
``curriculum/current_batch_size``, ``curriculum/examples_per_step``, ``curriculum/tokens_per_step``,
``curriculum/stage`` ...), :func:`eval_record` (``val/...``) and :func:`stage_record` (``event: stage``).
A program that watches a run (a benchmark) reads ``metrics.jsonl``, or passes ``on_step`` to the trainer
and receives a :class:`StepReport` after every step.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradus.train.storage.run_dir import RunDir

if TYPE_CHECKING:
    from gradus.curriculum import StagePlan, StageState
    from gradus.train.guard import GuardEvent
    from gradus.train.stateful import Progress


@dataclass
class RunResult:
    """What a finished (or stopped) run reports (:func:`gradus.train.trainer.train`)."""

    run_dir: Path
    """The run directory."""
    step: int
    """Steps done."""
    tokens: int
    """Tokens trained on."""
    reason: str
    """Why the run ended: done, early stopping, a signal, ``--stop-at-step``."""
    best_val_loss: float | None
    """Best reference-length validation loss, None before any evaluation."""
    last_val: dict[str, float] = field(default_factory=dict)
    """The last evaluation's figures (``val/...``)."""
    train_seconds: float = 0.0
    """Seconds inside training steps."""


@dataclass(frozen=True)
class StepReport:
    """What the trainer tells an ``on_step`` observer (``Trainer(..., on_step=callback)``) after each step
    it counts, on every rank, once that step's evaluation and checkpoint are done and before the next
    step (or the end of the run). Steps undone by a rollback are not reported. The observer's own time
    falls between two steps and is not on the trainer's clock."""

    step: int
    """Steps done, this one included."""
    tokens: int
    """Tokens trained on so far, over all ranks."""
    stage_index: int
    """The curriculum stage this step ran in."""
    next_stage_index: int | None
    """The stage of the next step; None when the run stops after this one."""
    tokens_per_step: int
    """This step's tokens (over all ranks)."""
    loss: float
    """Training loss (mean over ranks)."""
    grad_norm: float
    """Gradient norm before clipping."""
    applied: bool
    """Whether the optimizer update was applied (False for a skipped non-finite step)."""
    started: float
    """``time.perf_counter()`` when the step began (before waiting for its batch)."""
    seconds: float
    """The trainer's clock for this step: waiting for the batch plus the optimizer step."""
    aside_seconds: float
    """Seconds spent after this step evaluating and writing checkpoints (not training)."""
    record: dict[str, Any] | None
    """The metrics record written for this step; None unless it was a ``log_every`` step."""


@dataclass
class Window:
    """Loss, tokens and seconds summed since the last step record (the averages it logs)."""

    loss: float = 0.0
    """Sum of the finite losses."""
    n: int = 0
    """Number of finite losses."""
    tokens: int = 0
    """Tokens trained on."""
    seconds: float = 0.0
    """Seconds on the trainer's clock."""

    def add(self, loss: float, tokens: int, seconds: float) -> None:
        """Count one step (a non-finite loss counts for tokens and time, not for the mean loss)."""
        self.loss += loss if math.isfinite(loss) else 0.0
        self.n += 1 if math.isfinite(loss) else 0
        self.tokens += tokens
        self.seconds += seconds


def step_record(state: StageState, progress: Progress, window: Window, *, loss: float, grad_norm: float,
                applied: bool, lr_factor: float, micro_batch: int, flops_per_token: float, peak_flops: float,
                world_size: int, peak_memory: int, total_tokens: int, data: dict[str, float],
                compiled: bool, recompiles: int | None = None) -> dict[str, Any]:
    """The record of a logged step: the step's loss, LR, gradient norm and shape, the window's mean loss
    and throughput, MFU against ``peak_flops`` per rank, the curriculum's position and mix, the data
    pipeline's counters ``data`` and (``compiled``) how many graphs torch.compile has built, and
    (``recompiles``, when given) how many it built after the start-up warm-up: 0 when no shape stalls."""
    tps = window.tokens / window.seconds if window.seconds > 0 else 0.0
    mfu = flops_per_token * tps / (peak_flops * world_size) if peak_flops else 0.0
    record: dict[str, Any] = {
        "step": progress.step,
        "tokens": progress.tokens,
        "loss": loss,
        "loss_avg": window.loss / window.n if window.n else float("nan"),
        "lr": state.lr * lr_factor,
        "lr_scheduled": state.lr,
        "grad_norm": grad_norm,
        "grad_clip": state.grad_clip,
        "update_applied": applied,
        "tokens_per_sec": tps,
        "mfu": mfu,
        "memory/peak_bytes": peak_memory,
        "time/train_seconds": progress.train_seconds,
        "curriculum/stage": state.stage_index,
        "curriculum/current_seq_len": state.seq_len,
        "curriculum/current_batch_size": state.batch_size,
        "curriculum/examples_per_step": state.batch_size,
        "curriculum/tokens_per_step": state.tokens_per_step,
        "curriculum/micro_batch_size": micro_batch,
        "curriculum/warmup_progress": state.warmup_progress,
        "curriculum/progress": progress.tokens / total_tokens if total_tokens else 0.0,
        "guard/lr_factor": lr_factor,
    }
    for source, weight in state.mix.items():
        record[f"curriculum/mix/{source}"] = weight
    record.update(data)
    if compiled:
        record["compile/unique_graphs"] = compiled_graphs()
    if recompiles is not None:
        record["compile/recompiles"] = recompiles
    return record


def eval_record(state: StageState, progress: Progress, ref_len: int, ref: dict[str, float],
                own: dict[str, float] | None) -> tuple[dict[str, Any], str]:
    """The record and console line of an evaluation: ``ref`` at the reference length ``ref_len``
    (comparable across stages) and ``own`` at the stage's length (None when that is the reference)."""
    record: dict[str, Any] = {
        "step": progress.step,
        "tokens": progress.tokens,
        "time/train_seconds": progress.train_seconds,
        "curriculum/stage": state.stage_index,
        "val/loss": ref["loss"],
        "val/ppl": ref["ppl"],
        "val/accuracy": ref["accuracy"],
        "val/seq_len": ref_len,
        "val/tokens": ref["tokens"],
    }
    text = (f"eval @ step {progress.step:,}: val loss {ref['loss']:.4f} (ppl {ref['ppl']:.2f}, "
            f"acc {ref['accuracy']:.3f}) at {ref_len}")
    stage = own if own is not None else ref
    record.update({"val/stage_loss": stage["loss"], "val/stage_ppl": stage["ppl"],
                   "val/stage_accuracy": stage["accuracy"], "val/stage_seq_len": state.seq_len})
    if own is not None:
        text += f"; {own['loss']:.4f} at stage length {state.seq_len}"
    # Per source at the reference length, so interference between domains is visible.
    for name, fig in (ref.get("sources") or {}).items():  # type: ignore[union-attr]
        record.update({f"val/{name}/loss": fig["loss"], f"val/{name}/ppl": fig["ppl"],
                       f"val/{name}/accuracy": fig["accuracy"]})
    return record, text


def guard_record(event: GuardEvent) -> dict[str, Any]:
    """The record of a guard event (``event: guard/spike``, ``guard/skip`` or ``guard/rollback``)."""
    return {"event": f"guard/{event.kind}", "step": event.step, "loss": None if not math.isfinite(event.loss) else event.loss,
            "detail": event.detail}


def stage_record(state: StageState, stage: StagePlan) -> dict[str, Any]:
    """The ``event: stage`` record written when a stage begins."""
    return {"event": "stage", "step": state.step, "tokens": state.tokens, "curriculum/stage": stage.index,
            "name": stage.name, "seq_len": stage.seq_len, "batch_size": stage.batch_size}


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process so far (-1 when the counter cannot be read)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # a counter, not worth failing a run over
        return -1


def drop_records_after(path: Path, step: int, keep_events: bool = False) -> int:
    """Rewrite ``metrics.jsonl`` without the records of steps after ``step`` (atomically: a kill meanwhile
    leaves the old file); a torn last line is dropped too; ``keep_events``: the guard's event records stay (a
    rollback keeps the events that caused it; a stage record after it goes, as the stage is entered again). Returns how many records were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                dropped += 1  # a line cut short by a kill
                continue
            kept_event = keep_events and isinstance(record, dict) and str(record.get("event", "")).startswith("guard/")
            if isinstance(record, dict) and _after(record, step) and not kept_event:
                dropped += 1
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


def _after(record: dict, step: int) -> bool:
    """Whether a record was written after the checkpoint of ``step``: step records count steps done, but
    stage and guard records name the 0-based step about to run, so theirs at ``step`` come after it too."""
    at = record.get("step")
    if not isinstance(at, int):
        return False
    event = str(record.get("event", ""))
    return at > step or (at == step and (event == "stage" or event.startswith("guard/")))


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and mirrors scalars to TensorBoard. Only rank 0 writes."""

    def __init__(self, run_dir: Path | RunDir, *, tensorboard: bool = True, enabled: bool = True,
                 resume_step: int | None = None):
        """``resume_step``: the step of the checkpoint a resumed run continues from; records written after
        it (the steps between that checkpoint and a kill) are dropped, so every step appears once."""
        run = RunDir.of(run_dir)
        self.enabled = enabled
        self.path = run.metrics
        self._file = None
        self._tb = None
        self.tensorboard_error: str | None = None
        if not enabled:
            return
        if resume_step is not None:
            drop_records_after(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # append: a resumed run keeps what was written
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception as exc:  # tensorboard not installed: jsonl is enough
                self.tensorboard_error = f"{type(exc).__name__}: {exc}"
            else:
                # purge_step: TensorBoard hides the events after the checkpoint that the resumed run rewrites.
                self._tb = SummaryWriter(log_dir=str(run.tensorboard),
                                         purge_step=None if resume_step is None else resume_step + 1)

    def rewind(self, step: int) -> None:
        """A rollback to the checkpoint of ``step``: the step and evaluation records after it are dropped, as on
        resume, so the redone steps appear once to every reader (the guard events that caused the rollback
        stay); TensorBoard hides its events after it the same way (a new writer with ``purge_step``). W&B cannot
        take a step back: it keeps the first values of the redone steps and ignores the new ones (a known
        limit; metrics.jsonl and TensorBoard are right)."""
        if not self.enabled or self._file is None:
            return
        self._file.close()
        drop_records_after(self.path, step, keep_events=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held until close
        if self._tb is not None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self._tb.log_dir
            self._tb.close()
            self._tb = SummaryWriter(log_dir=log_dir, purge_step=step + 1)

    def write(self, record: dict[str, Any]) -> None:
        """One record: a JSON line, and every numeric value as a TensorBoard scalar at ``record['step']``."""
        if not self.enabled or self._file is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean, sort_keys=False) + "\n")
        self._file.flush()
        if self._tb is not None and "step" in record:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    if math.isfinite(value):
                        self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close files."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (for tests and benchmarks)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def losses_by_step(path: str | Path) -> dict[int, float]:
    """Training loss per step from a metrics.jsonl; after a resume the later record of a step wins."""
    out: dict[int, float] = {}
    for rec in read_metrics(path):
        if "loss" in rec and rec.get("event") is None and "step" in rec:
            out[int(rec["step"])] = rec["loss"]
    return out


