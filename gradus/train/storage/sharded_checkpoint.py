"""Sharded checkpoints for ``train.parallel: fsdp``: every rank writes its own shard, nobody gathers the model.

Under FSDP2 no rank holds the whole model, so the weights and AdamW's moments are saved with
``torch.distributed.checkpoint`` (DCP) into ``shards/`` (one ``__<rank>_0.distcp`` file per rank and a
``.metadata`` index). The rest of the folder is as :mod:`gradus.train.storage.checkpoint` writes it: ``state.pt``
(the ``{name: part}`` Stateful payload, the data pipeline's state per rank), ``config.yaml`` and ``meta.json``
(with ``"format": "sharded"``), all written by rank 0. The save is atomic like today's: everything goes into
a hidden ``.tmp-step_*`` folder, renamed into place once every rank's shard is on disk.

DCP reshards on load, so the weights and optimizer resume on another number of processes; the data
pipeline's per-rank positions do not map onto other ranks, so that needs ``--allow-config-change`` (see
:class:`gradus.train.stateful.PerRank`). :func:`consolidate` turns the shards into the one
``model.safetensors`` that ``gradus export`` / ``eval`` / ``generate`` read, in one process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from gradus.errors import CheckpointError, first_line
from gradus.files import fsync_dir, make_readable
from gradus.train import faults
from gradus.train.fp8 import plain_tensors
from gradus.train.runtime import Runtime
from gradus.train.storage.checkpoint import CheckpointManager
from gradus.train.storage.run_dir import MODEL, SHARDS, TMP_PREFIX, CheckpointFiles, step_name

FORMAT = "sharded"
"""``meta.json``'s ``format`` for a sharded checkpoint (a whole-model one has none)."""


def is_sharded_checkpoint(path: Path) -> bool:
    """True for a checkpoint folder written by :class:`ShardedCheckpointManager`."""
    files = CheckpointFiles(Path(path))
    return files.meta.is_file() and (files.shards / ".metadata").is_file()


def open_checkpoints(directory: Path, train, rt: Runtime) -> CheckpointManager:
    """The run's checkpoint manager for ``train`` (a :class:`~gradus.config.TrainConfig`): sharded (every rank
    writes, :class:`ShardedCheckpointManager`) when FSDP shards the model, else the whole-model one rank 0
    writes; keeping ``train.keep_last``."""
    from gradus.train.parallel import shards

    if shards(rt, train.parallel):
        return ShardedCheckpointManager(directory, keep_last=train.keep_last, rt=rt)
    return CheckpointManager(directory, keep_last=train.keep_last)


def _fsync_files(path: Path) -> None:
    """fsync every file under ``path`` and every folder, deepest first (the shards sit in a subfolder)."""
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            with open(Path(root) / name, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(root))


class ShardedCheckpointManager(CheckpointManager):
    """Saves and loads sharded checkpoints; :meth:`save` and :meth:`load` are collectives (every rank calls
    them). Listing, pruning, ``best/`` and reading ``meta.json`` are the whole-model manager's."""

    collective = True

    def __init__(self, directory: str | Path, keep_last: int, rt: Runtime):
        super().__init__(directory, keep_last=keep_last)
        self.rt = rt

    def save(self, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
             meta: dict[str, Any], config_yaml: str, ema: torch.nn.Module | None = None) -> Path:
        """Write ``step_<step>`` atomically: every rank its shard into the temporary folder, then rank 0 the
        rest, the rename and the pruning. A failure on any rank removes the temporary folder on all of
        them and raises one CheckpointError naming the first reason; earlier checkpoints are untouched."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        final = self.dir / step_name(step)
        tmp = self.dir / f"{TMP_PREFIX}{step_name(step)}-sharded"  # one name every rank knows
        main = self.rt.is_main
        why = self._each_rank(lambda: self._fresh(tmp) if main else None)
        if why is None:
            injected = faults.active()

            def shards() -> None:
                injected.at("before_model")
                model_state, optim_state = get_state_dict(model, optimizer)
                # Plain tensors only (fp8's float8 all-gather wraps weights in a torchao class): readable anywhere.
                dcp.save(plain_tensors({"model": model_state, "optim": optim_state}),
                         checkpoint_id=str(CheckpointFiles(tmp).shards))
                injected.at("after_model")

            why = self._each_rank(shards)
        if why is None:
            why = self._each_rank(lambda: self._finish(tmp, final, state, meta, config_yaml) if main else None)
        if why is not None:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            prev = self.latest()
            kept = f"the previous checkpoint {prev.name} is intact" if prev else "no earlier checkpoint exists"
            # Every rank learnt it in _each_rank: they leave together, and rank 0 alone says it.
            raise CheckpointError(f"could not write checkpoint {final}: {why}; {kept}; free disk space or choose "
                                  f"another --out", agreed=True, silent=not main)
        if main:
            self._prune()
        return final

    def _each_rank(self, action) -> str | None:
        """Run ``action`` on this rank; a reason when it failed on any rank (every rank learns it)."""
        why = None
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - DCP, torch.save and the file system raise many types
            why = getattr(exc, "strerror", None) or first_line(exc)
        return (why or "another rank could not write its part") if self.rt.any_over_ranks(why is not None) else None

    def _fresh(self, tmp: Path) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()

    def _finish(self, tmp: Path, final: Path, state: dict, meta: dict, config_yaml: str) -> None:
        """Rank 0: the state of the Stateful parts, the config, meta.json last, fsync, rename."""
        injected, files = faults.active(), CheckpointFiles(tmp)
        torch.save(state, files.state)
        injected.at("after_state")
        files.config.write_text(config_yaml, encoding="utf-8")
        meta = {**meta, "format": FORMAT, "shards": self.rt.world_size}
        files.meta.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        _fsync_files(tmp)
        injected.at("before_rename")
        if final.exists():  # re-saving the same step (after a rollback): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(self.dir)

    def load(self, path: Path, *, model: torch.nn.Module,
             optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load this rank's shard of the weights (and optimizer) in place, resharded when the checkpoint was
        written by another number of processes; returns (state, meta) like the whole-model manager."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        path = Path(path)
        meta = self.read_meta(path)
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} holds a whole model (written with train.parallel=ddp or on one process); "
                                  f"resume it with parallel: ddp, or start a new --out")
        if not is_sharded_checkpoint(path) or not CheckpointFiles(path).state.is_file():
            raise CheckpointError(f"{path}: incomplete sharded checkpoint; delete it to resume from an earlier one")
        try:
            model_state, optim_state = get_state_dict(model, optimizer if optimizer is not None else [])
            # Loaded in place into the tensors fp8's wrappers hold (fp8.plain_tensors), as they were saved.
            wanted = plain_tensors({"model": model_state, **({"optim": optim_state} if optimizer is not None else {})})
            dcp.load(wanted, checkpoint_id=str(CheckpointFiles(path).shards))
            set_state_dict(model, optimizer if optimizer is not None else [], model_state_dict=wanted["model"],
                           optim_state_dict=wanted.get("optim", {}))
            state = torch.load(CheckpointFiles(path).state, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - DCP raises a CheckpointException wrapping every rank's error
            first = first_line(exc)
            raise CheckpointError(f"{path}: cannot load the sharded checkpoint ({first}); was model.* changed? "
                                  f"delete it to resume from an earlier one") from None
        return state, meta


def consolidated_path(path: Path) -> Path:
    """Where :func:`consolidate` puts the whole model of the sharded checkpoint ``path``: in the folder itself,
    or, when that folder cannot be written (a read-only run directory, another user's run), in this user's
    folder in the temp folder under a name unique to the checkpoint (its path and ``meta.json``), so reading
    never needs write access to the run. Those copies are not cleaned up: the temp folder's rules apply."""
    inside = CheckpointFiles(path).model
    if inside.is_file() or os.access(path, os.W_OK):
        return inside
    # This user's own folder (0700, checked to be theirs), so nobody else can plant the weights it reads.
    mine = Path(tempfile.gettempdir()) / f"gradus-consolidated-{os.getuid()}"
    try:
        mine.mkdir(mode=0o700, exist_ok=True)
        owner = mine.stat().st_uid
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be written and {mine} cannot be made ({exc.strerror or exc}); copy "
                              "the checkpoint somewhere writable") from None
    if owner != os.getuid():
        raise CheckpointError(f"{mine} belongs to another user; remove it, or copy {path} somewhere writable")
    meta = CheckpointManager.read_meta(path)
    key = hashlib.sha256(f"{path.resolve()}|{json.dumps(meta, sort_keys=True)}".encode()).hexdigest()[:16]
    return mine / key / MODEL


def consolidate(path: Path) -> Path:
    """Write ``model.safetensors`` (the whole model, with its shape) from a sharded checkpoint's shards, in
    this one process, to :func:`consolidated_path`, and return it: what ``gradus export`` / ``eval`` read.
    Written aside and renamed, so a half-written file is never taken for the weights. Already there:
    returned as is."""
    import torch.distributed.checkpoint as dcp

    from gradus.model.gpt import GPT
    from gradus.sizes import ModelShape

    path = Path(path)
    out = consolidated_path(path)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    stored = CheckpointManager.read_meta(path).get("model_shape")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}/meta.json has no model_shape; cannot rebuild the model from its shards")
    model = GPT(ModelShape.from_dict(stored))
    weights = {"model": model.state_dict()}
    try:
        with warnings.catch_warnings():  # "torch.distributed is ... uninitialized": one process is the intent
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(weights, checkpoint_id=str(CheckpointFiles(path).shards), no_dist=True)
    except Exception as exc:  # noqa: BLE001 - see ShardedCheckpointManager.load
        first = first_line(exc)
        raise CheckpointError(f"{path}/{SHARDS}: cannot be read into {model.shape.describe()} ({first})") from None
    model.load_state_dict(weights["model"])
    tmp = out.parent / f".model-{os.getpid()}.safetensors"
    try:
        model.save_safetensors(tmp)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {out}: {exc.strerror or exc}; free disk space") from None
    make_readable(out)
    return out
