"""Document sources, each read as a resumable stream of text *pieces*.

A source is one of: local files (JSONL, JSON.GZ, a JSON array, Parquet, plain text) by path, folder or
glob; a Hugging Face dataset streamed with ``datasets.load_dataset(..., streaming=True)``; or a builtin
offline corpus (:mod:`gradus.data.builtin`). A :class:`Reader` turns it into :class:`Piece` objects: a
document's text (a huge plain-text document arrives as several pieces, ``first``/``last`` mark its ends),
plus a *cursor* — a small dict saying where the piece ends. Reopening a reader at a cursor continues with
the next piece, which is what exact resume rests on. A pass ends with a piece whose ``text`` is None,
carrying the cursor of the next pass (epoch).

Every reader shares the same rules (in :meth:`Reader.scan`): documents are sharded by record index
(record ``i`` belongs to shard ``i % count``), empty documents are skipped and counted, invalid UTF-8 is
replaced and counted, a record without its text field is a :class:`DataError` naming file and line,
held-out documents (a hash of the text, see :func:`is_heldout`) are skipped for training and are the only
ones a validation reader yields, and a pass without a single document is an error naming the source.

Why local files are read by hand rather than through ``datasets.load_dataset("json", streaming=True)``:
the pipeline needs a position that can be saved after any document and reopened in O(1) (a byte offset),
the file and line of a malformed record, invalid UTF-8 replaced rather than a decode error, and a huge
plain-text document streamed in pieces; the library readers give none of these. Hub datasets do go
through ``datasets`` (streaming, ``split_dataset_by_node`` sharding, its ``state_dict`` for positions —
checked by a test rather than trusted), wrapped with retries that keep the position.
"""

from __future__ import annotations

import glob as globlib
import gzip
import hashlib
import json
import logging
import os
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradus.config import SourceConfig
from gradus.errors import DataError

log = logging.getLogger("gradus.data")

Cursor = dict[str, Any]
"""Where a reader stands: plain data (ints, strings, nested dicts), never mutated once made."""

PIECE_BYTES = 1 << 20
"""Plain-text files are read in pieces of about this many bytes, so a document of any size streams."""

HF_STATE_EVERY = 64
"""A Hugging Face source saves the library's ``state_dict`` every this many rows (and counts the rest)."""

COUNTERS = ("empty", "utf8", "heldout", "docs", "seen")
"""Cumulative counters every cursor carries: empty documents skipped, invalid UTF-8 sequences replaced,
held-out documents skipped (training) or kept (validation), documents yielded, records examined."""

_DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz", ".parquet", ".txt", ".text")


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
class _Raw:
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


class _JsonLine:
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

    # subclasses ---------------------------------------------------------------------------------
    def describe(self) -> str:
        """Where the documents come from, for messages."""
        raise NotImplementedError

    def _records(self, cursor: Cursor) -> Iterator[_Raw]:
        """Raw records from ``cursor`` to the end of the pass; ``pos`` says where each one ends."""
        raise NotImplementedError

    # shared -------------------------------------------------------------------------------------
    def _text(self, raw: _Raw) -> tuple[str, int]:
        """The text of a raw record and the UTF-8 repairs made; a missing field is a DataError."""
        data = raw.data
        repaired = 0
        if isinstance(data, _JsonLine):
            data, repaired = data.parse()
            if not isinstance(data, dict):
                raise DataError(
                    f"{raw.where}: record is a JSON {type(data).__name__}, not an object (source {self.name!r})"
                )
            text, more = _clean_surrogates(self._render(data, raw.where))
            return text, repaired + more
        if isinstance(data, bytes):
            return decode_utf8(data)
        if isinstance(data, str):
            return _clean_surrogates(data)
        if isinstance(data, dict):
            return _clean_surrogates(self._render(data, raw.where))
        raise DataError(f"{raw.where}: record is a {type(data).__name__}, not an object (source {self.name!r})")

    def _render(self, record: dict, where: str) -> str:
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


# ----------------------------------------------------------------------------------- local files
def expand_paths(pattern: str, name: str) -> list[Path]:
    """Files a source's ``path`` names: a file, a folder (its data files, recursively) or a glob; sorted."""
    expanded = os.path.expanduser(pattern)
    p = Path(expanded)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(_DATA_SUFFIXES)]
    else:
        files = [Path(f) for f in globlib.glob(expanded, recursive=True) if Path(f).is_file()]
    if not files:
        raise DataError(f"source {name!r}: path {pattern!r} matches no files; check the path or glob")
    return sorted(files)


def detect_format(path: Path, configured: str) -> str:
    """``jsonl`` (JSON lines, or a JSON array), ``parquet`` or ``text`` for one file."""
    if configured in ("jsonl", "json"):
        return "jsonl"
    if configured != "auto":
        return configured
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115


class FileReader(Reader):
    """Local files in order; the cursor is (file index, byte offset or row, record index).

    Records are numbered across the files of a pass, so sharding is by record, whatever the files."""

    def __init__(self, cfg: SourceConfig, shard: Shard = Shard(), role: str = "train", holdout: float = 0.0,
                 path: str | None = None):
        super().__init__(cfg, shard, role, holdout)
        self.pattern = path or cfg.path or ""
        self.files = expand_paths(self.pattern, cfg.name)
        self.formats = [detect_format(f, cfg.format) for f in self.files]

    def describe(self) -> str:
        """The configured path."""
        return f"path {self.pattern!r}"

    def _records(self, cursor: Cursor) -> Iterator[_Raw]:
        file_index = cursor.get("file", 0)
        offset = cursor.get("offset", 0)
        record = cursor.get("record", 0)
        for fi in range(file_index, len(self.files)):
            start = offset if fi == file_index else 0
            line = cursor.get("line", 0) if fi == file_index else 0
            fmt = self.formats[fi]
            if fmt == "parquet":
                it = self._parquet(fi, start, record)
            elif fmt == "text":
                unit = self.cfg.text_unit
                if unit == "file":
                    it = self._text_file(fi, start, record)
                else:
                    it = self._lines(fi, start, line, record, unit)
            else:
                element = cursor.get("element", 0) if fi == file_index else 0
                it = self._json(fi, start, line, record, element)
            for raw in it:
                record = raw.pos["record"]
                yield raw

    # JSON lines (or a JSON array) -----------------------------------------------------------------
    def _json(self, fi: int, offset: int, line_no: int, record: int, element: int) -> Iterator[_Raw]:
        path = self.files[fi]
        with _open_binary(path) as f:
            head = f.read(1 << 12).lstrip() if offset == 0 else b""
            if head.startswith(b"["):
                yield from self._json_array(fi, path, record, element)
                return
            f.seek(offset)
            for raw_line in f:
                line_no += 1
                offset += len(raw_line)
                if not raw_line.strip():
                    continue  # a blank line in JSONL is no record at all
                index = record
                record += 1
                where = f"{path}:{line_no}"
                yield _Raw(index, {"file": fi, "offset": offset, "line": line_no, "record": record},
                           _JsonLine(raw_line, where, self.name), where)

    def _json_array(self, fi: int, path: Path, record: int, element: int) -> Iterator[_Raw]:
        # A JSON array has no line structure to stream; it is loaded whole (as `datasets` does too).
        with _open_binary(path) as f:
            raw_bytes = f.read()
        text, _ = decode_utf8(raw_bytes)
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}) in source {self.name!r}") from None
        if not isinstance(items, list):
            items = [items]
        for i in range(element, len(items)):
            item = items[i]
            index = record
            record += 1
            # offset=0 reopens the array; the element to resume at follows from the record counter.
            yield _Raw(index, {"file": fi, "offset": 0, "line": 0, "record": record, "element": i + 1},
                       item, f"{path}: element {i}")

    # Parquet ----------------------------------------------------------------------------------------
    def _parquet(self, fi: int, row: int, record: int) -> Iterator[_Raw]:
        import pyarrow.parquet as pq

        path = self.files[fi]
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise DataError(f"{path}: cannot read as Parquet ({one_line(exc)}); source {self.name!r}") from None
        names = pf.schema_arrow.names
        missing = [f for f in self.fields if f not in names]
        if missing:
            raise DataError(
                f"{path}: row 0: record has no {missing[0]!r} field (source {self.name!r}; columns: "
                f"{', '.join(names)}); set the source's text_field or template"
            )
        # Find the row group holding `row`, so a resume reads from there instead of the file start.
        group, first_row = 0, 0
        meta = pf.metadata
        while group < meta.num_row_groups and first_row + meta.row_group(group).num_rows <= row:
            first_row += meta.row_group(group).num_rows
            group += 1
        current = first_row
        groups = list(range(group, meta.num_row_groups))
        if not groups:
            return
        for batch in pf.iter_batches(batch_size=1024, row_groups=groups, columns=self.fields):
            for item in batch.to_pylist():
                current += 1
                if current <= row:
                    continue
                index = record
                record += 1
                yield _Raw(index, {"file": fi, "offset": current, "record": record}, item,
                           f"{path}: row {current - 1}")

    # plain text -------------------------------------------------------------------------------------
    def _lines(self, fi: int, offset: int, line_no: int, record: int, unit: str) -> Iterator[_Raw]:
        path = self.files[fi]
        with _open_binary(path) as f:
            f.seek(offset)
            block: list[bytes] = []
            block_line = line_no + 1
            for raw_line in f:
                line_no += 1
                offset += len(raw_line)
                if unit == "line":
                    index = record
                    record += 1
                    yield _Raw(index, {"file": fi, "offset": offset, "line": line_no, "record": record},
                               raw_line.rstrip(b"\r\n"), f"{path}:{line_no}")
                    continue
                if raw_line.strip():
                    if not block:
                        block_line = line_no
                    block.append(raw_line)
                    continue
                if block:
                    index = record
                    record += 1
                    yield _Raw(index, {"file": fi, "offset": offset, "line": line_no, "record": record},
                               b"".join(block).rstrip(b"\r\n"), f"{path}:{block_line}")
                    block = []
            if block:
                index = record
                record += 1
                yield _Raw(index, {"file": fi, "offset": offset, "line": line_no, "record": record},
                           b"".join(block).rstrip(b"\r\n"), f"{path}:{block_line}")

    def _text_file(self, fi: int, offset: int, record: int) -> Iterator[_Raw]:
        # One document per file, read PIECE_BYTES at a time and cut where a tokenizer would split
        # anyway (before a single space after a non-space), so a document of hundreds of MB streams
        # without being loaded whole and tokenises as it would in one go.
        path = self.files[fi]
        with _open_binary(path) as f:
            f.seek(offset)
            first = offset == 0
            while True:
                data = f.read(PIECE_BYTES)
                at_end = len(data) < PIECE_BYTES
                if not at_end:
                    at_end = not f.read(1)  # exactly PIECE_BYTES left: this piece is the last one
                if at_end:
                    cut = len(data)
                else:
                    cut = _cut_point(data)
                    f.seek(offset + cut)
                offset += cut
                index = record
                if at_end:
                    record += 1
                yield _Raw(index, {"file": fi, "offset": offset, "record": record}, data[:cut],
                           f"{path}", first=first, last=at_end)
                first = False
                if at_end:
                    return


def _cut_point(data: bytes) -> int:
    """Where to end a piece of a long text: before a single space that follows a non-space byte (a word
    boundary byte-level BPE pre-tokenisers split at too), else after a newline, else at a character."""
    lo = max(1, len(data) - (1 << 16))
    hi = len(data)
    while True:
        j = data.rfind(b" ", lo, hi)
        if j <= 0:
            break
        if data[j - 1] not in b" \t\r\n" and (j + 1 >= len(data) or data[j + 1] not in b" \t\r\n"):
            return j
        hi = j
    j = data.rfind(b"\n", lo)
    if j > 0:
        return j + 1
    k = len(data) - 1
    while k > 0 and (data[k] & 0xC0) == 0x80:  # step back over UTF-8 continuation bytes
        k -= 1
    return k if k > 0 else len(data)


# --------------------------------------------------------------------------------------- builtin
class BuiltinReader(Reader):
    """A builtin offline corpus (:mod:`gradus.data.builtin`); the cursor is the record index."""

    def describe(self) -> str:
        """The builtin corpus and where its text comes from."""
        from gradus.data.builtin import builtin_origin

        return f"builtin {self.cfg.builtin!r} ({builtin_origin(self.cfg.builtin or '')})"

    def _records(self, cursor: Cursor) -> Iterator[_Raw]:
        from gradus.data.builtin import builtin_record, builtin_size

        kind = self.cfg.builtin or ""
        n = builtin_size(kind)
        shard = self.shard
        start = cursor.get("record", 0)
        for i in range(start, n):
            if shard.count > 1 and i % shard.count != shard.index:
                continue  # skip without building the record (the base class would drop it anyway)
            yield _Raw(i, {"record": i + 1}, builtin_record(kind, i), f"builtin {kind} document {i}")


# ---------------------------------------------------------------------------------- Hugging Face
def load_hf_dataset(cfg: SourceConfig, split: str):
    """``datasets.load_dataset(..., streaming=True)`` for a hub source (a seam tests replace)."""
    import datasets

    return datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=split, streaming=True)


def _offline() -> bool:
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def _is_network_error(exc: BaseException) -> bool:
    """A fault worth retrying: connection, timeout, server hiccup; not a missing dataset or bad config."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if type(exc).__name__ in ("DatasetNotFoundError", "DataFilesNotFoundError", "EmptyDatasetError"):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    module = type(exc).__module__ or ""
    return module.split(".")[0] in ("aiohttp", "requests", "urllib3", "httpx", "httpcore", "fsspec", "huggingface_hub")


class HFReader(Reader):
    """A Hugging Face dataset, streamed. Sharded by ``split_dataset_by_node``; positions use the
    library's ``state_dict`` every :data:`HF_STATE_EVERY` rows plus a row count; network faults are
    retried with exponential backoff from the last position."""

    shard_by_index = False

    def __init__(self, cfg: SourceConfig, shard: Shard = Shard(), role: str = "train", holdout: float = 0.0,
                 split: str | None = None, retries: int = 5, backoff: float = 2.0):
        super().__init__(cfg, shard, role, holdout)
        self.split = split or cfg.split
        self.retries = retries
        self.backoff = backoff

    def describe(self) -> str:
        """The dataset id, config and split."""
        conf = f", config {self.cfg.dataset_config!r}" if self.cfg.dataset_config else ""
        return f"Hugging Face dataset {self.cfg.dataset!r}{conf}, split {self.split!r}"

    def _open(self):
        try:
            ds = load_hf_dataset(self.cfg, self.split)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated into one line naming the dataset
            if isinstance(exc, ConnectionError) and (_offline() or "offline" in str(exc).lower()):
                raise DataError(
                    f"source {self.name!r}: {self.describe()} is not available offline "
                    f"(HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set) and there is no local copy; go online, "
                    f"or download it and point the source's path at the files"
                ) from None
            if _is_network_error(exc):
                raise
            raise DataError(f"source {self.name!r}: cannot open {self.describe()}: {one_line(exc)}") from None
        if self.shard.count > 1:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(ds, rank=self.shard.index, world_size=self.shard.count)
        return ds

    def _records(self, cursor: Cursor) -> Iterator[_Raw]:
        n = cursor.get("n", 0)
        ds_state = cursor.get("ds_state")
        ds_n = cursor.get("ds_n", 0)
        failures = 0
        while True:
            try:
                ds = self._open()
                if ds_state is not None:
                    ds.load_state_dict(ds_state)
                it = iter(ds)
                for _ in range(n - ds_n):  # rows after the saved library state were counted, not saved
                    next(it)
                for row in it:
                    n += 1
                    failures = 0
                    if n - ds_n >= HF_STATE_EVERY:
                        ds_state, ds_n = ds.state_dict(), n
                    yield _Raw(n - 1, {"n": n, "ds_state": ds_state, "ds_n": ds_n}, row,
                               f"{self.cfg.dataset} ({self.split}) row {n - 1}")
                return
            except StopIteration:
                return
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - network faults are retried, the rest reported
                if not _is_network_error(exc):
                    raise DataError(f"source {self.name!r}: reading {self.describe()}: {one_line(exc)}") from None
                failures += 1
                if failures > self.retries:
                    after = f" after {self.retries} retries" if self.retries else ""
                    raise DataError(
                        f"source {self.name!r}: {self.describe()} unreachable{after} ({one_line(exc)}); "
                        f"check the network or the dataset id"
                    ) from None
                delay = self.backoff * 2 ** (failures - 1)
                log.warning("source %s: %s; retry %d/%d in %.1fs from row %d", self.name, one_line(exc),
                            failures, self.retries, delay, n)
                time.sleep(delay)


# -------------------------------------------------------------------------------------- factory
def open_reader(cfg: SourceConfig, *, shard: Shard = Shard(), role: str = "train", holdout: float = 0.0,
                retries: int = 5, backoff: float = 2.0) -> Reader:
    """The reader for a source. ``role="validation"`` reads the explicit ``validation_split`` when the
    source has one, else the held-out documents of the source itself."""
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
