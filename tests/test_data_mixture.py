"""Mixture: realised token shares over 1M tokens per stage, seeded order, repeat (epochs) and drop."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from gradus.config import from_dict
from gradus.curriculum import Schedule, resolve_schedule, state_at
from gradus.data import DataPipeline, load_tokenizer
from gradus.data.mixture import Mixer, rng_from
from gradus.errors import DataError


def make(shared: Path, sources, stages, max_steps, **data):
    d = {"sources": sources, "tokenizer": {"name_or_path": str(shared / "gpt2-tokenizer")}}
    d.update(data)
    cfg = from_dict({"data": d, "curriculum": {"stages": stages}, "train": {"max_steps": max_steps}})
    return cfg, resolve_schedule(cfg)


def corpora(shared: Path) -> list[dict]:
    return [
        {"name": "wiki", "path": str(shared / "wikitext-2" / "train.jsonl")},
        {"name": "gsm8k", "path": str(shared / "gsm8k" / "train.jsonl"), "template": "{question}\n{answer}"},
        {"name": "code", "path": str(shared / "python-code-networkx" / "networkx_py.jsonl")},
    ]


@pytest.fixture(scope="module")
def tok(bpe_tokenizer_dir: Path):
    cfg, _ = make(bpe_tokenizer_dir.parent, corpora(bpe_tokenizer_dir.parent), [{"step": 0, "seq_len": 8, "batch_size": 1}], 1)
    return load_tokenizer(cfg.data)


def drive(pipe: DataPipeline, cur: Schedule, steps: int, start: int = 0):
    tokens = sum(state_at(cur, s, 0).tokens_per_step for s in range(start))
    out = []
    for step in range(start, start + steps):
        st = state_at(cur, step, tokens)
        out.append(pipe.next_batch(st))
        tokens += st.tokens_per_step
    return out


@pytest.mark.parametrize("lanes", [1, 64])
def test_realised_shares_within_two_points_over_1m_tokens_per_stage(offline_data: Path, tok, lanes: int):
    # With 64 lanes the second stage starts with ~64 half documents of the first stage's mix in the lanes;
    # the mixer counts them as the new stage's and makes up for them.
    mixes = [{"wiki": 0.5, "gsm8k": 0.2, "code": 0.3}, {"wiki": 0.15, "gsm8k": 0.6, "code": 0.25}]
    stages = [{"step": 0, "seq_len": 512, "batch_size": 32, "mix": mixes[0]},
              {"step": 62, "seq_len": 1024, "batch_size": 16, "mix": mixes[1]}]
    cfg, cur = make(offline_data, corpora(offline_data), stages, 124, packing={"lanes": lanes})
    with DataPipeline(cfg.data, tok, cur, seed=0, prefetch=2) as pipe:
        batches = drive(pipe, cur, 124)
    for k, mix in enumerate(mixes):
        stage = [b for b in batches if b.stage_index == k]
        counts = {n: sum(b.tokens_by_source[n] for b in stage) for n in mix}
        total = sum(counts.values())
        assert total >= 1_000_000
        for name, weight in mix.items():
            assert abs(counts[name] / total - weight) <= 0.02, (k, name, counts[name] / total, weight)


def test_mixer_keeps_every_source_near_its_share():
    rng = np.random.default_rng(1)
    mixer = Mixer(["a", "b", "c"], rng_from(5))
    weights = {"a": 0.6, "b": 0.3, "c": 0.1}
    mixer.begin_stage(0)
    lengths = {"a": (10, 5000), "b": (100, 200), "c": (1, 30)}
    upcoming = {n: int(rng.integers(*lengths[n])) for n in weights}
    for _ in range(20_000):
        name = mixer.choose(weights, upcoming.get)
        mixer.record(name, upcoming[name], True)
        upcoming[name] = int(rng.integers(*lengths[name]))
        total = sum(mixer.drawn.values())
        for src, w in weights.items():
            # Past the first few documents, never more than one of its documents ahead of its share.
            if total > 20_000:
                assert mixer.drawn[src] - w * total <= lengths[src][1]
    total = sum(mixer.drawn.values())
    assert all(abs(mixer.drawn[n] / total - w) < 0.002 for n, w in weights.items())


def test_same_seed_same_stream_other_seed_other_order(offline_data: Path, tok):
    stages = [{"step": 0, "seq_len": 64, "batch_size": 16, "mix": {"wiki": 0.3, "gsm8k": 0.5, "code": 0.2}}]
    cfg, cur = make(offline_data, corpora(offline_data), stages, 10, shuffle_buffer=50)
    runs = {}
    for seed in (0, 0, 1):
        with DataPipeline(cfg.data, tok, cur, seed=seed, prefetch=0) as pipe:
            runs.setdefault(seed, []).append(np.concatenate([b.inputs for b in drive(pipe, cur, 10)]))
    assert np.array_equal(runs[0][0], runs[0][1])
    assert not np.array_equal(runs[0][0], runs[1][0])


def _tiny(shared: Path, on_exhausted: str) -> dict:
    return {"name": "tiny", "path": str(shared / "web-sample" / "olmo_c4-sample.01.json.gz"), "on_exhausted": on_exhausted}


def _tiny_tokens(shared: Path, tok) -> int:
    import gzip

    texts = [json.loads(line)["text"] for line in gzip.open(shared / "web-sample" / "olmo_c4-sample.01.json.gz", "rt")]
    return sum(len(a) for a in tok.encode_arrays(texts, eos=[True] * len(texts)))


def test_drop_renormalises_and_logs(offline_data: Path, tok, caplog):
    gsm = corpora(offline_data)[1]
    stages = [{"step": 0, "seq_len": 64, "batch_size": 8, "mix": {"tiny": 0.5, "gsm8k": 0.5}},
              {"step": 40, "seq_len": 64, "batch_size": 8, "mix": {"tiny": 1.0, "gsm8k": 0.0}}]
    cfg, cur = make(offline_data, [_tiny(offline_data, "drop"), gsm], stages, 41, shuffle_buffer=4,
                    validation={"fraction": 0})
    caplog.set_level(logging.INFO, logger="gradus.data")
    with DataPipeline(cfg.data, tok, cur, seed=0, prefetch=0) as pipe:
        batches = drive(pipe, cur, 40)
        tiny = [b.tokens_by_source["tiny"] for b in batches]
        m = pipe.metrics()
        with pytest.raises(DataError, match="every source with a weight \\(tiny\\) is exhausted"):
            drive(pipe, cur, 1, start=40)
    assert "source tiny is exhausted (on_exhausted: drop); mix renormalised: gsm8k 1.000" in caplog.text
    first_zero = tiny.index(0)
    assert first_zero > 2 and not any(tiny[first_zero + 1 :])
    # Every token of the 10 documents was used once: nothing lost, nothing repeated (the partial window at
    # the switch holds the rest of the last tiny document).
    assert abs(sum(tiny) - _tiny_tokens(offline_data, tok)) <= 64
    assert m["data/dropped_sources"] == 1 and m["data/epochs/tiny"] == 1


def test_repeat_counts_epochs(offline_data: Path, tok):
    gsm = corpora(offline_data)[1]
    stages = [{"step": 0, "seq_len": 64, "batch_size": 8, "mix": {"tiny": 0.5, "gsm8k": 0.5}}]
    cfg, cur = make(offline_data, [_tiny(offline_data, "repeat"), gsm], stages, 60, shuffle_buffer=4,
                    validation={"fraction": 0})
    per_epoch = _tiny_tokens(offline_data, tok)
    with DataPipeline(cfg.data, tok, cur, seed=0, prefetch=0) as pipe:
        batches = drive(pipe, cur, 60)
        m = pipe.metrics()
    tiny = sum(b.tokens_by_source["tiny"] for b in batches)
    assert tiny > 2 * per_epoch and m["data/epochs/tiny"] >= 2
    assert all(b.tokens_by_source["tiny"] > 0 for b in batches[-5:])
