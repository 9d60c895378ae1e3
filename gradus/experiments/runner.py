"""Running arms: each run is ``gradus train`` (the real code path) in its own process and run directory,
``jobs`` at a time; one torch thread each on CPU, one run per GPU on a machine with several.

A run directory holds ``arm.yaml`` (the run's full config), what ``gradus train`` writes (``metrics.jsonl``,
``config.yaml``, checkpoints), ``train.log`` (its console) and, once it finished, ``result.json`` (its curve
and the config it ran). A later invocation reads a finished run back from ``result.json`` when the config
is identical instead of training it again, and an unfinished one continues from its last checkpoint (that
is ``gradus train --out DIR``'s own resume), so an interrupted sweep resumes where it stopped. A run of
another config found where a task's run goes (a compare rerun with another budget) is moved beside it,
never deleted (:meth:`Runner.prepare_dir`).

With an ``archive`` folder, every finished run's record (its ``result.json``, the decisions an adaptive run
made, a hash of the tokenizer file it read) is also written there, one small JSON per run, and a run whose
folder lost them (a new machine, a work folder cleared) is read back from it and its folder refilled: how a
benchmark whose runs outlast one machine's life keeps them, in the repository (:func:`archive_path`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gradus.config import dump_yaml, from_dict
from gradus.errors import GradusError
from gradus.experiments.analysis import RunRecord, read_records, record_from_metrics
from gradus.train.storage.run_dir import RunDir

RESULT = "result.json"
"""The file a finished run's record is kept in, beside its metrics."""


def beside(path: Path, key: str) -> Path:
    """A free name next to ``path`` for what it held under ``key``: ``<stem>@<key><suffix>``, or ``@<key>-2``,
    ``-3``... when that is taken (an earlier run or summary of a configuration is never overwritten). A folder
    keeps its whole name as the stem (a run folder ``lr0.002-seed0`` has no suffix)."""
    stem, suffix = (path.stem, path.suffix) if path.is_file() else (path.name, "")
    n, candidate = 1, path.with_name(f"{stem}@{key}{suffix}")
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{stem}@{key}-{n}{suffix}")
    return candidate


@dataclass
class Task:
    """One training run to do."""

    arm: str
    """Name of the arm."""
    lr: float
    """``optim.base_lr`` (for the tables; the config holds it)."""
    seed: int
    """``train.seed``."""
    config: dict
    """The complete raw config mapping of the run."""
    run_dir: Path
    """Its own run directory (kept)."""

    @property
    def config_text(self) -> str:
        """The resolved config as YAML (what identifies a finished run)."""
        return dump_yaml(from_dict(self.config, origin=f"arm {self.arm}"))

    @property
    def budget(self) -> int:
        """Training tokens of the run."""
        return int(self.config["curriculum"]["target_tokens"])


def same_config(saved_text: str, task: Task) -> bool:
    """Whether a config written by an earlier invocation is the task's: identical text, or identical once read
    by today's schema (a run finished before a field was added, which the new config has at its default, is
    the same run). A saved config today's schema refuses is not the same."""
    if saved_text == task.config_text:
        return True
    import yaml  # only here: reading an older run back is rare

    try:
        return dump_yaml(from_dict(yaml.safe_load(saved_text), origin="earlier run")) == task.config_text
    except (GradusError, ValueError, TypeError, yaml.YAMLError):
        return False


def _saved_for(path: Path, task: Task) -> dict | None:
    """A saved run's JSON (a ``result.json`` or an archived record) when it exists, reads, and holds the
    task's config; else None."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data.get("config"), str) or not same_config(data["config"], task):
        return None
    return data


def _write_result(task: Task, record: dict) -> None:
    """Write a finished run's ``result.json``: its record and the config it ran."""
    (task.run_dir / RESULT).write_text(json.dumps({"record": record, "config": task.config_text}), encoding="utf-8")


def archive_path(archive: Path, task: Task) -> Path:
    """Where ``archive`` keeps the record of ``task``'s run: ``<arm folder>/<run folder>.json``, the last two
    parts of its run directory (``runs/<arm>/lr<LR>-seed<S>`` in a benchmark's work folder)."""
    return archive / task.run_dir.parent.name / f"{task.run_dir.name}.json"


def tokenizer_file_hash(config: dict) -> str | None:
    """sha256 of the tokenizer file a run config names (``data.tokenizer.name_or_path``), None when it names
    no local file (a hub name). An archived run is read back only where the file is the same: a BPE trained
    again on a new machine must be identical for the old runs to count beside new ones."""
    name = ((config.get("data") or {}).get("tokenizer") or {}).get("name_or_path")
    path = Path(str(name)) if name else None
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def archive_run(archive: Path, task: Task, record: RunRecord) -> Path:
    """Write a finished run's record into ``archive`` (see :func:`restore_run`); returns the file."""
    path = archive_path(archive, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"record": record.to_json(), "config": task.config_text,
            "decisions": RunDir(task.run_dir).read_decisions(), "tokenizer_sha256": tokenizer_file_hash(task.config)}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def restore_run(archive: Path, task: Task) -> bool:
    """Refill ``task.run_dir`` from ``archive`` when its folder lacks a finished result: ``result.json``,
    ``arm.yaml`` and ``config.yaml`` (the config it ran) and ``decisions.jsonl``, so everything that reads a
    finished run's folder (the calibration, an adaptive run's stage table) finds it. Only a run of the same
    config and the same tokenizer file, into a folder that holds no run of another config. Returns whether
    it restored."""
    if (task.run_dir / RESULT).is_file():
        return False
    data = _saved_for(archive_path(archive, task), task)
    if data is None or data.get("tokenizer_sha256") != tokenizer_file_hash(task.config):
        return False
    arm_yaml = task.run_dir / "arm.yaml"
    if arm_yaml.is_file() and not same_config(arm_yaml.read_text(encoding="utf-8"), task):
        return False
    task.run_dir.mkdir(parents=True, exist_ok=True)
    run = RunDir(task.run_dir)
    for path in (task.run_dir / "arm.yaml", run.config):
        path.write_text(task.config_text, encoding="utf-8")
    if data.get("decisions"):
        run.write_decisions(data["decisions"])
    _write_result(task, dict(data["record"], run_dir=str(task.run_dir)))
    return True


def finished_record(task: Task, archive: Path | None = None) -> RunRecord | None:
    """The record of a run already finished with the same config, else None; with ``archive``, a run whose
    folder lost it is restored from there first (:func:`restore_run`)."""
    if archive is not None:
        restore_run(archive, task)
    data = _saved_for(task.run_dir / RESULT, task)
    if data is None:
        return None
    record = RunRecord.from_json(data["record"])
    record.reused = True
    return record


def stopped_early(run_dir: Path) -> bool:
    """Whether the ``gradus train`` of ``run_dir`` ended because a signal stopped it (its status says
    ``stopped``: checkpoint saved, resumable), not because it finished: it exits 0 either way."""
    status = RunDir(run_dir).read_status()
    return bool(status) and status.get("status") == "stopped"


def cuda_devices(config: dict) -> list[int]:
    """GPU indices to spread runs over: every visible GPU when the config trains on ``auto``/``cuda``."""
    device = str((config.get("train") or {}).get("device", "auto"))
    if device not in ("auto", "cuda"):
        return []
    import torch  # only here: the rest of the package reads plain files

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or [""])[-1][:300]


def _repoint_result(moved: Path) -> None:
    """A kept run's ``result.json`` names the folder it now lives in (its record was written where it ran)."""
    path = moved / RESULT
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["record"]["run_dir"] = str(moved)
    except (OSError, ValueError, KeyError, TypeError):  # no finished result there (a stopped run): nothing to say
        return
    path.write_text(json.dumps(data), encoding="utf-8")


class Runner:
    """Runs tasks ``jobs`` at a time in ``gradus train`` processes; new tasks may be queued as runs finish
    (the LR tuning does that)."""

    def __init__(self, jobs: int = 1, threads: int = 1, devices: list[int] | None = None,
                 log: Callable[[str], None] = print, reuse: bool = True, folder: Path | None = None,
                 folder_flag: str = "--out", archive: Path | None = None):
        self.folder, self.folder_flag = folder, folder_flag
        """The folder that holds every run directory, locked while :meth:`run` runs (``folder_flag`` names
        its option in the message): a second invocation on it would otherwise restart, or delete when its
        config differs, the runs this one is training."""
        self.devices = devices or []
        # One run per GPU: more would share a device and slow each other down unevenly.
        self.jobs = max(1, min(jobs, len(self.devices)) if self.devices else jobs)
        self.threads = threads
        self.log = log
        self.reuse = reuse
        """Read finished runs back and continue unfinished ones; False trains every run from scratch."""
        self.archive = archive
        """A folder that keeps every finished run's record beyond its run directory (:func:`archive_run`), or
        None."""

    def prepare_dir(self, task: Task) -> Path | None:
        """Make ``task.run_dir`` ready for the task's run; returns where an earlier run of *another* config was
        moved, if one was there. Such a run (a compare rerun with another budget or setting) is never deleted:
        it is kept beside, as ``<folder>@<its config's hash>``, so a user's finished runs survive a changed
        command (the README's promise: all kept). Without ``reuse`` (a benchmark told to train from scratch)
        the folder is emptied, as asked."""
        arm_yaml = task.run_dir / "arm.yaml"
        moved = None
        if not self.reuse:
            shutil.rmtree(task.run_dir, ignore_errors=True)
        elif arm_yaml.is_file() and not same_config(saved := arm_yaml.read_text(encoding="utf-8"), task):
            moved = beside(task.run_dir, hashlib.sha256(saved.encode("utf-8")).hexdigest()[:8])
            os.replace(task.run_dir, moved)
            _repoint_result(moved)
        task.run_dir.mkdir(parents=True, exist_ok=True)
        (task.run_dir / RESULT).unlink(missing_ok=True)
        arm_yaml.write_text(task.config_text, encoding="utf-8")
        return moved

    def _start(self, task: Task, slot: int) -> subprocess.Popen:
        moved = self.prepare_dir(task)
        if moved is not None:
            self.log(f"  {task.run_dir} held a run of another configuration: kept as {moved}")
        # A run a stop left checkpointed continues from there (gradus train resumes its --out): say so.
        verb = "continuing from its last checkpoint" if RunDir(task.run_dir).has_checkpoints() else "training"
        self.log(f"  {task.arm} lr {task.lr:g} seed {task.seed}: {verb} (console: {task.run_dir / 'train.log'})")
        arm_yaml = task.run_dir / "arm.yaml"
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if self.devices:
            env["CUDA_VISIBLE_DEVICES"] = str(self.devices[slot])
        else:
            # On a shared CPU box two OpenMP threads per process collapse whenever another process holds a
            # core (every parallel region waits for the descheduled thread), so each run gets its own.
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        # --no-report: an arm is read by the comparison's own table and pictures, not by a report of its own.
        cmd = [sys.executable, "-m", "gradus.cli", "train", "--config", str(arm_yaml), "--out", str(task.run_dir),
               "--no-report"]
        log = open(task.run_dir / "train.log", "a", encoding="utf-8")  # noqa: SIM115 (closed when the run ends)
        try:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()

    def _finish(self, task: Task, code: int, started: float, load_before: float) -> RunRecord:
        record = RunRecord(task.arm, task.lr, task.seed, load_before=load_before, load_after=_load(),
                           run_dir=str(task.run_dir))
        record.wall_seconds = time.perf_counter() - started
        if code != 0:
            record.diverged = f"gradus train exited {code}: {_last_line(task.run_dir / 'train.log')}"
        metrics = RunDir(task.run_dir).metrics
        record_from_metrics(record, read_records(metrics) if metrics.is_file() else [], task.budget)
        if code == 0:  # (a run a signal stopped never gets here: run() stops the experiment first)
            _write_result(task, record.to_json())
            if self.archive is not None:
                archive_run(self.archive, task, record)
        return record

    def run(self, tasks: Iterable[Task], on_done: Callable[[RunRecord], Iterable[Task]] | None = None
            ) -> list[RunRecord]:
        """Run every task (and those ``on_done`` returns as runs finish); the records in finishing order.
        A run that fails with a configuration or data error (exit 2) stops everything: every arm would
        fail the same way. With ``folder`` set, a second invocation on the same folder gets one line first."""
        lock = RunDir(self.folder).prepare(self.folder_flag) if self.folder is not None else None
        queue = list(tasks)
        running: dict[int, tuple[subprocess.Popen, Task, float, float]] = {}
        records: list[RunRecord] = []

        def done(record: RunRecord) -> None:
            records.append(record)
            if on_done is not None:
                queue.extend(on_done(record))

        previous = _raise_on_sigterm()
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    task = queue.pop(0)
                    old = finished_record(task, self.archive) if self.reuse else None
                    if old is not None:
                        if self.archive is not None and not archive_path(self.archive, task).is_file():
                            archive_run(self.archive, task, old)  # finished before the archive was asked for
                        done(old)
                        continue
                    slot = next(i for i in range(self.jobs) if i not in running)
                    running[slot] = (self._start(task, slot), task, time.perf_counter(), _load())
                for slot, (proc, task, started, load_before) in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    del running[slot]
                    if code == 2:
                        raise GradusError(f"arm {task.arm!r} (run {task.run_dir}): "
                                          f"{_last_line(task.run_dir / 'train.log')}")
                    if code == 0 and stopped_early(task.run_dir):
                        # A signal reached the run (Ctrl-C reaches every process of the terminal's group, and
                        # a run may see it before this one does): not a result, an interruption of the whole
                        # experiment, which the next invocation resumes from the run's checkpoint.
                        self.log(f"  {task.arm} lr {task.lr:g} seed {task.seed}: stopped before the end of its "
                                 "budget (checkpoint saved); rerun the same command to resume")
                        raise KeyboardInterrupt
                    done(self._finish(task, code, started, load_before))
                time.sleep(0.1)
        except BaseException:
            # Let every run stop cleanly (the trainer checkpoints on SIGINT) so the next invocation resumes it.
            for proc, *_ in running.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            for proc, *_ in running.values():
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if lock is not None:
                lock.release()
        return records


def _raise_on_sigterm():
    """Turn SIGTERM into KeyboardInterrupt while runs are going, so they are stopped (and checkpointed) with
    the sweep instead of running on orphaned; returns the previous handler (None off the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)
