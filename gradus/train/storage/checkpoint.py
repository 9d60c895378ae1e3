"""Atomic checkpoints: weights (safetensors), optimizer, counters and every stateful part.

A checkpoint is a folder ``checkpoints/step_00001234/`` holding
``model.safetensors``, ``optimizer.pt``, ``state.pt`` (counters, data pipeline, RNG, guard, early
stopping: whatever the caller passes), ``config.yaml`` and ``meta.json`` (step, tokens, losses, stage,
tokenizer identity). It is written to a hidden temporary folder and renamed into place, so a crash or a
full disk mid-write never leaves a broken latest checkpoint. ``best/`` holds a copy of the best one. The
names are :mod:`gradus.train.storage.run_dir`'s (:class:`~gradus.train.storage.run_dir.CheckpointFiles`), as is the run
directory's lock and the cleaning of what killed saves leave.

``state.pt`` maps each Stateful part's name to its ``state_dict()`` (:func:`parts_state`); resuming and
rolling back restore them with one loop (:func:`load_parts`). The names and layouts are those every
earlier gradus wrote (``progress``, ``data``, ``guard``, ``rng``, ``scaler``, plus ``world_size``), so a
checkpoint written before the parts became Stateful resumes unchanged. What must not change between a
checkpoint and the config resuming it is :func:`compat_signature`.

This module never imports the trainer: it takes objects with ``state_dict()``/``load_state_dict()``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_model, save_model

from gradus.errors import CheckpointError, ConfigError, first_line
from gradus.files import fsync_dir, make_readable
from gradus.train import faults
from gradus.train.storage.run_dir import (
    BEST,
    CHECKPOINT_FILES,
    EMA,
    EMA_WEIGHTS,
    OLD_PREFIX,
    TMP_PREFIX,
    TRASH_PREFIX,
    CheckpointFiles,
    step_name,
    step_of,
)

if TYPE_CHECKING:
    from gradus.curriculum import Schedule
    from gradus.train.stateful import Progress, Stateful



def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(path)


def _disk_full(directory: Path) -> bool:
    """Whether the file system holding ``directory`` has (next to) no space left: less than 1 MiB free."""
    try:
        return shutil.disk_usage(directory).free < (1 << 20)
    except OSError:
        return False


def _checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """About how many bytes one checkpoint takes: the weights plus the optimizer's tensors."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for state in optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


def checkpoint_meta(progress: Progress, stage_index: int, compat: dict, tokenizer_identity: dict,
                    shape: Any) -> dict[str, Any]:
    """The ``meta.json`` of a checkpoint (plain JSON): counters, stage, best loss, the compat signature,
    the tokenizer's identity and the model shape."""
    meta = {
        "step": progress.step,
        "tokens": progress.tokens,
        "stage": stage_index,
        "best_val_loss": progress.best_val_loss,
        "train_seconds": progress.train_seconds,
        "compat": compat,
        "tokenizer": tokenizer_identity,
        "model_shape": shape.__dict__ if hasattr(shape, "__dict__") else str(shape),
        # The RoPE interpolation factor the weights were trained at when saved (the stage's, set on the model at its
        # start): what loading, export and generation use, without re-planning the run's config.
        "rope_scaling": getattr(shape, "rope_scaling", None),
    }
    return json.loads(json.dumps(meta, default=str))


class CheckpointManager:
    """Saves, lists, prunes and loads the checkpoints of one run directory."""

    collective = False
    """Whether every rank calls :meth:`save` (sharded checkpoints) or rank 0 alone (this whole-model one)."""

    def __init__(self, directory: str | Path, keep_last: int = 3):
        self.dir = Path(directory)
        self.keep_last = keep_last

    # ----------------------------------------------------------------------------------- listing
    def steps(self) -> list[tuple[int, Path]]:
        """Complete step checkpoints, oldest first (a folder is complete once renamed into place)."""
        if not self.dir.is_dir():
            return []
        found = []
        for p in self.dir.iterdir():
            step = step_of(p.name)
            if step is not None and p.is_dir():
                found.append((step, p))
        return sorted(found)

    def latest(self, at_most: int | None = None) -> Path | None:
        """The newest step checkpoint (no later than step ``at_most`` when given), or None."""
        steps = [(s, p) for s, p in self.steps() if at_most is None or s <= at_most]
        return steps[-1][1] if steps else None

    def best(self) -> Path | None:
        """The best checkpoint by validation loss, or None."""
        p = self.dir / BEST
        if CheckpointFiles(p).meta.is_file():
            return p
        # A kill between mark_best's two renames leaves the previous best here (restored at start-up).
        olds = [o for o in sorted(self.dir.glob(f"{OLD_PREFIX}{BEST}-*")) if CheckpointFiles(o).meta.is_file()]
        return olds[-1] if olds else None

    # ------------------------------------------------------------------------------------ saving
    def save(
        self,
        step: int,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        meta: dict[str, Any],
        config_yaml: str,
        ema: torch.nn.Module | None = None,
    ) -> Path:
        """Write ``step_<step>`` atomically and prune old ones; with ``ema`` (the averaged model), also its
        ``ema.safetensors`` and ``ema/`` (:meth:`mark_ema`). On failure (a full disk, say) the
        temporary folder is removed, earlier checkpoints are untouched, and a CheckpointError says why."""
        final = self.dir / step_name(step)
        tmp = self.dir / f"{TMP_PREFIX}{step_name(step)}-{os.getpid()}"
        files = CheckpointFiles(tmp)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            injected = faults.active()
            injected.at("before_model")
            save_model(model, str(files.model))
            make_readable(files.model)  # safetensors writes 0600
            injected.at("after_model")
            if ema is not None:  # the averaged weights, under the name `gradus export --ema` looks for
                save_model(ema, str(files.ema_weights))
                make_readable(files.ema_weights)
            torch.save(optimizer.state_dict(), files.optimizer)
            injected.at("after_optimizer")
            torch.save(state, files.state)
            injected.at("after_state")
            files.config.write_text(config_yaml, encoding="utf-8")
            # meta.json last: a reader that finds it knows the rest is there.
            files.meta.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
            _fsync_tree(tmp)
            injected.at("before_rename")
            if final.exists():  # re-saving the same step (e.g. after a rollback): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.dir)
        except Exception as exc:  # noqa: BLE001 - torch.save raises RuntimeError, safetensors SafetensorError
            shutil.rmtree(tmp, ignore_errors=True)
            prev = self.latest()
            kept = f"the previous checkpoint {prev.name} is intact" if prev else "no earlier checkpoint exists"
            why = getattr(exc, "strerror", None) or first_line(exc)
            if _disk_full(self.dir):  # torch.save says only "file write failed" when the disk is full
                why = "no space left on device"
            need = _checkpoint_bytes(model, optimizer) / 1e6
            raise CheckpointError(
                f"could not write checkpoint {final}: {why}; {kept}; a checkpoint needs about {need:,.1f} MB: "
                f"free disk space or choose another --out"
            ) from None
        self._prune()
        if ema is not None:
            self.mark_ema(final)
        return final

    def mark_best(self, source: Path) -> Path:
        """Make ``best/`` a copy of a saved checkpoint (hard links where possible), atomically."""
        return self._publish(source, BEST)

    def mark_ema(self, source: Path) -> Path:
        """Make ``ema/`` a checkpoint of the averaged weights: a copy of ``source`` whose
        ``model.safetensors`` is its ``ema.safetensors``, so every command that reads a checkpoint
        (generate, eval, export) reads the average from ``checkpoints/ema``."""
        return self._publish(source, EMA, weights=EMA_WEIGHTS)

    def _publish(self, source: Path, name: str, weights: str | None = None) -> Path:
        """Make ``name/`` a copy of a saved checkpoint (hard links where possible), atomically; with
        ``weights``, that file of it becomes the copy's ``model.safetensors``."""
        tmp = self.dir / f"{TMP_PREFIX}{name}-{os.getpid()}"
        best = self.dir / name
        old = self.dir / f"{OLD_PREFIX}{name}-{os.getpid()}"
        try:
            if tmp.exists():
                shutil.rmtree(tmp)

            def link_or_copy(src: str, dst: str) -> None:
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)

            shutil.copytree(source, tmp, copy_function=link_or_copy)
            if weights is not None:
                os.replace(tmp / weights, CheckpointFiles(tmp).model)
            if best.exists():
                os.replace(best, old)
            os.replace(tmp, best)
            shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not best.exists():
                os.replace(old, best)
            raise CheckpointError(f"could not update {best}: {exc.strerror or exc}; free disk space") from None
        return best

    def _prune(self) -> None:
        """Delete all but the last ``keep_last``: each is renamed out of the listing first, so a kill while
        deleting leaves a ``.trash-*`` folder (removed at start-up), never a listed incomplete checkpoint."""
        steps = self.steps()
        for _, path in steps[: max(0, len(steps) - self.keep_last)]:
            trash = self.dir / f"{TRASH_PREFIX}{path.name}"
            try:
                os.replace(path, trash)
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)

    # ----------------------------------------------------------------------------------- loading
    @staticmethod
    def read_meta(path: Path) -> dict:
        """The meta.json of a checkpoint; a missing or unreadable one is a CheckpointError."""
        try:
            return json.loads(CheckpointFiles(Path(path)).meta.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: not a checkpoint (meta.json missing)") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}/meta.json is corrupt ({exc}); delete {path} to resume from an earlier one") from None

    def load(
        self, path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load weights (and optimizer) in place; returns (state, meta). Any unreadable part is a
        one-line CheckpointError naming the file; nothing on disk is changed."""
        path = Path(path)
        meta = self.read_meta(path)
        if meta.get("format") == "sharded":  # gradus.train.storage.sharded_checkpoint
            raise CheckpointError(f"{path} is sharded (written with train.parallel=fsdp over {meta.get('shards')} "
                                  f"processes); resume it with parallel: fsdp under torchrun, or start a new --out")
        missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
        if missing:
            raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
        _check_shapes(path, model)
        try:
            missing_keys, unexpected = load_model(model, str(CheckpointFiles(path).model), strict=False)
        except Exception as exc:  # safetensors raises several types for truncated/garbled files
            raise CheckpointError(
                f"{path}/model.safetensors is corrupt or does not match the model ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:120]}); delete {path} to resume from an earlier checkpoint"
            ) from None
        if missing_keys or unexpected:
            raise CheckpointError(
                f"{path}/model.safetensors does not match the model (missing {sorted(missing_keys)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}); was model.* changed?"
            )
        try:
            state = torch.load(CheckpointFiles(path).state, map_location="cpu", weights_only=False)
            if optimizer is not None:
                optimizer.load_state_dict(torch.load(CheckpointFiles(path).optimizer, map_location="cpu",
                                                     weights_only=False))
                _check_optimizer_shapes(path, optimizer)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"{path}: corrupt checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                f"delete {path} to resume from an earlier checkpoint"
            ) from None
        return state, meta


def _check_shapes(path: Path, model: torch.nn.Module) -> None:
    """A readable model.safetensors whose tensors have other shapes than the model's is a valid checkpoint
    of another model (``model.*`` changed), not a corrupt one: say so, and do not advise deleting it."""
    from safetensors import safe_open

    try:
        with safe_open(str(CheckpointFiles(path).model), framework="pt") as f:
            saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception:  # noqa: BLE001 - an unreadable file is reported as corrupt by the load that follows
        return
    for name, tensor in model.state_dict().items():
        if name in saved and saved[name] != tuple(tensor.shape):
            raise CheckpointError(
                f"{path} holds a different model: {name} has shape {list(saved[name])} there, "
                f"{list(tensor.shape)} in this config; was model.* changed? resume with the run's config.yaml "
                f"or start a new run with another --out"
            )


def _check_optimizer_shapes(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """An optimizer.pt whose moments do not match the parameters would fail only at the first step."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise CheckpointError(
                        f"{path}/optimizer.pt does not match the model ({key} of shape {list(value.shape)} for a "
                        f"parameter of shape {list(p.shape)}); delete {path} to resume from an earlier checkpoint"
                    )


# ------------------------------------------------------------------------------------- state.pt
def parts_state(parts: Mapping[str, Stateful], world_size: int) -> dict[str, Any]:
    """The ``state.pt`` payload: each part's ``state_dict()`` under its name, and the world size it was
    saved at. A part that is absent from this run (the gradient scaler outside fp16) is saved as None, as
    earlier versions did. Called on every rank: a part may gather across ranks (the RNG states)."""
    payload = {name: part.state_dict() for name, part in parts.items()}
    payload.setdefault("scaler", None)
    payload["world_size"] = world_size
    return payload


FRESH_IF_MISSING = ("gns", "adaptive")
"""Parts a checkpoint written before them may lack: they start fresh (the noise scale's averages only feed
its own figures, never the training; an adaptive controller added with ``--allow-config-change`` starts with
no decisions)."""


def load_parts(parts: Mapping[str, Stateful], state: Mapping[str, Any], path: Path) -> None:
    """Restore every part from a ``state.pt`` payload, in the parts' order: the one loop of resume and
    rollback. A part saved as None (no scaler then) keeps its fresh state; a part the checkpoint lacks is a
    one-line CheckpointError naming it."""
    missing = [name for name in parts if name not in state and name not in FRESH_IF_MISSING]
    if missing == ["ema"]:  # train.ema added to a run that had none: there is no average to continue
        raise CheckpointError(f"{path} was written without train.ema, so its weights' average cannot be resumed; "
                              f"drop train.ema, or start a new run with another --out")
    if missing:
        raise CheckpointError(
            f"{path}/state.pt has no {', '.join(missing)} state: it was not written by this gradus; "
            f"start a new run with another --out"
        )
    for name, part in parts.items():
        if state.get(name) is not None:
            part.load_state_dict(state[name])
        elif name not in state and hasattr(part, "reset"):  # a FRESH_IF_MISSING part: fresh on a rollback too
            part.reset()


# ------------------------------------------------------------------------------- compatibility
def compat_signature(schedule: Schedule, world_size: int, tokenizer_identity: dict, data: dict | None = None) -> dict:
    """What must not change between a checkpoint and the config resuming it (``data``: the data settings its
    positions rest on, :func:`gradus.data.pipeline.resume_signature`)."""
    return {
        "data": data,
        "stages": [
            {"seq_len": s.seq_len, "batch_size": s.batch_size, "start_step": s.start_step, "end_step": s.end_step,
             "kind": s.kind}
            for s in schedule.stages
        ],
        "target_tokens": schedule.target_tokens,
        "world_size": world_size,
        "tokenizer_sha256": tokenizer_identity.get("sha256"),
    }


def refuse_incompatible(path: Path, saved: dict, now: dict, allow_change: bool) -> None:
    """Raise a one-line :class:`ConfigError` when the checkpoint at ``path`` (compat signature ``saved``)
    cannot be continued under the current one (``now``), unless ``allow_change`` (--allow-config-change)."""
    problems = describe_incompatibility(saved, now)
    if problems and not allow_change:
        raise ConfigError(f"{path}: cannot continue this run: " + "; ".join(problems)
                          + "; pass --allow-config-change to continue anyway, or use a new --out")


def describe_incompatibility(saved: dict, now: dict) -> list[str]:
    """Human lines naming what differs between two compat signatures."""
    problems = []
    if saved.get("world_size") != now["world_size"]:
        problems.append(f"world size {saved.get('world_size')} → {now['world_size']} (resume on the same number of processes)")
    if saved.get("tokenizer_sha256") != now["tokenizer_sha256"]:
        problems.append("the tokenizer differs from the one the checkpoint was trained with")
    if saved.get("target_tokens") != now["target_tokens"]:
        problems.append(f"curriculum.target_tokens {saved.get('target_tokens')} → {now['target_tokens']}")
    if saved.get("data") is not None and now.get("data") is not None:  # (checkpoints before 2026-12-07 have none)
        from gradus.data.pipeline import describe_data_change

        problems += describe_data_change(saved["data"], now["data"])
    old, new = saved.get("stages", []), now["stages"]
    if len(old) != len(new):
        problems.append(f"the curriculum has {len(new)} stages, the checkpoint {len(old)}")
    else:
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            for key in ("seq_len", "batch_size", "start_step", "end_step", "kind"):
                # (a checkpoint from before stage kinds were recorded has none: not a difference)
                if a.get(key) != b.get(key) and not (key == "kind" and key not in a):
                    problems.append(f"curriculum.stages[{i}] {key} {a.get(key)} → {b.get(key)}")
    return problems
