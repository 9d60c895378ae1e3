"""Packing documents into fixed-length windows: ``concat`` and ``document`` modes.

A window is ``seq_len + 1`` tokens; ``inputs`` are its first ``seq_len``, ``labels`` its last ``seq_len``
(the next token), -100 where there is nothing to predict. With the default stride (``seq_len``) every
token is an input exactly once and consecutive windows share one token (the last label of a window is the
first input of the next), so the stream of inputs *is* the document stream: nothing lost, nothing seen
twice, also when the window length changes at a stage boundary — the packer keeps its position and simply
cuts the next window at the new length. A stride below ``seq_len`` overlaps windows. With ``lanes`` > 1
the same holds for each lane: the rows of a batch come from several such streams in turn.

Why hand-written: a packer that changes window length and batch size between two calls, keeps its
leftover tokens in the saved state and attributes every token to its source is a few lines of numpy;
the library packers (``datasets`` ``map`` with grouping) work on a fixed length over a whole dataset.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gradus.config import PackingConfig
from gradus.data.chat import chat_loss_rows, is_chat
from gradus.errors import DataError

Pull = Callable[[], tuple[np.ndarray, int, bool]]
"""Gives the next document piece: (tokens, source index, last piece of its document)."""

IGNORE = -100
"""Label of a position with nothing to predict (PyTorch's cross-entropy ``ignore_index``)."""


def resolve_stride(cfg: PackingConfig, seq_len: int) -> int:
    """Tokens between window starts for a stage's ``seq_len``: ``stride``, else ``stride_fraction``
    × seq_len, else seq_len (no overlap)."""
    if cfg.stride is not None:
        return cfg.stride
    if cfg.stride_fraction is not None:
        return max(1, int(round(cfg.stride_fraction * seq_len)))
    return seq_len


LANE_CHUNK = 16384
"""With several lanes, the most tokens one lane takes from a document at a time: a long document (a 1 MB
plain-text piece is ~250k tokens) is dealt to lanes in chunks of this size, so no lane holds a whole book
and the lanes' memory stays below ``lanes × (LANE_CHUNK + seq_len)`` tokens."""


def row_lanes(next_lane: int, rows: int, lanes: int) -> list[int]:
    """The lane each row of a concat batch is cut from, given the packer's ``next`` before the batch."""
    active = min(rows, lanes)
    start = next_lane % active
    return [(start + r) % active for r in range(rows)]


class ConcatPacker:
    """Documents joined (each ends with EOS) and cut into windows; windows may span documents.

    Rows come from up to ``lanes`` independent token streams. A batch of ``rows`` uses
    ``active = min(lanes, rows)`` of them: row ``r`` is cut from lane ``(next + r) % active`` and ``next``
    moves on by ``rows``, so with ``rows <= lanes`` row ``r`` is always lane ``r``, a stream of its own that
    continues in the next step (also across a change of length), and with more rows than lanes a lane
    serves several rows of a batch, consecutive windows of its stream.

    Why lanes: with one lane a batch is consecutive windows of one stream, so a small batch (2,048 tokens
    of 256-token rows) holds about one document, and a short stage's many rows hold the same few documents
    cut finer. With a lane per row every row of a batch comes from another document, and a short stage's
    many rows are as many documents: the independent samples per step that a short-sequence stage is meant
    to buy. The price is a pool of about ``active`` × half a document waiting in the lanes, which lags a mix
    change by as much (counted by :meth:`pending`; the mixer makes up for it).

    When ``active`` shrinks at a stage change, the dropped lanes' tokens go to a queue that refills take
    from before pulling new documents: nothing is lost or repeated. Each lane is a contiguous stream of
    whole documents with EOS between them, except where a long document is dealt out in
    :data:`LANE_CHUNK`-token chunks or a queued remainder continues in another lane (one cut context
    each)."""

    def __init__(self, n_sources: int, dtype, lanes: int = 1):
        self.n_sources = n_sources
        self.lanes = lanes
        self.empty_t, self.empty_s = np.empty(0, dtype=dtype), np.empty(0, dtype=np.uint8)
        self.tokens: list[np.ndarray] = [self.empty_t] * lanes
        self.src: list[np.ndarray] = [self.empty_s] * lanes
        self.next = 0
        # Tokens drawn but in no lane: the rest of the last document pulled, the lanes dropped at a
        # shrink. Refills take from the front.
        self.queue: list[tuple[np.ndarray, np.ndarray]] = []
        # Tokens per source pulled but not yet cut, kept up to date (derived from the state, not saved).
        self._pending = np.zeros(n_sources, dtype=np.int64)

    def state_dict(self) -> dict:
        """Leftover tokens (and their sources) per lane not yet cut into windows, the next lane, and the
        queue of drawn tokens in no lane."""
        return {"tokens": list(self.tokens), "src": list(self.src), "next": self.next, "queue": list(self.queue)}

    def load_state_dict(self, state: dict) -> None:
        """Back to saved leftovers."""
        self.tokens = [np.asarray(t) for t in state["tokens"]]
        self.src = [np.asarray(s) for s in state["src"]]
        self.next = int(state["next"])
        self.queue = [(np.asarray(t), np.asarray(s)) for t, s in state["queue"]]
        self._pending = np.zeros(self.n_sources, dtype=np.int64)
        for s in [*self.src, *(q[1] for q in self.queue)]:
            self._pending += np.bincount(s, minlength=self.n_sources)

    def pending(self) -> np.ndarray:
        """Tokens per source index drawn but not yet in a window."""
        return self._pending.copy()

    def end_document(self) -> None:
        """The document being pulled in pieces stops here (its source left the mix): nothing to do, since a
        lane is a stream and the next document follows it as a chunked one does (one cut context)."""

    def _fill(self, lane: int, need: int, pull: Pull) -> tuple[np.ndarray, np.ndarray]:
        """Lane ``lane``'s tokens and sources, topped up to at least ``need`` tokens."""
        parts, srcs = [self.tokens[lane]], [self.src[lane]]
        have = len(parts[0])
        while have < need:
            if not self.queue:
                toks, si, _ = pull()
                self.queue.append((toks, np.full(len(toks), si, dtype=np.uint8)))
                self._pending[si] += len(toks)
            toks, src = self.queue[0]
            # One lane is one stream: it takes everything. Several lanes deal long documents out in chunks.
            take = len(toks) if self.lanes == 1 else max(LANE_CHUNK, need - have)
            parts.append(toks[:take])
            srcs.append(src[:take])
            have += len(parts[-1])
            if take >= len(toks):
                self.queue.pop(0)
            else:
                self.queue[0] = (toks[take:], src[take:])
        if len(parts) == 1:
            return parts[0], srcs[0]
        return np.concatenate(parts), np.concatenate(srcs)

    def _shrink(self, active: int) -> None:
        """Move the tokens of lanes ``active`` and up to the front of the queue (in lane order), ahead of
        any undealt document: the oldest tokens are used first."""
        dropped = [(self.tokens[i], self.src[i]) for i in range(active, self.lanes) if len(self.tokens[i])]
        if dropped:
            self.queue = dropped + self.queue
            for i in range(active, self.lanes):
                self.tokens[i], self.src[i] = self.empty_t, self.empty_s
        self.next %= active

    def batch(self, rows: int, seq_len: int, stride: int, pull: Pull) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``rows`` windows: (inputs, labels) int64 ``[rows, seq_len]`` and tokens per source index."""
        span = seq_len + 1
        active = min(rows, self.lanes)
        self._shrink(active)
        win = np.empty((rows, span), dtype=np.int64)
        counts = np.zeros(self.n_sources, dtype=np.int64)
        # Lanes q < extra serve base + 1 rows of this batch (rows q, q + active, ...), the others base rows.
        base, extra = divmod(rows, active)
        for first, last, k in ((0, extra, base + 1), (extra, active, base)):
            if k == 0 or first == last:
                continue
            need = max((k - 1) * stride + span, k * stride)
            lanes = [(self.next + q) % active for q in range(first, last)]
            for lane in lanes:  # refills, in lane order: the only per-document Python work
                if len(self.tokens[lane]) < need:
                    self.tokens[lane], self.src[lane] = self._fill(lane, need, pull)
            # Every lane of the group now holds >= need tokens: cut all their windows with one gather
            # rather than a numpy call per lane (256 lanes of 8-token rows would otherwise be Python-bound).
            toks = np.stack([self.tokens[lane][:need] for lane in lanes])
            srcs = np.stack([self.src[lane][:need] for lane in lanes])
            idx = (np.arange(k) * stride)[:, None] + np.arange(span)[None, :]  # [k, span]
            # Row first + q + j * active is the group's q-th lane's j-th window.
            win[first + np.arange(last - first)[:, None] + active * np.arange(k)[None, :]] = toks[:, idx]
            counts += np.bincount(srcs[:, idx[:, :-1]].ravel(), minlength=self.n_sources)
            self._pending -= np.bincount(srcs[:, : k * stride].ravel(), minlength=self.n_sources)
            # Views are fine: arrays are never written in place, and pickling a view copies only its part.
            for lane in lanes:
                self.tokens[lane] = self.tokens[lane][k * stride :]
                self.src[lane] = self.src[lane][k * stride :]
        self.next = (self.next + rows) % active
        return win[:, :-1], win[:, 1:], counts


class DocumentPacker:
    """Windows never cross a document boundary; a document's tail shorter than a window is dropped or
    padded (inputs padded with ``pad_id``, labels with -100)."""

    def __init__(self, n_sources: int, dtype, pad_id: int, remainder: str):
        self.n_sources = n_sources
        self.dtype = dtype
        self.pad_id = pad_id
        self.remainder = remainder
        self.cur: np.ndarray | None = None
        self.src = 0
        self.complete = True
        self.dropped = 0
        # How many leading tokens of ``cur`` a window has already had as labels: 1 for a fresh document (its
        # first token is never a label), seq_len + 1 - stride after a window (all of them with an overlapping
        # stride), so a tail row trains only labels no window gave.
        self.covered = 1

    def state_dict(self) -> dict:
        """The current document's remaining tokens, its source, whether it is complete, tokens dropped, and how
        many of its leading tokens were already labels."""
        return {"cur": self.cur, "src": self.src, "complete": self.complete, "dropped": self.dropped,
                "covered": self.covered}

    def load_state_dict(self, state: dict) -> None:
        """Back to a saved state (one saved before ``covered`` existed: 1, what the packer assumed then)."""
        self.cur = None if state["cur"] is None else np.asarray(state["cur"])
        self.src = state["src"]
        self.complete = state["complete"]
        self.dropped = state["dropped"]
        self.covered = int(state.get("covered", 1))

    def end_document(self) -> None:
        """The document being pulled in pieces stops here (its source left the mix): what was pulled of it is
        a complete document, its tail padded or dropped as any other."""
        self.complete = True

    def pending(self) -> np.ndarray:
        """Tokens per source index drawn but not yet in a window (the current document's rest)."""
        out = np.zeros(self.n_sources, dtype=np.int64)
        if self.cur is not None:
            out[self.src] = len(self.cur)
        return out

    def batch(self, rows: int, seq_len: int, stride: int, pull: Pull) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``rows`` windows, each inside one document."""
        span = seq_len + 1
        inputs = np.full((rows, seq_len), self.pad_id, dtype=np.int64)
        labels = np.full((rows, seq_len), IGNORE, dtype=np.int64)
        counts = np.zeros(self.n_sources, dtype=np.int64)
        r = 0
        while r < rows:
            if self.cur is None:
                self.cur, self.src, self.complete = pull()
                self.covered = 1
                continue
            n = len(self.cur)
            if n >= span:
                w = self.cur[:span]
                inputs[r] = w[:-1]
                labels[r] = w[1:]
                counts[self.src] += seq_len
                r += 1
                self.cur = self.cur[stride:]  # a view: no copying per window
                self.covered = max(1, span - stride)
                if len(self.cur) == 0 and self.complete:
                    self.cur = None
                continue
            if not self.complete:
                # The document continues in its next piece (the mixer keeps to the same source).
                more, _, self.complete = pull()
                self.cur = np.concatenate([self.cur, more])
                continue
            # A complete document's tail, shorter than a window. Its first ``covered`` tokens were already labels
            # of the previous window (its last one at stride = seq_len; more with an overlapping stride) or it is
            # the whole document: the row gives them as context only, and trains the n - covered labels left.
            new = n - self.covered
            if self.remainder == "pad" and n >= 2 and new > 0:
                inputs[r, : n - 1] = self.cur[:-1]
                labels[r, self.covered - 1 : n - 1] = self.cur[self.covered :]
                counts[self.src] += new
                r += 1
            else:
                self.dropped += max(0, new)
            self.cur = None
        return inputs, labels, counts


class RecordPacker:
    """Stage kind ``sft``: one chat record per row, padded after it, labels -100 except on the assistant's
    tokens (:func:`gradus.data.chat.chat_loss_rows`).

    Why one record per row rather than several records packed with a block-diagonal attention mask: the
    causal mask alone then keeps every record to itself (padding comes after the record, so nothing real
    attends to it), the model and its SDPA call stay as they are, and nothing is carried from one batch to
    the next. The price is the padding, small for a fine-tuning set whose records are about one length;
    the tokens of a record longer than seq_len + 1 are cut and counted (``cut``)."""

    def __init__(self, n_sources: int, pad_id: int):
        self.n_sources = n_sources
        self.pad_id = pad_id
        self.cut = 0

    def state_dict(self) -> dict:
        """Tokens cut from records longer than a row so far (nothing else outlives a batch)."""
        return {"cut": self.cut}

    def load_state_dict(self, state: dict) -> None:
        """Back to a saved state."""
        self.cut = int(state["cut"])

    def pending(self) -> np.ndarray:
        """Tokens drawn but not in a row: none (every record pulled goes into its row)."""
        return np.zeros(self.n_sources, dtype=np.int64)

    def batch(self, rows: int, seq_len: int, stride: int, pull: Pull) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``rows`` records, one per row; ``stride`` does not apply."""
        records = []
        counts = np.zeros(self.n_sources, dtype=np.int64)
        for _ in range(rows):
            toks, si, _last = pull()
            if not is_chat(toks):  # the config checks keep text sources out of sft stages
                raise DataError("a stage with kind: sft got a text document; give text sources weight 0 there")
            records.append(toks)
            counts[si] += min(len(toks), seq_len + 1) - 1
        inputs, labels, cut = chat_loss_rows(records, seq_len, self.pad_id)
        self.cut += cut
        return inputs, labels, counts


def make_packer(cfg: PackingConfig, n_sources: int, dtype, eos_id: int) -> ConcatPacker | DocumentPacker:
    """The packer ``cfg.mode`` names."""
    if cfg.mode == "document":
        return DocumentPacker(n_sources, dtype, eos_id, cfg.remainder)
    return ConcatPacker(n_sources, dtype, cfg.lanes)
