"""The one convention for what a checkpoint carries from the train side.

Every part a checkpoint saves besides the weights and the optimizer has ``state_dict()`` (plain,
picklable data) and ``load_state_dict(state)`` (put it back): the progress counters below, the RNG
states (:class:`RngState`), the loss guard, the gradient scaler and the data pipeline. The trainer keeps
them in one ``{name: part}`` mapping; saving, resuming and rolling back are one loop over it
(:func:`gradus.train.storage.checkpoint.parts_state`, :func:`gradus.train.storage.checkpoint.load_parts`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

from gradus.errors import CheckpointError
from gradus.train.runtime import Runtime, rng_state, set_rng_state


@runtime_checkable
class Stateful(Protocol):
    """A part whose state a checkpoint saves and restores."""

    def state_dict(self) -> Any:
        """The part's state as plain, picklable data."""
        ...

    def load_state_dict(self, state: Any) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


@dataclass
class Progress:
    """Counters and trackers that a checkpoint carries besides the model, optimizer and data."""

    step: int = 0
    """Optimizer steps done (skipped non-finite steps included, rolled-back ones not)."""
    tokens: int = 0
    """Tokens trained on, over all ranks."""
    train_seconds: float = 0.0
    """Seconds inside the training steps (data wait included; evaluation and checkpoints not)."""
    best_val_loss: float | None = None
    """Best reference-length validation loss so far."""
    evals_since_best: int = 0
    """Evaluations since the best one (early-stopping patience)."""
    last_checkpoint_tokens: int = 0
    """``tokens`` at the last checkpoint (for ``checkpoint_every_tokens``)."""
    recent_val_losses: list[float] = field(default_factory=list)
    """The followed validation loss of the last few evaluations (the flat-curve test)."""

    def state_dict(self) -> dict[str, Any]:
        """The counters as a dict (the key names are the on-disk format)."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set the counters in place (the loop holds a reference); a key a checkpoint lacks keeps its value."""
        for f in fields(self):
            if f.name in state:
                value = state[f.name]
                setattr(self, f.name, list(value) if isinstance(value, list) else value)


class RngState:
    """Python, NumPy, torch and CUDA RNG states of every rank, as one Stateful part.

    Under DDP :meth:`state_dict` is a collective (each rank's state is gathered, a list by rank); alone it
    is this process's state. :meth:`load_state_dict` restores this rank's entry, and leaves the RNGs as
    they are when the checkpoint was written by another number of processes (its states do not map onto
    these ranks)."""

    def __init__(self, rt: Runtime):
        self.rt = rt

    def state_dict(self) -> dict | list[dict]:
        """This process's RNG states, or (DDP) every rank's, gathered on every rank."""
        own = rng_state()
        return self.rt.gather(own) if self.rt.distributed else own

    def load_state_dict(self, state: dict | list[dict]) -> None:
        """Restore this rank's RNG states (see the class docstring for a changed world size)."""
        if isinstance(state, list):
            if self.rt.distributed and len(state) != self.rt.world_size:
                return
            set_rng_state(state[self.rt.rank])
        elif not self.rt.distributed:
            set_rng_state(state)


class PerRank:
    """A part whose state differs on every rank (the data pipeline: each rank reads its own shard), saved
    for all of them.

    Under DDP :meth:`state_dict` is a collective that gathers every rank's state into a list by rank, and
    :meth:`load_state_dict` restores this rank's entry; alone it is the part's own state, the layout
    single-process checkpoints have always had. A checkpoint from another number of processes (or one
    written before per-rank saving, which held rank 0's state only) is refused in one line: each rank's
    position in its shard cannot be mapped onto other ranks. With ``restart_on_other_world_size``
    (``--allow-config-change``) such a checkpoint leaves the part fresh instead: every rank's data order
    starts again at the beginning of its new shard, while the counters (step, tokens, so the curriculum)
    continue."""

    def __init__(self, part: Stateful, rt: Runtime, name: str, restart_on_other_world_size: bool = False):
        self.part, self.rt, self.name = part, rt, name
        self.restart_on_other_world_size = restart_on_other_world_size

    def state_dict(self) -> Any:
        """The part's state, or (DDP) every rank's, gathered on every rank."""
        own = self.part.state_dict()
        return self.rt.gather(own) if self.rt.distributed else own

    def load_state_dict(self, state: Any) -> None:
        """Restore this rank's entry (see the class docstring)."""
        saved_ranks = len(state) if isinstance(state, list) else 1
        if saved_ranks != self.rt.world_size and self.restart_on_other_world_size:
            return  # fresh: this rank's new shard from its beginning
        if isinstance(state, list):
            if len(state) != self.rt.world_size:
                raise CheckpointError(
                    f"the checkpoint's {self.name} state was saved by {len(state)} processes, this run has "
                    f"{self.rt.world_size}; resume on {len(state)} processes"
                )
            self.part.load_state_dict(state[self.rt.rank])
        elif self.rt.distributed:
            raise CheckpointError(
                f"the checkpoint holds one {self.name} state for {self.rt.world_size} processes (written before "
                f"gradus saved every rank's); resume it with the version that wrote it, or start a new --out"
            )
        else:
            self.part.load_state_dict(state)
