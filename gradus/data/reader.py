"""The rules every document source shares, written once so that every kind of source obeys them alike.

Exact resume, the train/validation split and the error messages must not depend on where the documents
come from: a checkpoint saved while reading a JSONL file, a Hugging Face stream or a builtin corpus has
to reopen at the same document, and a document held out for validation has to be held out whichever
reader meets it. So the readers of :mod:`.local_files`, :mod:`.hf_stream` and :mod:`.sources` (builtin)
only produce raw records and say where each one ends; everything else happens here, in :meth:`Reader.scan`.

A :class:`Reader` turns a source into :class:`Piece` objects: a document's text (a huge plain-text
document arrives as several pieces, ``first``/``last`` mark its ends), plus a *cursor* — a small dict
saying where the piece ends. Reopening a reader at a cursor continues with the next piece, which is what
exact resume rests on. A pass ends with a piece whose ``text`` is None, carrying the cursor of the next
pass (epoch).

The shared rules: documents are sharded by record index (record ``i`` belongs to shard ``i % count``),
empty documents are skipped and counted, invalid UTF-8 is replaced and counted, a record without its text
field is a :class:`DataError` naming file and line, held-out documents (a hash of the text, see
:func:`is_heldout`) are skipped for training and are the only ones a validation reader yields, and a pass
without a single document is an error naming the source.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gradus.config import SourceConfig
from gradus.data.chat import ChatRenderer
from gradus.errors import DataError

Cursor = dict[str, Any]
"""Where a reader stands: plain data (ints, strings, nested dicts), never mutated once made."""

COUNTERS = ("empty", "utf8", "heldout", "docs", "seen")
"""Cumulative counters every cursor carries: empty documents skipped, invalid UTF-8 sequences replaced,
held-out documents skipped (training) or kept (validation), documents yielded, records examined."""


@dataclass(frozen=True, slots=True)
class Shard:
    """This reader's share of the documents: record ``i`` belongs to shard ``i % count``."""

    index: int = 0
    count: int = 1


@dataclass(frozen=True, slots=True)
class Piece:
    """A document, or one piece of a huge document; ``text`` None marks the end of a pass."""

    text: str | None
    cursor: Cursor
    first: bool = True
    last: bool = True

    @property
    def end_of_pass(self) -> bool:
        """True for the marker that ends a pass (its cursor starts the next one)."""
        return self.text is None


@dataclass(slots=True)
class RawRecord:
    """One raw record (or one piece of a plain-text file) before text extraction."""

    index: int
    pos: dict
    data: Any
    where: str
    first: bool = True
    last: bool = True


def is_heldout(text: str, fraction: float) -> bool:
    """Whether a document belongs to the validation split: a hash of its text below ``fraction``.

    Deterministic across machines and runs (BLAKE2b, not Python's salted ``hash``), and the same text is
    always on the same side, so a duplicated document cannot leak into both splits."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2.0**64


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Text of ``data`` and the number of invalid UTF-8 sequences replaced by U+FFFD."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", "replace")
        return text, text.count("\ufffd") - data.count("\ufffd".encode())


def _clean_surrogates(text: str) -> tuple[str, int]:
    """JSON escapes can produce lone surrogates, which no tokenizer accepts: replace and count them."""
    if text.isascii():
        return text, 0
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        bad = sum(1 for c in text if "\ud800" <= c <= "\udfff")
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text), bad


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def start_cursor(epoch: int = 0, counters: Cursor | None = None) -> Cursor:
    """The cursor at the start of pass ``epoch`` (cumulative counters carried over)."""
    cur: Cursor = {"epoch": epoch, "pass_docs": 0}
    for key in COUNTERS:
        cur[key] = (counters or {}).get(key, 0)
    return cur


class JsonLine:
    """A JSONL line parsed only when its text is needed (lines of other shards are never parsed)."""

    __slots__ = ("raw", "where", "source")

    def __init__(self, raw: bytes, where: str, source: str):
        self.raw, self.where, self.source = raw, where, source

    def parse(self) -> tuple[Any, int]:
        """The record and the number of invalid UTF-8 sequences replaced in it."""
        try:
            return json.loads(self.raw), 0
        except UnicodeDecodeError:
            text, repaired = decode_utf8(self.raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{self.where}: not valid JSON ({exc.msg}) in source {self.source!r}") from None
        try:
            return json.loads(text), repaired
        except json.JSONDecodeError as exc:
            raise DataError(f"{self.where}: not valid JSON ({exc.msg}) in source {self.source!r}") from None


# ------------------------------------------------------------------------------------------ base
class Reader:
    """Base of all readers: sharding, text extraction, empties, UTF-8 repair, held-out filter, cursors.

    ``role`` is ``train`` (held-out documents skipped), ``validation`` (only held-out documents) or
    ``all`` (everything: an explicit validation split, or a source with ``fraction`` 0)."""

    shard_by_index = True
    """False where the library shards (Hugging Face: ``split_dataset_by_node``)."""

    def __init__(self, cfg: SourceConfig, shard: Shard = Shard(), role: str = "train", holdout: float = 0.0):
        self.cfg = cfg
        self.name = cfg.name
        self.shard = shard
        self.role = role
        self.holdout = holdout if role in ("train", "validation") else 0.0
        # YAML single quotes keep '\n' as two characters; a template means a newline there.
        self.template = cfg.template.replace("\\n", "\n").replace("\\t", "\t") if cfg.template else None
        self.fields = _template_fields(self.template) if self.template else [cfg.text_field]
        # A chat source renders each record as marked text (gradus.data.chat): with the built-in template
        # here; open_reader swaps in the tokenizer's own chat template when the run has one.
        self.chat = ChatRenderer(cfg) if cfg.kind == "chat" else None
        if self.chat is not None:
            self.fields = (_template_fields(f"{cfg.prompt_template}{cfg.response_template}")
                           if cfg.prompt_template is not None else [cfg.messages_field])

    # subclasses ---------------------------------------------------------------------------------
    def describe(self) -> str:
        """Where the documents come from, for messages."""
        raise NotImplementedError

    def _records(self, cursor: Cursor) -> Iterator[RawRecord]:
        """Raw records from ``cursor`` to the end of the pass; ``pos`` says where each one ends."""
        raise NotImplementedError

    # shared -------------------------------------------------------------------------------------
    def _text(self, raw: RawRecord) -> tuple[str, int]:
        """The text of a raw record and the UTF-8 repairs made; a missing field is a DataError."""
        data = raw.data
        repaired = 0
        if isinstance(data, JsonLine):
            data, repaired = data.parse()
            if not isinstance(data, dict):
                raise DataError(
                    f"{raw.where}: record is a JSON {type(data).__name__}, not an object (source {self.name!r})"
                )
            text, more = _clean_surrogates(self._render(data, raw.where))
            return text, repaired + more
        if self.chat is not None and not isinstance(data, dict):
            raise DataError(f"{raw.where}: chat source {self.name!r} reads JSON records (JSONL, JSON, Parquet), "
                            f"not plain text; point its path at .jsonl files or make it kind: text")
        if isinstance(data, bytes):
            return decode_utf8(data)
        if isinstance(data, str):
            return _clean_surrogates(data)
        if isinstance(data, dict):
            return _clean_surrogates(self._render(data, raw.where))
        raise DataError(f"{raw.where}: record is a {type(data).__name__}, not an object (source {self.name!r})")

    def _render(self, record: dict, where: str) -> str:
        if self.chat is not None:
            return self.chat.render(record, where)
        if self.template is not None:
            try:
                return self.template.format_map(record)
            except KeyError as exc:
                raise DataError(
                    f"{where}: record has no field {exc.args[0]!r} used by the template of source "
                    f"{self.name!r} (fields: {', '.join(map(str, record)) or 'none'})"
                ) from None
            except (ValueError, IndexError, AttributeError) as exc:
                raise DataError(f"source {self.name!r}: template {self.template!r} is invalid: {exc}") from None
        field = self.cfg.text_field
        if field not in record:
            raise DataError(
                f"{where}: record has no {field!r} field (source {self.name!r}; fields: "
                f"{', '.join(map(str, record)) or 'none'}); set the source's text_field or template"
            )
        value = record[field]
        if value is None:
            return ""
        return value if isinstance(value, str) else str(value)

    def scan(self, cursor: Cursor | None = None) -> Iterator[Piece]:
        """Pieces from ``cursor`` (None: the start) to the end of this pass, then the end-of-pass marker."""
        cur = dict(start_cursor() if cursor is None else cursor)
        counts = {k: cur.get(k, 0) for k in COUNTERS}
        pass_docs = cur.get("pass_docs", 0)
        epoch = cur.get("epoch", 0)
        skipping = False  # inside a multi-piece document that is not ours to yield
        shard = self.shard
        for raw in self._records(cur):
            if self.shard_by_index and shard.count > 1 and raw.index % shard.count != shard.index:
                continue
            if raw.first:
                counts["seen"] += 1
                skipping = False
            elif skipping:
                continue
            text, repaired = self._text(raw)
            counts["utf8"] += repaired
            if raw.first:
                if raw.last and not text.strip():
                    counts["empty"] += 1
                    continue
                if self.holdout > 0:
                    held = is_heldout(text, self.holdout)
                    if held:
                        counts["heldout"] += 1
                    if held != (self.role == "validation"):
                        skipping = not raw.last
                        continue
                counts["docs"] += 1
                pass_docs += 1
            if not text:
                continue
            pos = {"epoch": epoch, "pass_docs": pass_docs, **counts, **raw.pos}
            yield Piece(text, pos, raw.first, raw.last)
        if pass_docs == 0 and self.role != "validation":
            where = f" for rank {shard.index} of {shard.count}" if shard.count > 1 else ""
            held = f" ({counts['heldout']} held out for validation)" if counts["heldout"] else ""
            empty = f" ({counts['empty']} empty)" if counts["empty"] else ""
            raise DataError(f"source {self.name!r} is empty: {self.describe()} has no documents{where}{held}{empty}")
        yield Piece(None, start_cursor(epoch + 1, counts))


def _template_fields(template: str) -> list[str]:
    fields = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name:
            key = name.split(".")[0].split("[")[0]
            if key not in fields:
                fields.append(key)
    return fields
