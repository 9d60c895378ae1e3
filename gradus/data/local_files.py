"""Local document files (JSONL, JSON.GZ, a JSON array, Parquet, plain text) by path, folder or glob.

Why local files are read by hand rather than through ``datasets.load_dataset("json", streaming=True)``:
the pipeline needs a position that can be saved after any document and reopened in O(1) (a byte offset),
the file and line of a malformed record, invalid UTF-8 replaced rather than a decode error, and a huge
plain-text document streamed in pieces; the library readers give none of these. :class:`FileReader`
yields raw records with such positions; the shared rules (sharding, held-out split, empties, UTF-8
repair) are applied by its base, :class:`gradus.data.reader.Reader`.
"""

from __future__ import annotations

import glob as globlib
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from gradus.config import SourceConfig
from gradus.data.reader import Cursor, JsonLine, RawRecord, Reader, Shard, decode_utf8, one_line
from gradus.errors import DataError

PIECE_BYTES = 1 << 20
MAX_JSON_LINE_BYTES = 64 << 20
"""The longest JSONL record read: decoding and tokenising one record takes many times its size in memory
(a 200 MB line was OOM-killed at 23 GB), so a longer one is refused with its file and line."""
"""Plain-text files are read in pieces of about this many bytes, so a document of any size streams."""

_DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz", ".parquet", ".txt", ".text")


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


BINARY_SNIFF_BYTES = 8192
"""How much of a text file is read to tell it from a binary one (a NUL byte there)."""


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
        if path is None and cfg.validation_split:
            # A validation split inside the training folder or glob (``path: wikitext-2/`` with
            # ``validation_split: wikitext-2/valid.jsonl``) is held out, not trained on as well.
            held = {f.resolve() for f in expand_paths(cfg.validation_split, cfg.name)}
            kept = [f for f in self.files if f.resolve() not in held]
            if not kept:
                raise DataError(f"source {cfg.name!r}: path {self.pattern!r} names only its validation_split's "
                                "files; point path at the training files")
            self.files = kept
        self.formats = [detect_format(f, cfg.format) for f in self.files]

    def describe(self) -> str:
        """The configured path."""
        return f"path {self.pattern!r}"

    def _records(self, cursor: Cursor) -> Iterator[RawRecord]:
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
            try:
                for raw in it:
                    record = raw.pos["record"]
                    yield raw
            except (OSError, EOFError, zlib.error) as exc:  # a corrupt or truncated .gz, an unreadable file
                raise DataError(
                    f"{self.files[fi]}: cannot read ({type(exc).__name__}: {exc}) in source {self.name!r}; the file "
                    f"is corrupt or truncated: re-create it or remove it from the source"
                ) from None

    def _refuse_binary(self, f, fi: int) -> None:
        """A text file whose first 8 KB hold a NUL byte is a binary (an executable, an image, a model file):
        the heuristic git and grep use. Decoded, it would train on replacement characters; refuse it instead.
        Read from the reader's own open file ``f`` at its start (the caller seeks on), as ``_json`` sniffs."""
        path = self.files[fi]
        if b"\x00" in f.read(BINARY_SNIFF_BYTES):
            raise DataError(f"{path}: a binary file (NUL bytes in its first {BINARY_SNIFF_BYTES >> 10} KB), not text, "
                            f"in source {self.name!r}; remove it from the source's path or glob (UTF-16 text: convert it to UTF-8)")

    # JSON lines (or a JSON array) -----------------------------------------------------------------
    def _json(self, fi: int, offset: int, line_no: int, record: int, element: int) -> Iterator[RawRecord]:
        path = self.files[fi]
        with _open_binary(path) as f:
            head = f.read(1 << 12).lstrip() if offset == 0 else b""
            if head.startswith(b"["):
                yield from self._json_array(fi, path, record, element)
                return
            f.seek(offset)
            while raw_line := f.readline(MAX_JSON_LINE_BYTES + 1):  # bounded: never a whole huge line
                line_no += 1
                if len(raw_line) > MAX_JSON_LINE_BYTES:
                    raise DataError(
                        f"{path}:{line_no}: a JSON record over {MAX_JSON_LINE_BYTES >> 20} MB in source "
                        f"{self.name!r}; split it, or store its text as a .txt file (text_unit: file streams any size)"
                    )
                offset += len(raw_line)
                if not raw_line.strip():
                    continue  # a blank line in JSONL is no record at all
                index = record
                record += 1
                where = f"{path}:{line_no}"
                yield RawRecord(index, {"file": fi, "offset": offset, "line": line_no, "record": record},
                           JsonLine(raw_line, where, self.name), where)

    def _json_array(self, fi: int, path: Path, record: int, element: int) -> Iterator[RawRecord]:
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
            yield RawRecord(index, {"file": fi, "offset": 0, "line": 0, "record": record, "element": i + 1},
                       item, f"{path}: element {i}")

    # Parquet ----------------------------------------------------------------------------------------
    def _parquet(self, fi: int, row: int, record: int) -> Iterator[RawRecord]:
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
                yield RawRecord(index, {"file": fi, "offset": current, "record": record}, item,
                           f"{path}: row {current - 1}")

    # plain text -------------------------------------------------------------------------------------
    def _lines(self, fi: int, offset: int, line_no: int, record: int, unit: str) -> Iterator[RawRecord]:
        path = self.files[fi]
        with _open_binary(path) as f:
            if offset == 0:
                self._refuse_binary(f, fi)
            f.seek(offset)
            block: list[bytes] = []
            block_line = line_no + 1
            for raw_line in f:
                line_no += 1
                offset += len(raw_line)
                if unit == "line":
                    index = record
                    record += 1
                    yield RawRecord(index, {"file": fi, "offset": offset, "line": line_no, "record": record},
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
                    yield RawRecord(index, {"file": fi, "offset": offset, "line": line_no, "record": record},
                               b"".join(block).rstrip(b"\r\n"), f"{path}:{block_line}")
                    block = []
            if block:
                index = record
                record += 1
                yield RawRecord(index, {"file": fi, "offset": offset, "line": line_no, "record": record},
                           b"".join(block).rstrip(b"\r\n"), f"{path}:{block_line}")

    def _text_file(self, fi: int, offset: int, record: int) -> Iterator[RawRecord]:
        # One document per file, read PIECE_BYTES at a time and cut where a tokenizer would split
        # anyway (before a single space after a non-space), so a document of hundreds of MB streams
        # without being loaded whole and tokenises as it would in one go.
        path = self.files[fi]
        with _open_binary(path) as f:
            if offset == 0:
                self._refuse_binary(f, fi)
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
                yield RawRecord(index, {"file": fi, "offset": offset, "record": record}, data[:cut],
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
