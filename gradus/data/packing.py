"""Packing documents into fixed-length windows: ``concat`` and ``document`` modes.

A window is ``seq_len + 1`` tokens; ``inputs`` are its first ``seq_len``, ``labels`` its last ``seq_len``
(the next token), -100 where there is nothing to predict. With the default stride (``seq_len``) every
token is an input exactly once and consecutive windows share one token (the last label of a window is the
first input of the next), so the stream of inputs *is* the document stream: nothing lost, nothing seen
twice, also when the window length changes at a stage boundary — the packer keeps its position and simply
cuts the next window at the new length. A stride below ``seq_len`` overlaps windows.

Why hand-written: a packer that changes window length and batch size between two calls, keeps its
leftover tokens in the saved state and attributes every token to its source is a few lines of numpy;
the library packers (``datasets`` ``map`` with grouping) work on a fixed length over a whole dataset.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gradus.config import PackingConfig

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


class ConcatPacker:
    """Documents joined (each ends with EOS) and cut into windows; windows may span documents."""

    def __init__(self, n_sources: int, dtype):
        self.n_sources = n_sources
        self.tokens = np.empty(0, dtype=dtype)
        self.src = np.empty(0, dtype=np.uint8)

    def state(self) -> dict:
        """Leftover tokens (and their sources) not yet cut into windows."""
        return {"tokens": self.tokens, "src": self.src}

    def restore(self, state: dict) -> None:
        """Back to saved leftovers."""
        self.tokens = np.asarray(state["tokens"])
        self.src = np.asarray(state["src"])

    def pending(self) -> np.ndarray:
        """Tokens per source index drawn but not yet in a window."""
        return np.bincount(self.src, minlength=self.n_sources)

    def batch(self, rows: int, seq_len: int, stride: int, pull: Pull) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``rows`` windows: (inputs, labels) int64 ``[rows, seq_len]`` and tokens per source index."""
        span = seq_len + 1
        need = max((rows - 1) * stride + span, rows * stride)
        parts, srcs = [self.tokens], [self.src]
        have = len(self.tokens)
        while have < need:
            toks, si, _ = pull()
            parts.append(toks)
            srcs.append(np.full(len(toks), si, dtype=np.uint8))
            have += len(toks)
        tokens = np.concatenate(parts) if len(parts) > 1 else self.tokens
        src = np.concatenate(srcs) if len(srcs) > 1 else self.src
        idx = (np.arange(rows) * stride)[:, None] + np.arange(span)[None, :]
        win = tokens[idx].astype(np.int64)
        counts = np.bincount(src[idx[:, :-1]].ravel(), minlength=self.n_sources)
        advance = rows * stride
        # Views are fine: arrays are never written in place, and pickling a view copies only its part.
        self.tokens = tokens[advance:]
        self.src = src[advance:]
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

    def state(self) -> dict:
        """The current document's remaining tokens, its source, whether it is complete, tokens dropped."""
        return {"cur": self.cur, "src": self.src, "complete": self.complete, "dropped": self.dropped}

    def restore(self, state: dict) -> None:
        """Back to a saved state."""
        self.cur = None if state["cur"] is None else np.asarray(state["cur"])
        self.src = state["src"]
        self.complete = state["complete"]
        self.dropped = state["dropped"]

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
                continue
            n = len(self.cur)
            if n >= span:
                w = self.cur[:span]
                inputs[r] = w[:-1]
                labels[r] = w[1:]
                counts[self.src] += seq_len
                r += 1
                self.cur = self.cur[stride:]  # a view: no copying per window
                if len(self.cur) == 0 and self.complete:
                    self.cur = None
                continue
            if not self.complete:
                # The document continues in its next piece (the mixer keeps to the same source).
                more, _, self.complete = pull()
                self.cur = np.concatenate([self.cur, more])
                continue
            # A complete document's tail, shorter than a window. Its first token was already the last
            # label of the previous window (or it is the whole document), so n-1 inputs remain.
            if self.remainder == "pad" and n >= 2:
                inputs[r, : n - 1] = self.cur[:-1]
                labels[r, : n - 1] = self.cur[1:]
                counts[self.src] += n - 1
                r += 1
            else:
                self.dropped += max(0, n - 1)
            self.cur = None
        return inputs, labels, counts


def make_packer(cfg: PackingConfig, n_sources: int, dtype, eos_id: int) -> ConcatPacker | DocumentPacker:
    """The packer ``cfg.mode`` names."""
    if cfg.mode == "document":
        return DocumentPacker(n_sources, dtype, eos_id, cfg.remainder)
    return ConcatPacker(n_sources, dtype)
