"""Tokenisation in the producer thread or in worker processes, with the same results either way.

The producer reads documents in order and hands chunks of texts to an encoder; :class:`InlineEncoder`
tokenises at once in the calling thread (the Rust tokenizer releases the GIL while it works, so the
trainer's thread keeps running), :class:`PoolEncoder` sends chunks to ``num_workers`` processes and
returns handles that are collected in submission order. Each worker therefore tokenises a disjoint share
of the documents, and the stream is bit-identical to the single-process one (results are pure functions
of the text), whatever the number of workers.

This module is imported by the spawned workers: it imports only numpy, ``tokenizers`` and
:mod:`gradus.data.chat` (standard library and numpy).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from collections.abc import Sequence

import numpy as np

from gradus.data.chat import chat_dtype, encode_marked, special_ids

_WORKER: dict = {}


def _nothing() -> None:
    return None


def encode_chunk(backend, texts: Sequence[str], eos: Sequence[bool], eos_id: int, dtype,
                 pause=_nothing, chat: bool = False, specials: dict[str, int] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``texts`` (EOS appended where ``eos``) as one flat array plus per-text lengths.

    One flat array keeps pickling between processes cheap (one buffer instead of one per document).
    ``pause`` is called between documents (the data thread's courtesy naps, :mod:`gradus.data.pipeline`).
    ``chat``: the texts are marked chat records; the arrays carry a train flag per token and end where the template
    says (:func:`gradus.data.chat.encode_marked`, ``specials`` its special tokens), no EOS appended."""
    if chat:
        arrays = encode_marked(backend, texts, eos_id, dtype, specials or {})
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        return (np.concatenate(arrays) if arrays else np.empty(0, dtype=chat_dtype(dtype))), lengths
    encs = backend.encode_batch_fast(list(texts), add_special_tokens=False)  # releases the GIL
    lengths = np.empty(len(encs), dtype=np.int64)
    parts = []
    for i, e in enumerate(encs):
        pause()
        ids = e.ids
        if eos[i]:
            ids.append(eos_id)
        lengths[i] = len(ids)
        parts.append(np.array(ids, dtype=dtype))
    flat = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
    return flat, lengths


def split_chunk(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Per-text arrays (views) of an :func:`encode_chunk` result."""
    if len(lengths) == 0:
        return []
    return np.split(flat, np.cumsum(lengths)[:-1])


class _Done:
    """A handle whose result is already there (the inline encoder)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def get(self, timeout: float | None = None):
        """The result."""
        return self.value


class InlineEncoder:
    """Tokenises in the calling thread."""

    workers = 0

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.pause = _nothing

    def submit(self, texts: Sequence[str], eos: Sequence[bool], chat: bool = False) -> _Done:
        """Tokenise now; the handle's ``get()`` returns per-text arrays."""
        specials = special_ids(self.tok.backend) if chat else None
        flat, lengths = encode_chunk(self.tok.backend, texts, eos, self.tok.eos_id, self.tok.dtype, self.pause,
                                     chat, specials)
        return _Done(split_chunk(flat, lengths))

    def close(self) -> None:
        """Nothing to release."""


def _init_worker(tokenizer_json: str, eos_id: int, dtype_name: str) -> None:
    # Each worker is one core's worth of tokenising: Rust-side threads would only fight each other.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer_json)
    backend.encode_special_tokens = True
    _WORKER.update(backend=backend, eos_id=eos_id, dtype=np.dtype(dtype_name), specials=special_ids(backend))


def _work(texts: list[str], eos: list[bool], chat: bool = False) -> tuple[np.ndarray, np.ndarray]:
    return encode_chunk(_WORKER["backend"], texts, eos, _WORKER["eos_id"], _WORKER["dtype"], chat=chat,
                        specials=_WORKER["specials"])


class _PoolHandle:
    __slots__ = ("result",)

    def __init__(self, result):
        self.result = result

    def get(self, timeout: float | None = None) -> list[np.ndarray]:
        """Wait for the worker; per-text arrays."""
        flat, lengths = self.result.get(timeout)
        return split_chunk(flat, lengths)


TERMINATE_TIMEOUT = 10.0
"""Seconds :meth:`PoolEncoder.close` waits for the pool's teardown before leaving it to its daemon threads."""


class PoolEncoder:
    """Tokenises in ``workers`` spawned processes (spawn, not fork: the trainer has threads)."""

    def __init__(self, tokenizer, workers: int):
        self.workers = workers
        self.pause = _nothing
        ctx = mp.get_context("spawn")
        self.pool = ctx.Pool(
            workers,
            initializer=_init_worker,
            initargs=(tokenizer.to_json(), tokenizer.eos_id, np.dtype(tokenizer.dtype).name),
        )

    def submit(self, texts: Sequence[str], eos: Sequence[bool], chat: bool = False) -> _PoolHandle:
        """Queue a chunk; the handle's ``get()`` waits for its per-text arrays."""
        return _PoolHandle(self.pool.apply_async(_work, (list(texts), list(eos), chat)))

    def close(self) -> None:
        """Stop the worker processes, waiting at most :data:`TERMINATE_TIMEOUT` seconds.

        Why not ``Pool.terminate()`` on this thread: it kills the workers, then joins the pool's own task
        thread, and that join was seen to wait for ever (2026-12-06, once in three runs of the suite:
        both workers had exited and the task thread stayed blocked on the task queue's lock). The workers
        are what the pipeline needs gone, and they are killed before that join; the pool's threads are
        daemon threads, so a stuck one ends with the process instead of hanging it."""
        stopper = threading.Thread(target=self._terminate, name="gradus-pool-terminate", daemon=True)
        stopper.start()
        stopper.join(TERMINATE_TIMEOUT)

    def _terminate(self) -> None:
        self.pool.terminate()
        self.pool.join()
