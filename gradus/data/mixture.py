"""Per-source document feeds (read-ahead, tokenisation, shuffle buffer, epochs) and the seeded mixer.

State that is saved (``state_dict()`` / ``load_state_dict()``) versus state that is rebuilt: a feed saves its
*committed* cursor (just after the last document that entered the shuffle buffer or went downstream),
the buffer's documents (as token arrays), its RNG and counters. Documents read and tokenised ahead of that
cursor are not saved; after a restore they are read again from the cursor, which gives the same tokens.

Why the mixer is written here rather than taken from ``datasets.interleave_datasets``: the weights change
at every stage, the realised *token* shares must track the weights (documents differ in length by 100×
between GSM8K and source files), and its whole state must be a few numbers saved with the checkpoint.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

from gradus.data.reader import Cursor, Piece, Reader, start_cursor
from gradus.errors import DataError

log = logging.getLogger("gradus.data")

CHUNK_DOCS = 64
"""Documents per tokenisation chunk (one ``encode_batch`` call)."""
CHUNK_CHARS = 1 << 18
"""Characters per tokenisation chunk, whichever limit comes first."""


@dataclass(slots=True)
class _Item:
    tokens: np.ndarray | None
    piece: Piece


def _nothing() -> None:
    return None


def rng_from(*entropy: int) -> np.random.Generator:
    """A PCG64 generator seeded from integers (seed, rank, source...), the same on every machine."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(entropy))))


def name_key(name: str) -> int:
    """A stable integer for a source name (Python's ``hash`` is salted per process)."""
    import zlib

    return zlib.crc32(name.encode("utf-8"))


class SourceFeed:
    """One source's tokenised documents, shuffled through a document buffer, epoch after epoch.

    ``next_piece()`` gives ``(tokens, last)``: a whole document (EOS appended) with ``last`` True, or, for a
    document streamed in pieces, its pieces in order (``last`` True on the final one; such documents skip
    the shuffle buffer, which holds whole documents only). None means the source is exhausted (only with
    ``on_exhausted: drop``)."""

    def __init__(self, name: str, reader: Reader, encoder, *, buffer_size: int, rng: np.random.Generator,
                 on_exhausted: str = "repeat", depth: int = 1):
        self.name = name
        self.reader = reader
        self.encoder = encoder
        self.size = buffer_size
        self.rng = rng
        self.on_exhausted = on_exhausted
        self.depth = max(1, depth)
        # Chat records are tokenised span by span, with a train flag per token (gradus.data.chat).
        self.chat = getattr(reader, "chat", None) is not None
        self.pause = _nothing  # set by the pipeline's thread (see pipeline._Courtesy)
        # committed state
        self.cursor: Cursor = start_cursor()
        self.buffer: list[np.ndarray] = []
        self.emitted = 0
        self.passthrough = False
        self.done_reading = False
        self.peeked: tuple[np.ndarray, bool] | None = None
        # read-ahead state (rebuilt after a restore)
        self._reset_ahead()

    # ------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """The committed state: plain data and numpy arrays, independent of later changes."""
        return {
            "cursor": self.cursor,
            "buffer": list(self.buffer),
            "rng": self.rng.bit_generator.state,
            "emitted": self.emitted,
            "passthrough": self.passthrough,
            "done_reading": self.done_reading,
            "peeked": self.peeked,
        }

    def load_state_dict(self, state: dict) -> None:
        """Go back to a saved state; read-ahead is dropped and redone from the saved cursor."""
        self.cursor = state["cursor"]
        self.buffer = list(state["buffer"])
        self.rng.bit_generator.state = state["rng"]
        self.emitted = state["emitted"]
        self.passthrough = state["passthrough"]
        self.done_reading = state["done_reading"]
        self.peeked = state["peeked"]
        self._reset_ahead()

    def _reset_ahead(self) -> None:
        self._iter = None
        self._read_cursor: Cursor = self.cursor
        self._read_finished = self.done_reading
        self._ahead: deque[_Item] = deque()
        self._pending: deque = deque()

    @property
    def epoch(self) -> int:
        """Completed passes over the source (committed)."""
        return int(self.cursor.get("epoch", 0))

    # ------------------------------------------------------------------------------- reading ahead
    def _read_chunk(self) -> list[Piece]:
        if self._iter is None:
            self._iter = self.reader.scan(self._read_cursor)
        pieces: list[Piece] = []
        chars = 0
        for piece in self._iter:
            self.pause()
            pieces.append(piece)
            if piece.end_of_pass:
                self._iter = None
                self._read_cursor = piece.cursor
                if self.on_exhausted == "drop":
                    self._read_finished = True
                break
            chars += len(piece.text)  # type: ignore[arg-type]
            if len(pieces) >= CHUNK_DOCS or chars >= CHUNK_CHARS:
                break
        return pieces

    def _fill(self) -> None:
        while len(self._pending) < self.depth and not self._read_finished:
            pieces = self._read_chunk()
            texts = [p.text for p in pieces if not p.end_of_pass]
            eos = [p.last for p in pieces if not p.end_of_pass]
            handle = self.encoder.submit(texts, eos, chat=self.chat) if texts else None
            self._pending.append((pieces, handle))
        if not self._pending:
            return
        pieces, handle = self._pending.popleft()
        arrays = iter(handle.get() if handle is not None else ())
        for p in pieces:
            self._ahead.append(_Item(None if p.end_of_pass else next(arrays), p))

    def _take(self) -> _Item | None:
        """The next tokenised piece after the committed cursor (committing it), or None when no more."""
        while True:
            if self.done_reading:
                return None
            if not self._ahead:
                self._fill()
                if not self._ahead:
                    return None
            item = self._ahead.popleft()
            self.cursor = item.piece.cursor
            if item.piece.end_of_pass:
                if self.on_exhausted == "drop":
                    self.done_reading = True
                    log.info("source %s: end of data after %d epoch(s); it will be dropped from the mix "
                             "once its buffer is empty", self.name, self.epoch)
                continue
            return item

    # ------------------------------------------------------------------------------- output
    def peek_length(self) -> int | None:
        """Tokens in the next document (or piece) the mixer would get; None when exhausted. The document
        is drawn from the buffer now and held (in the saved state) until :meth:`pop`."""
        if self.peeked is None:
            self.peeked = self.next_piece()
        return None if self.peeked is None else len(self.peeked[0])

    def pop(self) -> tuple[np.ndarray, bool] | None:
        """The next document (or piece): the one peeked at, else a fresh one."""
        if self.peeked is None:
            return self.next_piece()
        out, self.peeked = self.peeked, None
        return out

    def next_piece(self) -> tuple[np.ndarray, bool] | None:
        """The next document (or piece of a huge one) for the mixer; None when exhausted (drop)."""
        if self.passthrough:
            item = self._take()
            if item is None:  # cannot happen for well-formed readers; be safe
                self.passthrough = False
                return None
            self.passthrough = not item.piece.last
            return item.tokens, item.piece.last  # type: ignore[return-value]
        if self.size == 0:
            item = self._take()
            if item is None:
                return None
            self.passthrough = not item.piece.last
            return item.tokens, item.piece.last  # type: ignore[return-value]
        # The buffer fills as it is used (two documents in for each one out until it is full), so the
        # first batch does not wait for a whole buffer of documents to be read and tokenised.
        target = min(self.size, self.emitted + 1)
        while len(self.buffer) < target:
            item = self._take()
            if item is None:
                break
            if not (item.piece.first and item.piece.last):
                # A document streamed in pieces cannot sit in the buffer: it goes through, in order.
                self.passthrough = not item.piece.last
                return item.tokens, item.piece.last  # type: ignore[return-value]
            self.buffer.append(item.tokens)  # type: ignore[arg-type]
        if not self.buffer:
            return None
        i = int(self.rng.integers(len(self.buffer))) if len(self.buffer) > 1 else 0
        out = self.buffer[i]
        self.buffer[i] = self.buffer[-1]
        self.buffer.pop()
        self.emitted += 1
        return out, True


class Mixer:
    """Chooses the source of the next document so that realised token shares track the stage's weights.

    Seeded and token-aware: the mixer looks at the length of each source's next document and may draw a
    source (with probability proportional to its weight) only if taking that document leaves the source
    at or below its share of the tokens drawn so far in this stage; when none qualifies, the source
    furthest behind. No source is ever more than one document ahead, and long documents wait until their
    source has fallen behind by about their length, so shares stay close to the target at every point,
    rather than the 1/sqrt(documents) of plain weighted sampling (GSM8K problems
    are ~150 tokens, source files up to ~30,000). Counters restart at each stage (with the tokens it
    inherits from the packer), so a stage's shares follow its own weights from its first batch.

    Shares are of tokens *in windows*: ``choose`` is told the tokens drawn but still waiting in the packer
    as the batch began (``waiting``) and balances drawn minus waiting. With one lane that is at most a document; with many
    lanes the waiting tokens are mostly the long documents a lane is half-way through, and balancing drawn
    tokens alone would leave the windows short of long-document sources by as much (3 points of a 1M-token
    stage with 64 lanes, measured)."""

    def __init__(self, names: list[str], rng: np.random.Generator):
        self.names = names
        self.rng = rng
        self.stage: int | None = None
        self.drawn = {n: 0 for n in names}
        self.dropped: list[str] = []
        self.sticky: str | None = None

    def state_dict(self) -> dict:
        """Plain-data state: the stage, tokens drawn per source, the RNG, dropped and sticky sources."""
        return {
            "stage": self.stage,
            "drawn": dict(self.drawn),
            "rng": self.rng.bit_generator.state,
            "dropped": list(self.dropped),
            "sticky": self.sticky,
        }

    def load_state_dict(self, state: dict) -> None:
        """Back to a saved state."""
        self.stage = state["stage"]
        self.drawn = dict(state["drawn"])
        self.rng.bit_generator.state = state["rng"]
        self.dropped = list(state["dropped"])
        self.sticky = state["sticky"]

    def begin_stage(self, stage: int, carried: dict[str, int] | None = None) -> None:
        """Start counting shares afresh when the stage changes. ``carried``: tokens already drawn that
        the new stage's windows will hold (the packer's leftover), counted as the new stage's, so its
        realised shares follow its weights from the first batch."""
        if stage != self.stage:
            self.stage = stage
            self.drawn = {n: int((carried or {}).get(n, 0)) for n in self.names}

    def choose(self, weights: dict[str, float], next_length, waiting: dict[str, int] | None = None) -> str:
        """The source of the next document. ``next_length(name)`` gives the length of that source's next
        document, or None when the source is exhausted (it is then dropped); ``waiting``: tokens per source
        drawn but not yet in a window."""
        if self.sticky is not None:
            return self.sticky  # the rest of a document streamed in pieces
        while True:
            active = [(n, w) for n, w in weights.items() if w > 0 and n not in self.dropped]
            if not active:
                configured = ", ".join(n for n, w in weights.items() if w > 0) or "none"
                raise DataError(
                    f"stage {self.stage}: every source with a weight ({configured}) is exhausted "
                    f"(on_exhausted: drop); give the stage another source or use on_exhausted: repeat"
                )
            lengths: dict[str, int] = {}
            for n, _ in active:
                length = next_length(n)
                if length is None:
                    self.drop(n, weights)
                    break
                lengths[n] = length
            else:
                break
        total_w = sum(w for _, w in active)
        done = {n: self.drawn[n] - (waiting or {}).get(n, 0) for n, _ in active}
        total = sum(done.values())
        # How far ahead of its share each source would be after taking its next document.
        over = {n: done[n] + lengths[n] - (w / total_w) * (total + lengths[n]) for n, w in active}
        cands = [(n, w) for n, w in active if over[n] <= 1e-9 * (total + 1)]
        if not cands:
            # Every next document overshoots: take the source furthest behind its share (it is at or
            # behind, since the shortfalls sum to zero), so no source gets more than one document ahead.
            return max(active, key=lambda nw: (nw[1] / total_w) * total - done[nw[0]])[0]
        if len(cands) == 1:
            return cands[0][0]
        u = self.rng.random() * sum(w for _, w in cands)
        for n, w in cands:
            u -= w
            if u < 0:
                return n
        return cands[-1][0]

    def record(self, name: str, tokens: int, last: bool) -> None:
        """Count a drawn document (or piece)."""
        self.drawn[name] += tokens
        self.sticky = None if last else name

    def drop(self, name: str, weights: dict[str, float]) -> None:
        """Take an exhausted source out of the mix for the rest of the run; the others are renormalised."""
        if name in self.dropped:
            return
        self.dropped.append(name)
        rest = {n: w for n, w in weights.items() if w > 0 and n not in self.dropped}
        total = sum(rest.values())
        shares = ", ".join(f"{n} {w / total:.3f}" for n, w in rest.items()) if total else "none left"
        log.warning("source %s is exhausted (on_exhausted: drop); mix renormalised: %s", name, shares)
