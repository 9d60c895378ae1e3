"""Tokenizer: GPT-2 from local files, identity on resume, hub errors offline, BPE training and its cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gradus.cli import main
from gradus.config import DataConfig
from gradus.data import check_identity, load_tokenizer
from gradus.data.reader import is_heldout
from gradus.data.tokenizer import training_texts
from gradus.errors import DataError


def gpt2_cfg(path: Path) -> DataConfig:
    return DataConfig(sources=[{"name": "x", "builtin": "arithmetic"}], tokenizer={"name_or_path": str(path)})


def test_gpt2_from_vocab_and_merges(gpt2_tokenizer_dir: Path):
    tok = load_tokenizer(gpt2_cfg(gpt2_tokenizer_dir))
    assert tok.vocab_size == 50257 and tok.eos_id == 50256 and tok.eos_token == "<|endoftext|>"
    assert tok.encode("Hello world") == [15496, 995]  # the reference value in SOURCE.md
    assert tok.encode_batch(["Hello world", " the"]) == [[15496, 995], [262]]
    text = "Ünïcode, code: def f(x):\n    return x**2  # ok"
    assert tok.decode(tok.encode(text)) == text
    # EOS is only ever placed between documents: its text inside a document stays plain text.
    assert 50256 not in tok.encode_batch(["a <|endoftext|> b"])[0]
    arrays = tok.encode_arrays(["Hello world", "x"], eos=[True, False])
    assert arrays[0].dtype.name == "uint16" and arrays[0].tolist() == [15496, 995, 50256]


def test_identity_is_stable_and_survives_save(gpt2_tokenizer_dir: Path, tmp_path: Path):
    a = load_tokenizer(gpt2_cfg(gpt2_tokenizer_dir))
    b = load_tokenizer(gpt2_cfg(gpt2_tokenizer_dir))
    ident = a.identity()
    json.dumps(ident)
    assert ident == b.identity() and len(ident["sha256"]) == 64
    path = a.save(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "tokenizer_identity.json").read_text()) == ident
    c = load_tokenizer(gpt2_cfg(path))  # tokenizer.json file
    assert c.identity()["sha256"] == ident["sha256"] and c.encode("Hello world") == [15496, 995]
    check_identity(ident, c)
    other = dict(ident, sha256="0" * 64, name_or_path="gpt2-other")
    with pytest.raises(DataError, match="tokenizer mismatch.*gpt2-other"):
        check_identity(other, c)


def test_hub_name_offline_is_one_line():
    cfg = DataConfig(sources=[{"name": "x", "builtin": "arithmetic"}], tokenizer={"name_or_path": "gradus-tests/no-such-tokenizer"})
    with pytest.raises(DataError) as err:
        load_tokenizer(cfg)
    (line,) = err.value.problems
    assert "gradus-tests/no-such-tokenizer" in line and "offline" in line and "name_or_path" in line


def small_training_cfg(offline_data: Path, fraction: float = 0.005) -> DataConfig:
    return DataConfig(
        sources=[
            {"name": "math", "path": str(offline_data / "gsm8k" / "test.jsonl"), "template": "{question}\n{answer}"},
            {"name": "plays", "path": str(offline_data / "tinyshakespeare" / "input.jsonl")},
        ],
        tokenizer={"name_or_path": None, "train_vocab_size": 400, "train_max_documents": 300},
        validation={"fraction": fraction},
    )


def test_trained_bpe_is_cached_and_kept_in_the_run_dir(offline_data: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GRADUS_CACHE_DIR", str(tmp_path / "cache"))
    cfg = small_training_cfg(offline_data)
    run = tmp_path / "run"
    tok = load_tokenizer(cfg, run_dir=run)
    assert tok.kind == "trained" and tok.vocab_size == 400
    assert tok.eos_token == "<|endoftext|>" and tok.decode(tok.encode("Natalia sold clips")) == "Natalia sold clips"
    assert (run / "tokenizer.json").is_file()
    cached = list((tmp_path / "cache" / "tokenizers").glob("*/tokenizer.json"))
    assert len(cached) == 1
    again = load_tokenizer(cfg, run_dir=run)  # resume: from the run dir
    from_cache = load_tokenizer(cfg)  # another run: from the cache, not retrained
    assert again.identity() == tok.identity() == from_cache.identity()
    bigger = load_tokenizer(small_training_cfg(offline_data).model_copy(
        update={"tokenizer": cfg.tokenizer.model_copy(update={"train_vocab_size": 500})}))
    assert bigger.vocab_size == 500 and len(list((tmp_path / "cache" / "tokenizers").glob("*"))) == 2


def test_a_changed_train_vocab_size_on_resume_is_refused_in_one_line(offline_data: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GRADUS_CACHE_DIR", str(tmp_path / "cache"))
    cfg = small_training_cfg(offline_data)
    run = tmp_path / "run"
    load_tokenizer(cfg, run_dir=run)
    # The trainer writes the run's config beside its tokenizer when the run starts.
    (run / "config.yaml").write_text("data:\n  tokenizer:\n    train_vocab_size: 400\n", encoding="utf-8")
    saved = run / "config.yaml"
    assert load_tokenizer(cfg, run_dir=run, run_config=saved).vocab_size == 400  # the same size: resumes
    changed = cfg.model_copy(update={"tokenizer": cfg.tokenizer.model_copy(update={"train_vocab_size": 500})})
    with pytest.raises(DataError) as err:
        load_tokenizer(changed, run_dir=run, run_config=saved)
    assert str(err.value) == (
        f"data.tokenizer.train_vocab_size=500, but the run in {run} trained its tokenizer with 400 (its "
        f"config.yaml); set it back to 400 to continue, or start a new run with another --out")


def test_training_texts_exclude_heldout_documents(offline_data: Path):
    cfg = small_training_cfg(offline_data, fraction=0.2)
    texts = list(training_texts(cfg, max_documents=10_000))
    assert texts and not any(is_heldout(t, 0.2) for t in texts)
    assert len([t for t in texts if "####" in t]) < 1319 * 0.9  # ~20% of GSM8K test held out


def test_cli_tokenizer_train(offline_data: Path, tmp_path: Path, capsys):
    cfg = {
        "data": small_training_cfg(offline_data).model_dump(mode="json", exclude_none=True),
        "curriculum": {"stages": [{"tokens": 1000, "seq_len": 32, "batch_size": 4}]},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "tok"
    rc = main(["tokenizer", "train", str(path), "--vocab-size", "300", "--out", str(out), "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["vocab_size"] == 300 and Path(result["path"]) == out / "tokenizer.json"
    loaded = load_tokenizer(gpt2_cfg(out / "tokenizer.json"))
    assert loaded.identity()["sha256"] == result["sha256"]
    assert main(["tokenizer", "train", str(path), "--vocab-size", "100", "--out", str(out)]) == 2


def test_an_unreachable_hub_fails_at_once_with_the_whole_reason(monkeypatch):
    """Without offline mode and without a network, the Hub client's retries spent 49 s before a message cut
    mid-word; now a 3-second connection check says it at once, whole, with a path a user has (issue 31)."""
    import socket
    import time

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def refuse(address, timeout=None, *args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)  # never the network, whatever the machine has
    cfg = DataConfig(sources=[{"name": "x", "builtin": "arithmetic"}],
                     tokenizer={"name_or_path": "gradus-tests/no-such-tokenizer"})
    t0 = time.perf_counter()
    with pytest.raises(DataError) as err:
        load_tokenizer(cfg)
    assert time.perf_counter() - t0 < 10
    (line,) = err.value.problems
    assert "the Hugging Face Hub cannot be reached from here (huggingface.co:443: Network is unreachable)" in line
    assert line.endswith("or set data.tokenizer.train_vocab_size (e.g. 8192) to train a BPE on your sources")
    assert "runs/<run>/tokenizer.json" in line


def test_behind_a_proxy_the_hub_check_steps_aside(monkeypatch):
    """A machine that reaches the Hub only through a proxy must not be told it is unreachable by a direct TCP
    check: with a proxy variable set the check returns no reason and leaves it to the client."""
    import socket

    from gradus.data.tokenizer import _hub_unreachable

    def boom(*args, **kwargs):
        raise AssertionError("no direct connection attempt behind a proxy")

    monkeypatch.setattr(socket, "create_connection", boom)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert _hub_unreachable() is None
