"""Which reader a source config opens: the one place that maps a ``data.sources`` entry to a reader.

Callers (the pipeline, held-out validation, tokenizer training, ``gradus data``) ask for the reader of
a source and a role — train, validation or all — and never pick a class themselves, so the rules that
tie a role to a split (an explicit ``validation_split`` replaces the hash split) live in one function,
:func:`open_reader`.

A source is one of: local files (JSONL, JSON.GZ, a JSON array, Parquet, plain text) by path, folder or
glob (:mod:`.local_files`); a Hugging Face dataset streamed with ``datasets.load_dataset(...,
streaming=True)`` (:mod:`.hf_stream`); or a builtin offline corpus (:mod:`gradus.data.builtin`, read by
:class:`BuiltinReader` below). All of them are :class:`gradus.data.reader.Reader` subclasses, yielding
resumable :class:`~gradus.data.reader.Piece` objects under the same rules.
"""

from __future__ import annotations

from collections.abc import Iterator

from gradus.config import SourceConfig
from gradus.data.chat import ChatRenderer
from gradus.data.hf_stream import HFReader
from gradus.data.local_files import FileReader
from gradus.data.reader import Cursor, RawRecord, Reader, Shard
from gradus.errors import DataError


class BuiltinReader(Reader):
    """A builtin offline corpus (:mod:`gradus.data.builtin`); the cursor is the record index."""

    def describe(self) -> str:
        """The builtin corpus and where its text comes from."""
        from gradus.data.builtin import builtin_origin

        return f"builtin {self.cfg.builtin!r} ({builtin_origin(self.cfg.builtin or '')})"

    def _records(self, cursor: Cursor) -> Iterator[RawRecord]:
        from gradus.data.builtin import builtin_record, builtin_size

        kind = self.cfg.builtin or ""
        n = builtin_size(kind)
        shard = self.shard
        start = cursor.get("record", 0)
        for i in range(start, n):
            if shard.count > 1 and i % shard.count != shard.index:
                continue  # skip without building the record (the base class would drop it anyway)
            yield RawRecord(i, {"record": i + 1}, builtin_record(kind, i), f"builtin {kind} document {i}")


def open_reader(cfg: SourceConfig, *, shard: Shard = Shard(), role: str = "train", holdout: float = 0.0,
                retries: int = 5, backoff: float = 2.0, tokenizer=None) -> Reader:
    """The reader for a source. ``role="validation"`` reads the explicit ``validation_split`` when the
    source has one, else the held-out documents of the source itself. ``tokenizer`` (the run's) lends a
    chat source its Hugging Face chat template and end token; without it chat records use the built-in
    template (enough for counting documents or training a BPE)."""
    reader = _open(cfg, shard, role, holdout, retries, backoff)
    if tokenizer is not None and reader.chat is not None:
        reader.chat = ChatRenderer(cfg, getattr(tokenizer, "chat_template", None), tokenizer.eos_token)
    return reader


def _open(cfg: SourceConfig, shard: Shard, role: str, holdout: float, retries: int, backoff: float) -> Reader:
    if role == "validation" and cfg.validation_split:
        if cfg.dataset:
            return HFReader(cfg, Shard(), "all", 0.0, split=cfg.validation_split, retries=retries, backoff=backoff)
        if cfg.path:
            return FileReader(cfg, Shard(), "all", 0.0, path=cfg.validation_split)
        raise DataError(f"source {cfg.name!r}: builtin sources have no validation_split; leave it unset")
    if role == "train" and cfg.validation_split:
        holdout = 0.0  # an explicit validation split replaces the hash split
    if cfg.dataset:
        return HFReader(cfg, shard, role, holdout, retries=retries, backoff=backoff)
    if cfg.path:
        return FileReader(cfg, shard, role, holdout)
    return BuiltinReader(cfg, shard, role, holdout)
