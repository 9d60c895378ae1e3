"""The exact stream of batches: the deterministic producer the data pipeline runs on its thread.

Why a module of its own: everything that decides *what* the trainer sees lives here, and nothing that decides
*when* it is made (the prefetching thread, the rewinds, the courtesy naps: :mod:`gradus.data.pipeline`). A
:class:`BatchStream` makes the next :class:`Batch` of a :class:`BatchSpec` (the shape and mix a curriculum
state asks for) from each source's feed (cursor, shuffle buffer, RNG), the mixer (its RNG and counters) and
the packer (its leftover tokens); ``state_dict()`` captures all of them after a batch and
``load_state_dict()`` puts them back, after which the batches are bit-identical to those of the
uninterrupted stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gradus.config import DataConfig
from gradus.data.mixture import Mixer, SourceFeed, name_key, rng_from
from gradus.data.packing import RecordPacker, make_packer, resolve_stride
from gradus.data.reader import Shard
from gradus.data.sources import open_reader

if TYPE_CHECKING:
    from gradus.data.tokenizer import Tokenizer

STATE_VERSION = 2
"""The layout of :meth:`BatchStream.state_dict` (a checkpoint's ``data`` entry)."""


def no_pause() -> None:
    """The pause between documents when no thread asks for one (:meth:`BatchStream.set_pause`)."""
    return None


@dataclass
class Batch:
    """One step's data for this rank: ``inputs`` and ``labels`` int64 ``[rows, seq_len]`` (labels are the
    inputs shifted by one, -100 where masked), tokens per source (input positions that hold real tokens),
    and the step and stage it was made for (-1 for validation batches)."""

    inputs: np.ndarray
    labels: np.ndarray
    tokens_by_source: dict[str, int]
    step: int
    stage_index: int
    source: str | None = field(default=None)
    """Validation batches: the one source they come from."""

    @property
    def rows(self) -> int:
        """Sequences in the batch."""
        return int(self.inputs.shape[0])

    @property
    def seq_len(self) -> int:
        """Tokens per sequence."""
        return int(self.inputs.shape[1])

    @property
    def num_tokens(self) -> int:
        """Input positions (rows × seq_len), padding included."""
        return int(self.inputs.size)


def concat_batches(batches: list[Batch]) -> Batch:
    """Consecutive batches of one stage as one batch of all their rows, in order (the step and stage of the
    first): what a step at k × the batch trains when it must see exactly the documents of k steps, as an
    adaptive run's verification branch does (:meth:`gradus.train.trainer.Trainer._run_branch`)."""
    first = batches[0]
    if any(b.seq_len != first.seq_len or b.stage_index != first.stage_index for b in batches):
        raise ValueError("concat_batches: batches of one stage and one length only")
    by_source: dict[str, int] = {}
    for b in batches:
        for name, n in b.tokens_by_source.items():
            by_source[name] = by_source.get(name, 0) + n
    return Batch(np.concatenate([b.inputs for b in batches]), np.concatenate([b.labels for b in batches]),
                 by_source, first.step, first.stage_index, first.source)


@dataclass(frozen=True)
class BatchSpec:
    """What a batch must look like: decided by the curriculum state alone."""

    stage_index: int
    seq_len: int
    rows: int
    mix: tuple[tuple[str, float], ...]
    kind: str = "pretrain"


class BatchStream:
    """The deterministic producer: call ``make(spec)`` repeatedly; ``state_dict()``/``load_state_dict()``
    its state (every feed's, the mixer's, the packer's and the counters)."""

    def __init__(self, cfg: DataConfig, tok: Tokenizer, encoder, seed: int, rank: int, world_size: int):
        self.cfg = cfg
        self.names = [s.name for s in cfg.sources]
        self.index = {n: i for i, n in enumerate(self.names)}
        depth = 1 if encoder.workers == 0 else 2 * encoder.workers
        self.feeds: dict[str, SourceFeed] = {}
        for src in cfg.sources:
            reader = open_reader(src, shard=Shard(rank, world_size), role="train", holdout=cfg.validation.fraction,
                                 retries=cfg.retries, backoff=cfg.retry_backoff, tokenizer=tok)
            self.feeds[src.name] = SourceFeed(
                src.name, reader, encoder, buffer_size=cfg.shuffle_buffer,
                rng=rng_from(seed, rank, name_key(src.name)), on_exhausted=src.on_exhausted, depth=depth,
            )
        self.mixer = Mixer(self.names, rng_from(seed, rank, 0x6D6978))
        self.packer = make_packer(cfg.packing, len(self.names), tok.dtype, tok.eos_id)
        # Stages of kind sft cut chat records one per row instead (see RecordPacker for why).
        self.records = RecordPacker(len(self.names), tok.eos_id)
        self.tokens = {n: 0 for n in self.names}
        self.batches = 0
        self.encoder = encoder
        self.pause: Callable[[], None] = no_pause

    def set_pause(self, pause: Callable[[], None]) -> None:
        """Install the function called between documents (the thread's courtesy; a no-op otherwise)."""
        self.pause = pause
        self.encoder.pause = pause
        for feed in self.feeds.values():
            feed.pause = pause

    def make(self, spec: BatchSpec) -> Batch:
        """The next batch of shape ``spec``."""
        packer = self.records if spec.kind == "sft" else self.packer
        if spec.stage_index != self.mixer.stage:
            sticky = self.mixer.sticky
            if sticky is not None and (spec.kind == "sft" or not dict(spec.mix).get(sticky, 0) > 0):
                # A document streamed in pieces stops at a switch to a stage that gives its source no weight
                # (or reads chat records): finished, the rest of a book would fill the new stage with a source
                # it excludes, millions of tokens, and an sft stage would refuse it. The packer closes it
                # there; the rest stays in the source's feed, read on if a later stage weighs the source again.
                self.mixer.sticky = None
                self.packer.end_document()
            pending = packer.pending()
            self.mixer.begin_stage(spec.stage_index, {n: int(pending[i]) for i, n in enumerate(self.names)})
        weights = dict(spec.mix)
        stride = resolve_stride(self.cfg.packing, spec.seq_len)
        # What waits in the packer as this batch starts: the pool that stays in the lanes from batch to
        # batch. Taken once per batch, not per document: during the batch's own fill the packer also holds
        # the tokens this batch is about to take, and counting those as waiting would make the mixer pick
        # one source for a whole batch.
        pending = packer.pending()
        waiting = {n: int(pending[i]) for i, n in enumerate(self.names)}

        def pull() -> tuple[np.ndarray, int, bool]:
            self.pause()
            while True:
                name = self.mixer.choose(weights, lambda n: self.feeds[n].peek_length(), waiting)
                got = self.feeds[name].pop()
                if got is None:  # only a sticky source can get here, and it cannot be exhausted mid-document
                    self.mixer.drop(name, weights)
                    self.mixer.sticky = None
                    continue
                toks, last = got
                self.mixer.record(name, len(toks), last)
                return toks, self.index[name], last

        inputs, labels, counts = packer.batch(spec.rows, spec.seq_len, stride, pull)
        by_source = {n: int(counts[i]) for i, n in enumerate(self.names)}
        for n, c in by_source.items():
            self.tokens[n] += c
        self.batches += 1
        return Batch(inputs, labels, by_source, -1, spec.stage_index)

    def state_dict(self) -> dict:
        """The full state after the last ``make``: independent of later calls (nothing is mutated in place)."""
        out = {
            "version": STATE_VERSION,
            "feeds": {n: f.state_dict() for n, f in self.feeds.items()},
            "mixer": self.mixer.state_dict(),
            "packer": self.packer.state_dict(),
            "tokens": dict(self.tokens),
            "batches": self.batches,
        }
        if self.records.cut:  # only once an sft stage cut a record: a pretraining state keeps its layout
            out["records"] = self.records.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        """Back to a ``state_dict()``."""
        for n, f in self.feeds.items():
            f.load_state_dict(state["feeds"][n])
        self.mixer.load_state_dict(state["mixer"])
        self.packer.load_state_dict(state["packer"])
        self.records.load_state_dict(state.get("records", {"cut": 0}))  # absent in states saved before sft
        self.tokens = dict(state["tokens"])
        self.batches = state["batches"]
