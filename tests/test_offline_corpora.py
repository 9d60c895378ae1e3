"""The generated corpora keep the facts other tests rely on; missing ../shared/data skips or, when required, fails."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import conftest
import pytest

from gradus.config import DataConfig
from gradus.data import load_tokenizer


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_layout_and_counts_match_the_real_folders(offline_data: Path):
    gsm_test, gsm_train = _jsonl(offline_data / "gsm8k" / "test.jsonl"), _jsonl(offline_data / "gsm8k" / "train.jsonl")
    assert (len(gsm_test), len(gsm_train)) == (1319, 7473)
    questions = [r["question"] for r in gsm_test + gsm_train]
    assert len(set(questions)) == len(questions)  # distinct, as in GSM8K: the splits are disjoint
    assert all(r["answer"].splitlines()[-1].startswith("#### ") for r in gsm_test)
    wiki = {s: _jsonl(offline_data / "wikitext-2" / f"{s}.jsonl") for s in ("train", "valid", "test")}
    assert {s: len(a) for s, a in wiki.items()} == {"train": 240, "valid": 30, "test": 30}
    assert all(a["text"].startswith(f" \n = {a['title']} = \n") for a in wiki["valid"])
    web = offline_data / "web-sample"
    gz = sorted(web.glob("*.json.gz"))
    assert len(gz) == 4 and all(len(gzip.open(p, "rt").read().splitlines()) == 10 for p in gz)
    assert sum(len(_jsonl(p)) for p in web.glob("*.jsonl")) == 80
    code = _jsonl(offline_data / "python-code-networkx" / "networkx_py.jsonl")
    assert len(code) > 20 and sum(len(r["text"]) for r in code) >= 1_500_000


def test_play_rebuilds_from_its_speeches_with_one_triple_newline(offline_data: Path):
    root = offline_data / "tinyshakespeare"
    text = (root / "input.txt").read_text(encoding="utf-8")
    speeches = [r["text"] for r in _jsonl(root / "input.jsonl")]
    assert "\n\n".join(speeches) + "\n" == text  # the real SOURCE.md's rule
    assert sum(s.startswith("\n") for s in speeches) == 1
    assert len(text) < 300_000  # the huge-document tests cut 300 kB and expect the whole play


def test_standin_bpe_compresses_like_gpt2(bpe_tokenizer_dir: Path, offline_data: Path):
    cfg = DataConfig(sources=[{"name": "x", "builtin": "arithmetic"}], tokenizer={"name_or_path": str(bpe_tokenizer_dir)})
    tok = load_tokenizer(cfg)
    assert tok.kind == "vocab-merges" and tok.eos_token == "<|endoftext|>" and tok.vocab_size == 8192
    play = (offline_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:100_000]
    # The lanes test deals this play through 130 batches of 256 tokens and needs it under 33k tokens.
    assert 3.3 < len(play) / len(tok.encode(play)) < 6
    assert tok.decode(tok.encode("Ünïcode, x**2 <|endoftext|>")) == "Ünïcode, x**2 <|endoftext|>"


def test_missing_shared_data_skips_unless_required(monkeypatch, tmp_path: Path):
    monkeypatch.delenv(conftest.REQUIRE_SHARED_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"^needs \.\./shared/data: .*nowhere is missing"):
        conftest._missing(tmp_path / "nowhere")
    for value, required in (("1", True), ("0", False), ("", False), ("yes", True)):
        monkeypatch.setenv(conftest.REQUIRE_SHARED_ENV, value)
        assert conftest.shared_data_required() is required
    monkeypatch.setenv(conftest.REQUIRE_SHARED_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="nowhere is missing and GRADUS_REQUIRE_SHARED_DATA=1"):
        conftest._missing(tmp_path / "nowhere")
