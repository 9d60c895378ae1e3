"""Packing: concat windows across stage changes (token accounting), strides, document mode, huge documents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gradus.config import from_dict
from gradus.curriculum import resolve_schedule, state_at
from gradus.data import DataPipeline, load_tokenizer, local_files
from gradus.data.packing import IGNORE, DocumentPacker
from gradus.data.sources import open_reader


def make(shared: Path, stages, max_steps, sources=None, **data):
    srcs = sources or [{"name": "gsm8k", "path": str(shared / "gsm8k" / "test.jsonl"), "template": "{question}\n{answer}"}]
    d = {"sources": srcs, "tokenizer": {"name_or_path": str(shared / "gpt2-tokenizer")}, "shuffle_buffer": 0,
         "validation": {"fraction": 0}}
    d.update(data)
    cfg = from_dict({"data": d, "curriculum": {"stages": stages}, "train": {"max_steps": max_steps}})
    return cfg, resolve_schedule(cfg)


@pytest.fixture(scope="module")
def tok(bpe_tokenizer_dir: Path):
    cfg, _ = make(bpe_tokenizer_dir.parent, [{"step": 0, "seq_len": 8, "batch_size": 1}], 1)
    return load_tokenizer(cfg.data)


def drive(pipe, cur, steps):
    out, tokens = [], 0
    for step in range(steps):
        st = state_at(cur, step, tokens)
        out.append(pipe.next_batch(st))
        tokens += st.tokens_per_step
    return out


def doc_tokens(cfg, tok) -> list[np.ndarray]:
    texts = [p.text for p in open_reader(cfg.data.sources[0]).scan(None) if not p.end_of_pass]
    return [a.astype(np.int64) for a in tok.encode_arrays(texts, eos=[True] * len(texts))]


STAGES = [
    {"step": 0, "seq_len": 16, "batch_size": 4},
    {"step": 5, "seq_len": 40, "batch_size": 3},
    {"step": 9, "seq_len": 8, "batch_size": 5},
]


def test_concat_accounting_across_stage_changes(offline_data: Path, tok):
    cfg, cur = make(offline_data, STAGES, 14, packing={"lanes": 1})  # one stream; several: see the lanes tests
    stream = np.concatenate(doc_tokens(cfg, tok))
    with DataPipeline(cfg.data, tok, cur, prefetch=2) as pipe:
        batches = drive(pipe, cur, 14)
    assert [b.inputs.shape for b in batches] == [(4, 16)] * 5 + [(3, 40)] * 4 + [(5, 8)] * 5
    # The inputs, row after row and batch after batch, are the document stream itself: no token lost or
    # repeated at either stage boundary; each label is the next token of the stream.
    pos = 0
    for b in batches:
        for x, y in zip(b.inputs, b.labels, strict=True):
            n = len(x)
            assert np.array_equal(x, stream[pos : pos + n]) and np.array_equal(y, stream[pos + 1 : pos + n + 1])
            pos += n
        assert sum(b.tokens_by_source.values()) == b.num_tokens
    assert pos == 5 * 64 + 4 * 120 + 5 * 40
    assert int((stream[:pos] == tok.eos_id).sum()) >= 4  # EOS between documents


def test_stride_fraction_overlaps_windows(offline_data: Path, tok):
    cfg, cur = make(offline_data, [{"step": 0, "seq_len": 32, "batch_size": 4}, {"step": 2, "seq_len": 16, "batch_size": 4}],
                    4, packing={"stride_fraction": 0.5, "lanes": 1})
    stream = np.concatenate(doc_tokens(cfg, tok))
    with DataPipeline(cfg.data, tok, cur, prefetch=0) as pipe:
        batches = drive(pipe, cur, 4)
    starts = [0, 16, 32, 48, 64, 80, 96, 112, 128, 136, 144, 152, 160, 168, 176, 184]
    rows = [(x, y) for b in batches for x, y in zip(b.inputs, b.labels, strict=True)]
    for s, (x, y) in zip(starts, rows, strict=True):
        assert np.array_equal(x, stream[s : s + len(x)]) and np.array_equal(y, stream[s + 1 : s + 1 + len(x)])


def _expected_document_windows(docs, seq_len, count, remainder):
    out = []
    for d in docs:
        start = 0
        while start + seq_len + 1 <= len(d):
            out.append((d[start : start + seq_len], d[start + 1 : start + seq_len + 1]))
            start += seq_len
        tail = d[start:]
        if remainder == "pad" and len(tail) >= 2:
            x = np.full(seq_len, -1, dtype=np.int64)
            y = np.full(seq_len, IGNORE, dtype=np.int64)
            x[: len(tail) - 1], y[: len(tail) - 1] = tail[:-1], tail[1:]
            out.append((x, y))
        if len(out) >= count:
            return out[:count]
    return out


@pytest.mark.parametrize("remainder", ["drop", "pad"])
def test_document_mode_windows_stay_inside_documents(offline_data: Path, tok, remainder: str):
    cfg, cur = make(offline_data, [{"step": 0, "seq_len": 64, "batch_size": 8}], 12,
                    packing={"mode": "document", "remainder": remainder})
    docs = doc_tokens(cfg, tok)
    with DataPipeline(cfg.data, tok, cur, prefetch=0) as pipe:
        batches = drive(pipe, cur, 12)
        m = pipe.metrics()
    rows = [(x, y) for b in batches for x, y in zip(b.inputs, b.labels, strict=True)]
    expected = _expected_document_windows(docs, 64, len(rows), remainder)
    for (x, y), (ex, ey) in zip(rows, expected, strict=True):
        real = ey != IGNORE
        assert np.array_equal(x[real], ex[real]) and np.array_equal(y, ey)
        assert tok.eos_id not in x[real]  # an input never runs past its document's end
    if remainder == "pad":
        assert any((y == IGNORE).any() for _, y in rows)
        assert all(np.all(x[y == IGNORE] == tok.eos_id) for x, y in rows)  # padding uses the EOS id
    else:
        assert all((y != IGNORE).all() for _, y in rows) and m["data/dropped_tokens"] > 0


def test_huge_document_streams_through_the_pipeline(offline_data: Path, tok, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(local_files, "PIECE_BYTES", 16 * 1024)
    text = (offline_data / "tinyshakespeare" / "input.txt").read_text()[:300_000]
    path = tmp_path / "play.txt"
    path.write_text(text)
    whole = np.array(tok.encode(text) + [tok.eos_id], dtype=np.int64)
    srcs = [{"name": "play", "path": str(path)},
            {"name": "gsm8k", "path": str(offline_data / "gsm8k" / "test.jsonl"), "template": "{question}\n{answer}"}]
    cfg, cur = make(offline_data, [{"step": 0, "seq_len": 128, "batch_size": 16, "mix": {"play": 0.5, "gsm8k": 0.5}}],
                    80, sources=srcs, shuffle_buffer=4, packing={"lanes": 1})
    with DataPipeline(cfg.data, tok, cur, prefetch=2) as pipe:
        batches = drive(pipe, cur, 80)
    stream = np.concatenate([b.inputs.ravel() for b in batches])
    # The ~70k-token document arrives in ~16 pieces, never interleaved with another source's documents.
    first = int(np.flatnonzero(stream == whole[0])[0])
    while not np.array_equal(stream[first : first + 16], whole[:16]):
        first = int(np.flatnonzero(stream[first + 1 :] == whole[0])[0]) + first + 1
    assert np.array_equal(stream[first : first + len(whole)], whole)


def _lanes_oracle(docs, shapes, lanes, chunk):
    """The lanes rule written out row by row with Python lists: a batch of ``rows`` uses
    ``active = min(rows, lanes)`` lanes, row r comes from lane (next + r) % active, a lane serving several
    rows cuts them one after another, a lane that runs short takes from the queue (lanes dropped when
    ``active`` shrank, then the next document; at most ``chunk`` tokens of a long one at a time)."""
    it = iter(d.tolist() for d in docs)
    lane_tokens: list[list[int]] = [[] for _ in range(lanes)]
    queue: list[list[int]] = []
    nxt, out = 0, []
    for rows, seq_len in shapes:
        span, rows_out, active = seq_len + 1, [None] * rows, min(rows, lanes)
        queue = [lane_tokens[i] for i in range(active, lanes) if lane_tokens[i]] + queue
        lane_tokens[active:] = [[] for _ in range(active, lanes)]
        nxt %= active
        for q in range(active):
            lane = (nxt + q) % active
            for r in range(q, rows, active):
                while len(lane_tokens[lane]) < span:
                    if not queue:
                        queue.append(next(it))
                    take = len(queue[0]) if lanes == 1 else max(chunk, span - len(lane_tokens[lane]))
                    lane_tokens[lane] += queue[0][:take]
                    queue[0] = queue[0][take:]
                    if not queue[0]:
                        queue.pop(0)
                rows_out[r] = lane_tokens[lane][:span]
                lane_tokens[lane] = lane_tokens[lane][seq_len:]
        nxt = (nxt + rows) % active
        out.append(np.array(rows_out, dtype=np.int64))
    return out


@pytest.mark.parametrize("lanes", [3, 8])
def test_lanes_cut_rows_from_separate_streams_across_stage_changes(offline_data: Path, tok, lanes: int):
    # Stages of 4, 3 and 5 rows: with 3 lanes some lanes serve two rows of a batch; with 8 every row has a
    # lane of its own, and the 4th lane's rest is queued when the second stage has only 3 rows.
    cfg, cur = make(offline_data, STAGES, 14, packing={"lanes": lanes})
    docs = doc_tokens(cfg, tok)
    with DataPipeline(cfg.data, tok, cur, prefetch=2) as pipe:
        batches = drive(pipe, cur, 14)
    expected = _lanes_oracle(docs, [b.inputs.shape for b in batches], lanes, chunk=16384)
    for b, win in zip(batches, expected, strict=True):
        assert np.array_equal(b.inputs, win[:, :-1]) and np.array_equal(b.labels, win[:, 1:])
        assert sum(b.tokens_by_source.values()) == b.num_tokens
    # The first batch's rows open the first documents, one each (with one lane they are one document's
    # consecutive windows: see test_concat_accounting_across_stage_changes).
    first = batches[0].inputs
    for r in range(min(len(first), lanes)):
        assert np.array_equal(first[r], docs[r][:16])


def test_lanes_deal_a_huge_document_in_chunks(offline_data: Path, tok, tmp_path: Path, monkeypatch):
    from gradus.data import packing

    monkeypatch.setattr(packing, "LANE_CHUNK", 500)
    text = (offline_data / "tinyshakespeare" / "input.txt").read_text()[:100_000]
    path = tmp_path / "play.txt"
    path.write_text(text)
    whole = np.array(tok.encode(text) + [tok.eos_id], dtype=np.int64)
    cfg, cur = make(offline_data, [{"step": 0, "seq_len": 64, "batch_size": 4}], 130,
                    sources=[{"name": "play", "path": str(path)}], packing={"lanes": 4})
    with DataPipeline(cfg.data, tok, cur, prefetch=0) as pipe:
        batches, longest = [], 0
        for step in range(130):
            batches.append(pipe.next_batch(state_at(cur, step, 0)))
            longest = max(longest, *(len(t) for t in pipe._stream.packer.tokens))
        pending = int(pipe._stream.packer.pending().sum())
    # No lane ever holds more than a chunk and a window, although the play is one ~25k-token document.
    assert longest <= 500 + 65
    # Lane l's rows, in order, read chunk l, l+4, l+8, ... of the play (all chunks are 500 tokens here).
    for lane in range(4):
        rows = np.concatenate([b.inputs[lane] for b in batches])
        chunks = [whole[c * 500 : (c + 1) * 500] for c in range(lane, len(whole) // 500, 4)]
        stream = np.concatenate(chunks)
        assert np.array_equal(rows[: len(stream)], stream[: len(rows)])
    # Nothing lost or repeated: what the batches hold plus what waits in the lanes is whole passes.
    drawn = sum(b.num_tokens for b in batches) + pending
    assert drawn % len(whole) == 0 and drawn > len(whole)


@pytest.mark.parametrize("remainder", ["pad", "drop"])
def test_document_mode_with_overlap_trains_each_label_of_a_tail_once(remainder: str):
    # Windows of 64 every 32 tokens: a document's tail starts 32 tokens into the last window, so 33 of its tokens
    # were labels already; the tail row (pad) trains only the rest, and drop counts only those as dropped.
    docs = [np.arange(1000, 1065), np.arange(2000, 2100), np.arange(3000, 3200)]
    docs += [np.arange(10_000 * k, 10_000 * k + 100) for k in range(1, 20)]
    it = iter([(d, 0, True) for d in docs])
    packer = DocumentPacker(1, np.int64, pad_id=0, remainder=remainder)
    _, labels, counts = packer.batch(12, 64, 32, lambda: next(it))
    seen: set[int] = set()
    for row in labels:
        row_labels = {int(v) for v in row if v != IGNORE}
        assert not row_labels <= seen, "a row whose every label an earlier row trained"
        seen |= row_labels
    if remainder == "pad":
        assert {2097, 2098, 2099, 3193, 3199} <= seen and packer.dropped == 0
        tail = next(row for row in labels if row[0] == IGNORE and 2099 in row)
        assert [int(v) for v in tail if v != IGNORE] == [2097, 2098, 2099]  # 2064..2096 as context only
    else:
        # 2097..2099, 3193..3199 and the first 100-token filler's last 3; the 65-token document: none
        assert 2097 not in seen and packer.dropped == 3 + 7 + 3
    assert int(counts.sum()) == sum(int((row != IGNORE).sum()) for row in labels)


def test_a_stride_above_a_stages_length_is_refused(offline_data: Path):
    with pytest.raises(Exception, match=r"data.packing.stride=32 is above curriculum.stages\[0\].seq_len=16"):
        make(offline_data, [{"step": 0, "seq_len": 16, "batch_size": 4}, {"step": 3, "seq_len": 64, "batch_size": 4}],
             6, packing={"lanes": 1, "stride": 32})


@pytest.mark.parametrize("mode", ["concat", "document"])
def test_a_document_in_pieces_stops_at_a_switch_to_a_stage_without_its_source(
        offline_data: Path, tok, tmp_path: Path, monkeypatch, mode: str):
    # A book read in 4 KB pieces, then a stage that gives it weight 0: it used to go on filling that stage to its
    # end (every batch the book's); at most what was already drawn of it may follow.
    monkeypatch.setattr(local_files, "PIECE_BYTES", 4096)
    (tmp_path / "book.txt").write_text(("word " * 3000 + "\n") * 10)
    srcs = [{"name": "book", "path": str(tmp_path / "book.txt"), "text_unit": "file"},
            {"name": "gsm8k", "path": str(offline_data / "gsm8k" / "test.jsonl"), "template": "{question}\n{answer}"}]
    stages = [{"step": 0, "seq_len": 32, "batch_size": 4, "mix": {"book": 1, "gsm8k": 0}},
              {"step": 2, "seq_len": 32, "batch_size": 4, "mix": {"book": 0, "gsm8k": 1}}]
    cfg, cur = make(offline_data, stages, 40, sources=srcs, packing={"lanes": 1, "mode": mode, "remainder": "pad"})
    with DataPipeline(cfg.data, tok, cur, prefetch=0) as pipe:
        batches = drive(pipe, cur, 40)
    book = [b.tokens_by_source["book"] for b in batches[2:]]
    assert sum(book) <= 2 * 4096 and book[-30:] == [0] * 30


def test_a_switch_to_sft_in_the_middle_of_a_document_in_pieces(offline_data: Path, tok, tmp_path: Path, monkeypatch):
    # The last pretraining batch ends inside a book read in pieces; the sft stage that follows gives it weight 0
    # and used to be handed the book's next piece ("a stage with kind: sft got a text document").
    import json
    import random

    monkeypatch.setattr(local_files, "PIECE_BYTES", 4096)
    (tmp_path / "book.txt").write_text(("word " * 3000 + "\n") * 10)
    rng = random.Random(0)
    with (tmp_path / "chat.jsonl").open("w") as f:
        for _ in range(300):
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            f.write(json.dumps({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                             {"role": "assistant", "content": f"{a + b}."}]}) + "\n")
    srcs = [{"name": "book", "path": str(tmp_path / "book.txt"), "text_unit": "file"},
            {"name": "chat", "path": str(tmp_path / "chat.jsonl"), "kind": "chat"}]
    stages = [{"step": 0, "seq_len": 32, "batch_size": 4, "mix": {"book": 1, "chat": 0}},
              {"step": 2, "kind": "sft", "seq_len": 64, "batch_size": 4, "mix": {"book": 0, "chat": 1}}]
    cfg, cur = make(offline_data, stages, 4, sources=srcs, packing={"lanes": 1})
    with DataPipeline(cfg.data, tok, cur, prefetch=0) as pipe:
        batches = drive(pipe, cur, 4)
    assert [b.tokens_by_source["book"] > 0 for b in batches] == [True, True, False, False]
    assert all(b.tokens_by_source["chat"] > 0 for b in batches[2:])
