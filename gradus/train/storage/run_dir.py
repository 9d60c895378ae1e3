"""The run directory: the one place that knows its layout, its lock, its status file and its leftovers.

A run directory (``gradus train --out DIR``) holds::

    config.yaml        the config the run started with (a resume reads it back)
    tokenizer.json     the run's tokenizer (a trained BPE, or the one it was given), with tokenizer_identity.json
                       and, when it carries a chat template, tokenizer_config.json holding that template
    metrics.jsonl      one JSON record per line: steps, evaluations, stage changes, guard events
    tensorboard/       the same scalars for TensorBoard (when installed)
    decisions.jsonl    an adaptive run's stage decisions, accepted and rejected (curriculum.adaptive)
    status.json        the outcome for schedulers: finished, stopped (resumable), diverged, failed
    wandb_id.txt       the W&B run id (logging.wandb), so a resumed run continues the same W&B run
    .lock              held while a process writes the run (flock), naming the holder
    checkpoints/       step_00001234/ ..., best/ (the best by validation loss), ema/ (the averaged weights)

and each checkpoint folder ``model.safetensors`` (or ``shards/`` under FSDP), ``optimizer.pt``, ``state.pt``,
``config.yaml``, ``meta.json`` (written last: a reader that finds it knows the rest is there) and, with
``train.ema``, ``ema.safetensors``. Every other module asks :class:`RunDir` (and :class:`CheckpointFiles` for a
checkpoint folder) for a path instead of spelling a name, so the layout is read and changed here alone
(``tests/test_run_dir.py`` fails on a run file's name spelt anywhere else). The names are those every earlier
gradus wrote: old run directories and checkpoints resume and load unchanged.

Plain files only: no torch, so the report, the CLI and the experiment runner import it cheaply.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradus.errors import ConfigError

# ------------------------------------------------------------------------------ the run directory
CONFIG = "config.yaml"
TOKENIZER = "tokenizer.json"
"""The Hugging Face tokenizer file: what :meth:`gradus.data.Tokenizer.save` writes into any folder."""
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
STATUS = "status.json"
DECISIONS = "decisions.jsonl"
"""An adaptive run's decision records (:mod:`gradus.train.controller`), rewritten whole as they change."""
LOCK = ".lock"
CHECKPOINTS = "checkpoints"
WANDB = "wandb"
"""Where W&B keeps an offline run (its library makes the folder under the run directory)."""
WANDB_ID = "wandb_id.txt"
"""The W&B run id, kept so a resumed run continues the same W&B run."""

# ------------------------------------------------------------------------------ a checkpoint folder
MODEL = "model.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.pt"
META = "meta.json"
EMA_WEIGHTS = "ema.safetensors"
"""The averaged (EMA) weights inside a checkpoint folder, when the run keeps them."""
SHARDS = "shards"
"""The DCP folder of a sharded (FSDP) checkpoint, instead of the model and optimizer files."""
CHECKPOINT_FILES = (MODEL, OPTIMIZER, STATE, CONFIG, META)
"""What a whole-model checkpoint holds (besides the optional :data:`EMA_WEIGHTS`)."""
BEST, EMA = "best", "ema"
"""The copies under ``checkpoints/``: the best by validation loss and the averaged weights."""

# Transient names: a partial save, an old checkpoint being deleted, a best/ between two renames.
TMP_PREFIX, TRASH_PREFIX, OLD_PREFIX = ".tmp-", ".trash-", ".old-"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_name(step: int) -> str:
    """The folder name of the checkpoint at ``step`` (``step_00001234``)."""
    return f"step_{step:08d}"


def step_of(name: str) -> int | None:
    """The step a checkpoint folder's name gives, or None for any other name."""
    m = _STEP_DIR.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class CheckpointFiles:
    """The files of one checkpoint folder (``checkpoints/step_N``, ``best``, ``ema``, or any copy of one)."""

    path: Path
    """The checkpoint folder."""

    @property
    def model(self) -> Path:
        """The whole model's weights (safetensors)."""
        return self.path / MODEL

    @property
    def optimizer(self) -> Path:
        """AdamW's state (torch.save)."""
        return self.path / OPTIMIZER

    @property
    def state(self) -> Path:
        """The Stateful parts' payload (torch.save)."""
        return self.path / STATE

    @property
    def config(self) -> Path:
        """The config the checkpoint was written under."""
        return self.path / CONFIG

    @property
    def meta(self) -> Path:
        """Counters, stage, compatibility signature, tokenizer identity, shape (JSON; written last)."""
        return self.path / META

    @property
    def ema_weights(self) -> Path:
        """The averaged weights (``train.ema``)."""
        return self.path / EMA_WEIGHTS

    @property
    def tokenizer(self) -> Path:
        """A tokenizer kept in the checkpoint folder itself (read before the run's, when present)."""
        return self.path / TOKENIZER

    @property
    def shards(self) -> Path:
        """The DCP folder of a sharded checkpoint."""
        return self.path / SHARDS

    @property
    def run(self) -> RunDir:
        """The run directory this checkpoint belongs to (``RUN/checkpoints/NAME``)."""
        return RunDir(self.path.parent.parent)


@dataclass(frozen=True)
class RunDir:
    """One run directory: every path in it, its lock, its status file and the cleaning of its leftovers."""

    path: Path
    """The folder (``--out``)."""

    @classmethod
    def of(cls, where: str | Path | RunDir) -> RunDir:
        """``where`` as a RunDir (callers may hold a path or one already)."""
        return where if isinstance(where, RunDir) else cls(Path(where))

    @property
    def config(self) -> Path:
        """The config the run started with."""
        return self.path / CONFIG

    @property
    def tokenizer(self) -> Path:
        """The run's tokenizer file."""
        return self.path / TOKENIZER

    @property
    def metrics(self) -> Path:
        """The JSON-lines record of the run."""
        return self.path / METRICS

    @property
    def decisions(self) -> Path:
        """An adaptive run's decision records (:mod:`gradus.train.controller`)."""
        return self.path / DECISIONS

    @property
    def tensorboard(self) -> Path:
        """TensorBoard's event folder."""
        return self.path / TENSORBOARD

    @property
    def wandb(self) -> Path:
        """Where W&B writes an offline run."""
        return self.path / WANDB

    @property
    def wandb_id(self) -> Path:
        """The W&B run id of this run."""
        return self.path / WANDB_ID

    @property
    def status(self) -> Path:
        """The outcome file schedulers read (:meth:`write_status`)."""
        return self.path / STATUS

    @property
    def lock_file(self) -> Path:
        """The file :class:`RunLock` holds."""
        return self.path / LOCK

    @property
    def checkpoints(self) -> Path:
        """The folder of the checkpoints."""
        return self.path / CHECKPOINTS

    def checkpoint(self, name: str) -> CheckpointFiles:
        """The checkpoint folder ``name`` under :attr:`checkpoints` (``best``, ``ema``, ``step_N``)."""
        return CheckpointFiles(self.checkpoints / name)

    def has_checkpoints(self) -> bool:
        """Whether a step checkpoint folder exists (complete or not: any makes the run one to continue)."""
        return self.checkpoints.is_dir() and any(p.name.startswith("step_") for p in self.checkpoints.iterdir())

    # ------------------------------------------------------------------------------ lifecycle
    def prepare(self, flag: str = "--out") -> RunLock:
        """Create the folder, check that files can be written there (a one-line ConfigError if not), so a run
        fails before training rather than at its first checkpoint, take its lock (:class:`RunLock`) and clean
        the leftovers of killed saves (:func:`clean_leftovers`). ``flag``: the option the messages name."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"cannot write to the output directory {self.path}: {exc.strerror or exc}; choose another {flag}"
            ) from None
        lock = RunLock(self.path, flag)
        clean_leftovers(self.checkpoints)
        return lock

    def write_status(self, outcome: str, step: int | None, reason: str, exit_code: int) -> None:
        """Write :attr:`status` atomically (a scheduler may read it at any time); never raises."""
        # A failed run (a full disk, a crash) resumes from its last checkpoint as a stopped one does; a
        # diverged one would diverge again as it is.
        resumable = outcome == "stopped" or (outcome == "failed" and self.has_checkpoints())
        record = {"status": outcome, "step": step, "reason": reason, "exit_code": exit_code,
                  "resumable": resumable, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = self.path / f".status-{os.getpid()}.json"
        try:
            tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, self.status)
        except OSError:
            pass  # an unwritable run directory is reported by the error that is already on its way

    def write_decisions(self, records: list[dict[str, Any]]) -> None:
        """decisions.jsonl, one record per line, replaced whole (written aside, then renamed) so that a reader
        never sees half a file and a resumed run's file holds exactly the decisions it made."""
        tmp = self.decisions.with_name(TMP_PREFIX + DECISIONS)
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        os.replace(tmp, self.decisions)

    def read_decisions(self) -> list[dict[str, Any]]:
        """The records of decisions.jsonl (empty when the run made none or is not adaptive)."""
        if not self.decisions.is_file():
            return []
        return [json.loads(line) for line in self.decisions.read_text(encoding="utf-8").splitlines() if line.strip()]

    def read_status(self) -> dict[str, Any] | None:
        """The last :meth:`write_status` record, or None when there is none or it cannot be read."""
        try:
            status = json.loads(self.status.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return status if isinstance(status, dict) else None


class RunLock:
    """An exclusive lock on a run directory (``.lock``, flock): a second process writing the same run gets
    one line naming the holder instead of colliding with it. Released by :meth:`release` or at exit.
    ``flag`` is the option the message tells the user to change (``--out``; the benchmarks' ``--work``)."""

    def __init__(self, run_dir: Path, flag: str = "--out"):
        import fcntl
        import socket

        self.path = RunDir.of(run_dir).lock_file
        self._fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise ConfigError(
                f"{run_dir} is in use by {holder}; wait for it to finish, stop it, or choose another {flag}"
            ) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"process {os.getpid()} on {socket.gethostname()}")
        self._fh.flush()

    def release(self) -> None:
        """Let another process use the run directory."""
        if not self._fh.closed:
            self._fh.close()  # closing the file releases the flock


def prepare_run_dir(run_dir: Path, flag: str = "--out") -> RunLock:
    """:meth:`RunDir.prepare` for a path (the experiment runner locks its work folder the same way)."""
    return RunDir.of(run_dir).prepare(flag)


def clean_leftovers(directory: Path) -> list[str]:
    """Remove what killed saves and prunes left in a checkpoints folder (``.tmp-*`` partial saves, each a
    full-size copy; ``.trash-*`` half-deleted old checkpoints) and put back a ``best/`` lost between the two
    renames of :meth:`~gradus.train.storage.checkpoint.CheckpointManager.mark_best`. Called at start-up, before
    anything lists checkpoints. Returns the names removed or restored."""
    if not directory.is_dir():
        return []
    done = []
    best = directory / BEST
    olds = sorted(directory.glob(f"{OLD_PREFIX}{BEST}-*"))
    if not best.exists() and olds and CheckpointFiles(olds[-1]).meta.is_file():
        os.replace(olds[-1], best)
        done.append(f"{olds[-1].name} -> {BEST}")
    for p in directory.iterdir():
        if p.name.startswith((TMP_PREFIX, TRASH_PREFIX, f"{OLD_PREFIX}{BEST}-")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            done.append(p.name)
    return done
