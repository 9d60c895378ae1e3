"""Readers: local formats, templates, cursors (resume), sharding, bad input, builtin corpora, hub streaming."""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
from pathlib import Path

import pytest

from gradus.config import SourceConfig
from gradus.data import hf_stream, local_files
from gradus.data.reader import Shard, is_heldout
from gradus.data.sources import open_reader
from gradus.errors import DataError


def docs_of(reader, cursor=None) -> list[str]:
    """Texts of one pass (pieces of a document joined)."""
    out: list[str] = []
    for p in reader.scan(cursor):
        if p.end_of_pass:
            break
        if p.first:
            out.append(p.text)
        else:
            out[-1] += p.text
    return out


def pieces_of(reader, cursor=None) -> list:
    out = []
    for p in reader.scan(cursor):
        if p.end_of_pass:
            break
        out.append(p)
    return out


# ------------------------------------------------------------------------------- formats and cursors
def test_jsonl_template_and_resume_from_any_cursor(offline_data: Path):
    path = offline_data / "gsm8k" / "test.jsonl"
    cfg = SourceConfig(name="gsm8k", path=str(path), template="{question}\\n{answer}")  # YAML-style '\n'
    reader = open_reader(cfg)
    pieces = pieces_of(reader)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(pieces) == len(records) == 1319
    assert pieces[0].text == records[0]["question"] + "\n" + records[0]["answer"]
    texts = [p.text for p in pieces]
    for k in (0, 1, 500, 1317):
        assert docs_of(open_reader(cfg), pieces[k].cursor) == texts[k + 1 :]
    # The end-of-pass marker starts epoch 1 with the counters carried.
    marker = list(open_reader(cfg).scan(pieces[-1].cursor))[-1]
    assert marker.end_of_pass and marker.cursor["epoch"] == 1 and marker.cursor["docs"] == 1319


def test_json_gz_glob_folder_and_json_array(offline_data: Path, tmp_path: Path):
    web = offline_data / "web-sample"
    gz = docs_of(open_reader(SourceConfig(name="web", path=str(web / "*.json.gz"))))
    assert len(gz) == 40  # 4 gzip files × 10 documents
    first = json.loads(gzip.open(sorted(web.glob("*.json.gz"))[0], "rt").readline())["text"]
    assert gz[0] == first
    folder = docs_of(open_reader(SourceConfig(name="web", path=str(web))))
    assert len(folder) == 120  # every data file of the folder (SOURCE.md is not one)
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([{"text": f"doc {i}"} for i in range(5)]))
    cfg = SourceConfig(name="arr", path=str(arr))
    pieces = pieces_of(open_reader(cfg))
    assert [p.text for p in pieces] == [f"doc {i}" for i in range(5)]
    assert docs_of(open_reader(cfg), pieces[1].cursor) == ["doc 2", "doc 3", "doc 4"]


def test_parquet_with_row_groups_and_resume(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    table = pa.table({"body": [f"row {i} text" for i in range(2500)], "n": list(range(2500))})
    pq.write_table(table, path, row_group_size=1000)
    cfg = SourceConfig(name="pq", path=str(path), text_field="body")
    pieces = pieces_of(open_reader(cfg))
    assert [p.text for p in pieces] == [f"row {i} text" for i in range(2500)]
    assert docs_of(open_reader(cfg), pieces[1499].cursor)[:2] == ["row 1500 text", "row 1501 text"]
    with pytest.raises(DataError, match=r"data\.parquet.*no 'text' field.*columns: body, n"):
        pieces_of(open_reader(SourceConfig(name="pq", path=str(path))))


def test_text_units_rebuild_tinyshakespeare(offline_data: Path):
    root = offline_data / "tinyshakespeare"
    speeches = [json.loads(line)["text"] for line in (root / "input.jsonl").read_text().splitlines()]
    para = docs_of(open_reader(SourceConfig(name="s", path=str(root / "input.txt"), text_unit="paragraph")))
    # The blank-line separated speeches, split as tinyshakespeare's SOURCE.md does (on "\n\n" exactly, so a
    # run of three newlines, which the generated play has too, leaves one at the start of a speech; a
    # paragraph reader drops it).
    assert para == [s.strip("\n") for s in speeches]
    whole = docs_of(open_reader(SourceConfig(name="s", path=str(root / "input.txt"))))
    assert whole == [(root / "input.txt").read_text()]
    lines = docs_of(open_reader(SourceConfig(name="s", path=str(root / "input.txt"), text_unit="line")))
    assert len(lines) == sum(1 for line in (root / "input.txt").read_text().splitlines() if line.strip())


def test_huge_document_streams_in_pieces(tmp_path: Path, monkeypatch, bpe_tokenizer_dir: Path):
    monkeypatch.setattr(local_files, "PIECE_BYTES", 64 * 1024)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "ëta", "θeta", "  spaced", "\nnew"]
    text = " ".join(words[(i * 7) % len(words)] for i in range(400_000))  # ~2.7 MB, one document
    path = tmp_path / "huge.txt"
    path.write_text(text)
    cfg = SourceConfig(name="huge", path=str(path))
    tracemalloc.start()
    sizes = []
    for p in open_reader(cfg).scan(None):
        if p.end_of_pass:
            break
        sizes.append(len(p.text.encode()))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(sizes) > 30 and max(sizes) <= 64 * 1024
    assert peak < 1_000_000  # never the whole 2.7 MB document in memory
    pieces = pieces_of(open_reader(cfg))
    assert pieces[0].first and not pieces[0].last and pieces[-1].last and not pieces[-1].first
    assert "".join(p.text for p in pieces) == text
    # Pieces are cut where byte-level BPE splits anyway: tokenising them one by one equals the whole.
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(bpe_tokenizer_dir / "vocab.json"), str(bpe_tokenizer_dir / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    head = pieces[:6]
    joined = "".join(p.text for p in head)
    by_piece = [i for e in tok.encode_batch([p.text for p in head]) for i in e.ids]
    assert by_piece == tok.encode(joined).ids
    # Resuming in the middle of the document continues with the next piece.
    assert "".join(p.text for p in pieces_of(open_reader(cfg), pieces[10].cursor)) == "".join(p.text for p in pieces[11:])


# ------------------------------------------------------------------------------------------ bad input
def test_empty_documents_and_invalid_utf8_are_counted(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"text": "good one"}).encode(),
        json.dumps({"text": ""}).encode(),
        json.dumps({"text": "   \n "}).encode(),
        b'{"text": "broken \xff\xfe bytes"}',
        json.dumps({"text": "lone \ud800 surrogate"}).encode(),
        b"",
        json.dumps({"text": None}).encode(),
        json.dumps({"text": "last"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    pieces = pieces_of(open_reader(SourceConfig(name="bad", path=str(path))))
    assert [p.text for p in pieces] == ["good one", "broken \ufffd\ufffd bytes", "lone \ufffd surrogate", "last"]
    assert pieces[-1].cursor["empty"] == 3  # "", whitespace only, null
    assert pieces[-1].cursor["utf8"] == 3  # two invalid bytes, one lone surrogate


def test_missing_field_names_file_and_line(tmp_path: Path):
    path = tmp_path / "nofield.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "where is text"}\n')
    with pytest.raises(DataError) as err:
        pieces_of(open_reader(SourceConfig(name="nf", path=str(path))))
    msg = str(err.value)
    assert f"{path}:2:" in msg and "'text'" in msg and "\n" not in msg
    with pytest.raises(DataError, match=r"nofield\.jsonl:1: record has no field 'answer'"):
        pieces_of(open_reader(SourceConfig(name="nf", path=str(path), template="{text} {answer}")))
    bad = tmp_path / "badjson.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"badjson\.jsonl:2: not valid JSON"):
        pieces_of(open_reader(SourceConfig(name="bj", path=str(bad))))


def test_empty_source_and_missing_path_are_errors(tmp_path: Path):
    path = tmp_path / "empty.jsonl"
    path.write_text('{"text": ""}\n{"text": "  "}\n')
    with pytest.raises(DataError, match=r"source 'e' is empty: path .*empty\.jsonl.* has no documents \(2 empty\)"):
        pieces_of(open_reader(SourceConfig(name="e", path=str(path))))
    with pytest.raises(DataError, match=r"source 'm': path .*nothing-\*\.jsonl' matches no files"):
        open_reader(SourceConfig(name="m", path=str(tmp_path / "nothing-*.jsonl")))


# ------------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("count", [2, 3])
def test_shards_are_disjoint_and_complete(offline_data: Path, count: int):
    cfg = SourceConfig(name="gsm8k", path=str(offline_data / "gsm8k" / "test.jsonl"), template="{question}")
    everything = docs_of(open_reader(cfg))
    shards = [docs_of(open_reader(cfg, shard=Shard(i, count))) for i in range(count)]
    assert sum(len(s) for s in shards) == len(everything)
    assert sorted(d for s in shards for d in s) == sorted(everything)
    assert shards[1] == everything[1::count]


def test_heldout_documents_are_never_training_documents(offline_data: Path):
    cfg = SourceConfig(name="gsm8k", path=str(offline_data / "gsm8k" / "test.jsonl"), template="{question}\n{answer}")
    train = docs_of(open_reader(cfg, role="train", holdout=0.1))
    held = docs_of(open_reader(cfg, role="validation", holdout=0.1))
    everything = docs_of(open_reader(cfg))
    assert 90 < len(held) < 180  # ~10% of 1,319
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(everything)
    assert all(is_heldout(d, 0.1) for d in held) and not any(is_heldout(d, 0.1) for d in train)


# -------------------------------------------------------------------------------------------- builtin
def test_builtin_corpora_work_offline():
    docs = pieces_of(open_reader(SourceConfig(name="prose", builtin="python-docs")))
    assert len(docs) > 300
    assert any("assert" in p.text and "statement" in p.text for p in docs[:100])  # pydoc topics
    assert any(p.text.startswith("Module json") for p in docs)  # stdlib docstrings
    code = open_reader(SourceConfig(name="code", builtin="python-stdlib"))
    first = next(iter(code.scan(None)))
    assert "import" in first.text or "def " in first.text
    math_cfg = SourceConfig(name="math", builtin="arithmetic")
    a = [p.text for _, p in zip(range(50), open_reader(math_cfg).scan(None), strict=False)]
    b = [p.text for _, p in zip(range(50), open_reader(math_cfg).scan(None), strict=False)]
    assert a == b and all("\n#### " in t for t in a)
    odd = [p.text for _, p in zip(range(25), open_reader(math_cfg, shard=Shard(1, 2)).scan(None), strict=False)]
    assert odd == a[1::2]


# ------------------------------------------------------------------------------------------- hub
def test_hub_offline_is_one_line_naming_the_dataset():
    cfg = SourceConfig(name="web", dataset="HuggingFaceFW/fineweb-edu", dataset_config="sample-10BT")
    t0 = time.perf_counter()
    with pytest.raises(DataError) as err:
        pieces_of(open_reader(cfg, retries=3, backoff=5.0))
    assert time.perf_counter() - t0 < 5  # no retries, no network
    (line,) = err.value.problems
    assert "HuggingFaceFW/fineweb-edu" in line and "offline" in line and "\n" not in line


class _FaultyDataset:
    """A real streaming dataset whose iterator raises a network error at chosen rows (once each)."""

    def __init__(self, inner, plan: dict):
        self.inner, self.plan = inner, plan

    def __iter__(self):
        for row in self.inner:
            self.plan["served"] += 1
            if self.plan["faults"] and self.plan["served"] == self.plan["faults"][0]:
                self.plan["faults"].pop(0)
                raise ConnectionError("Connection reset by peer")
            yield row

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def _hub_patch(monkeypatch, path: Path, plan: dict, always_fail: bool = False):
    import datasets

    opened = []

    def fake_load(cfg, split):
        opened.append(split)
        if always_fail:
            raise ConnectionError("Temporary failure in name resolution")
        plan["served"] = 0
        inner = datasets.load_dataset("json", data_files=[str(path)], split="train", streaming=True)
        return _FaultyDataset(inner, plan) if plan["faults"] else inner

    monkeypatch.setattr(hf_stream, "load_hf_dataset", fake_load)
    return opened


def test_hub_faults_are_retried_keeping_the_position(monkeypatch, offline_data: Path, caplog):
    path = offline_data / "gsm8k" / "test.jsonl"
    expected = [json.loads(line)["question"] for line in path.read_text().splitlines()][:300]
    plan = {"faults": [10, 100, 150], "served": 0}  # rows served by each fresh open before the fault
    opened = _hub_patch(monkeypatch, path, plan)
    cfg = SourceConfig(name="hub", dataset="openai/gsm8k", text_field="question")
    reader = open_reader(cfg, retries=2, backoff=0.001)
    got = [p.text for _, p in zip(range(300), reader.scan(None), strict=False)]
    assert got == expected  # nothing lost, nothing repeated
    assert len(opened) == 4 and "retry 1/2" in caplog.text


def test_hub_resume_from_cursor_uses_library_state(monkeypatch, offline_data: Path):
    path = offline_data / "gsm8k" / "test.jsonl"
    _hub_patch(monkeypatch, path, {"faults": [], "served": 0})
    cfg = SourceConfig(name="hub", dataset="openai/gsm8k", text_field="question")
    pieces = pieces_of(open_reader(cfg))
    assert len(pieces) == 1319
    for k in (5, 63, 64, 200, 1000):
        assert [p.text for p in pieces_of(open_reader(cfg), pieces[k].cursor)] == [p.text for p in pieces[k + 1 :]]
    assert pieces[200].cursor["ds_state"] is not None and pieces[200].cursor["ds_n"] == 192


def test_hub_gives_up_after_retries_with_one_line(monkeypatch, offline_data: Path):
    # Online as far as the reader can tell (the fake loader never reaches the network anyway), so a
    # connection error is a fault to retry, not "offline".
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    opened = _hub_patch(monkeypatch, offline_data / "gsm8k" / "test.jsonl", {"faults": [], "served": 0},
                        always_fail=True)
    cfg = SourceConfig(name="hub", dataset="someone/some-dataset")
    with pytest.raises(DataError) as err:
        pieces_of(open_reader(cfg, retries=3, backoff=0.001))
    (line,) = err.value.problems
    assert "someone/some-dataset" in line and "after 3 retries" in line
    assert len(opened) == 4


def test_hub_shards_by_node_are_disjoint(monkeypatch, offline_data: Path):
    path = offline_data / "gsm8k" / "test.jsonl"
    _hub_patch(monkeypatch, path, {"faults": [], "served": 0})
    cfg = SourceConfig(name="hub", dataset="openai/gsm8k", text_field="question")
    everything = docs_of(open_reader(cfg))
    halves = [docs_of(open_reader(cfg, shard=Shard(i, 2))) for i in range(2)]
    assert sorted(halves[0] + halves[1]) == sorted(everything) and not set(halves[0]) & set(halves[1])


_LINES = "".join(json.dumps({"text": f"document {i} {i * i}"}) + "\n" for i in range(5000)).encode()


@pytest.mark.parametrize("content", [b"not gzip at all", gzip.compress(_LINES)[: len(gzip.compress(_LINES)) // 2]])
def test_a_corrupt_json_gz_is_one_data_error_naming_the_file(tmp_path: Path, content: bytes):
    path = tmp_path / "bad.json.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"bad.json.gz: cannot read \((BadGzipFile|EOFError).*corrupt or truncated"):
        docs_of(open_reader(SourceConfig(name="web", path=str(path))))


def test_an_oversized_jsonl_record_is_refused_with_its_line(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(local_files, "MAX_JSON_LINE_BYTES", 1000)
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"text": "short"}) + "\n" + json.dumps({"text": "x" * 5000}) + "\n")
    reader = open_reader(SourceConfig(name="web", path=str(path)))
    with pytest.raises(DataError, match=r"big.jsonl:2: a JSON record over 0 MB in source 'web'; split it"):
        docs_of(reader)
    monkeypatch.setattr(local_files, "MAX_JSON_LINE_BYTES", 1 << 20)
    path.write_text(json.dumps({"text": "y" * (8 << 20)}) + "\n")  # 8 MB on one line, over a 1 MB bound
    tracemalloc.start()
    with pytest.raises(DataError, match="big.jsonl:1"):
        docs_of(open_reader(SourceConfig(name="web", path=str(path))))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20  # the bound holds: the 8 MB line was never read whole


def test_a_source_too_small_for_held_out_documents_says_so_with_the_fix(tmp_path: Path, caplog,
                                                                         bpe_tokenizer_dir: Path):
    """Three documents at the default fraction (0.5%): none is held out, and the warning names the fraction and
    what to do instead of leaving the source out of validation without a word."""
    import logging

    from gradus.config import DataConfig
    from gradus.data import load_tokenizer
    from gradus.data.validation import heldout_tokens

    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps({"text": f"document number {i} " * 20}) + "\n" for i in range(3)))
    cfg = DataConfig(sources=[{"name": "small", "path": str(path)}],
                     tokenizer={"name_or_path": str(bpe_tokenizer_dir)})
    assert not any(is_heldout(f"document number {i} " * 20, 0.005) for i in range(3))
    with caplog.at_level(logging.WARNING, logger="gradus.data"):
        assert heldout_tokens(cfg, load_tokenizer(cfg)) == {}
    assert ("source small: no held-out documents, so it is left out of validation: none of the documents read hash "
            "below data.validation.fraction=0.005 (a small source); raise the fraction (e.g. 0.05) or give the "
            "source a validation_split") in caplog.text


def test_a_validation_split_inside_the_training_folder_is_held_out_not_trained_on(offline_data: Path):
    folder = offline_data / "wikitext-2"
    src = SourceConfig(name="wiki", path=str(folder), validation_split=str(folder / "valid.jsonl"))
    train = {p.text for p in open_reader(src, role="train").scan(None) if not p.end_of_pass}
    held = [p.text for p in open_reader(src, role="validation").scan(None) if not p.end_of_pass]
    assert held and train and not any(t in train for t in held)
    only = SourceConfig(name="wiki", path=str(folder / "valid.jsonl"), validation_split=str(folder / "valid.jsonl"))
    with pytest.raises(DataError, match="names only its validation_split's files"):
        open_reader(only, role="train")


@pytest.mark.parametrize("unit", ["file", "line", "paragraph"])
@pytest.mark.parametrize("gz", [False, True])
def test_a_binary_file_among_text_files_is_refused_by_name(tmp_path: Path, unit: str, gz: bool):
    """An executable or an image in a text folder decoded to replacement characters and trained; a NUL in the
    first 8 KB names it as binary. Text with invalid UTF-8 but no NUL still reads (repaired and counted)."""
    (tmp_path / "a.txt").write_text("plain text\n\nmore text\n", encoding="utf-8")
    blob = b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8
    name = "b.bin.txt.gz" if gz else "b.txt"
    (tmp_path / name).write_bytes(gzip.compress(blob) if gz else blob)
    (tmp_path / "c.txt").write_bytes(b"latin-1 caf\xe9\n")
    reader = open_reader(SourceConfig(name="mixed", path=str(tmp_path / "*.txt*"), text_unit=unit))
    with pytest.raises(DataError, match=rf"{name}: a binary file \(NUL bytes in its first 8 KB\), not text, in "
                                        r"source 'mixed'; remove it"):
        docs_of(reader)
    (tmp_path / name).unlink()
    texts = docs_of(open_reader(SourceConfig(name="mixed", path=str(tmp_path / "*.txt*"), text_unit=unit)))
    assert any("caf\ufffd" in t for t in texts)
