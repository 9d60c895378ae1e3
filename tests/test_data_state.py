"""The data parts' one Stateful protocol (``state_dict``/``load_state_dict``), and old checkpoints.

``fixtures/data_state_v2.pkl`` holds ``DataPipeline.state_dict()`` as the code of commit 9c657ba (before
the parts were moved to ``state_dict``/``load_state_dict``) saved it after step 1 of the six-step run
below, for concat packing (2 lanes) and document packing, with the sha256 and input sums of the batches
of steps 2..5 that the uninterrupted run then made. Produced by that code, not by the code under test.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from gradus.config import from_dict
from gradus.curriculum import resolve_schedule, state_at
from gradus.data import DataPipeline, load_tokenizer

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "data_state_v2.pkl"
STAGES = [
    {"step": 0, "seq_len": 32, "batch_size": 8, "mix": {"plays": 0.6, "gsm8k": 0.4}},
    {"step": 3, "seq_len": 64, "batch_size": 4, "mix": {"plays": 0.2, "gsm8k": 0.8}},
]
PACKING = {"concat": {"lanes": 2}, "document": {"mode": "document", "remainder": "pad"}}


def make(shared: Path, packing: dict):
    sources = [
        {"name": "plays", "path": str(shared / "tinyshakespeare" / "input.jsonl")},
        {"name": "gsm8k", "path": str(shared / "gsm8k" / "test.jsonl"), "template": "{question}\n{answer}"},
    ]
    data = {"sources": sources, "tokenizer": {"name_or_path": str(shared / "gpt2-tokenizer")},
            "shuffle_buffer": 3, "packing": packing}
    cfg = from_dict({"data": data, "curriculum": {"stages": STAGES}, "train": {"max_steps": 6, "seed": 7}})
    schedule = resolve_schedule(cfg)
    sts, tokens = [], 0
    for step in range(6):
        sts.append(state_at(schedule, step, tokens))
        tokens += sts[-1].tokens_per_step
    return cfg, schedule, sts


def same(a, b) -> bool:
    """Deep equality of saved states: dicts, lists, tuples, numpy arrays (dtype included), plain values."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def old() -> dict:
    with FIXTURE.open("rb") as f:
        return pickle.load(f)


@pytest.mark.parametrize("mode", sorted(PACKING))
def test_a_state_saved_by_the_old_code_resumes_to_the_same_batches(shared_data: Path, old: dict, mode: str):
    cfg, schedule, sts = make(shared_data, PACKING[mode])
    tok = load_tokenizer(cfg.data)
    with DataPipeline(cfg.data, tok, schedule, seed=7, prefetch=2) as pipe:
        pipe.load_state_dict(old[mode]["state"])
        batches = [pipe.next_batch(st) for st in sts[2:]]
    digest = hashlib.sha256()
    for b in batches:
        digest.update(b.inputs.tobytes())
        digest.update(b.labels.tobytes())
    assert [int(b.inputs.sum()) for b in batches] == old[mode]["next_sums"]
    assert digest.hexdigest() == old[mode]["next_digest"]
    # Steps 2..5 cross into stage 1 at step 3: the resumed pipeline switches shape there, as the old one did.
    assert [b.inputs.shape for b in batches] == [(8, 32)] + [(4, 64)] * 3
    assert [b.stage_index for b in batches] == [0, 1, 1, 1]


@pytest.mark.parametrize("mode", sorted(PACKING))
def test_the_saved_layout_is_unchanged(shared_data: Path, old: dict, mode: str):
    """Today's state after step 1 is, key for key and array for array, what the old code saved."""
    cfg, schedule, sts = make(shared_data, PACKING[mode])
    tok = load_tokenizer(cfg.data)
    with DataPipeline(cfg.data, tok, schedule, seed=7, prefetch=0) as pipe:
        for st in sts[:2]:
            pipe.next_batch(st)
        now = pipe.state_dict()
    assert now["version"] == 2 and now["batches"] == 2
    assert set(now) == {"version", "feeds", "mixer", "packer", "tokens", "batches", "fingerprint"}
    if PACKING[mode].get("mode") == "document":
        # Added since (2026-12-07): how many leading tokens of the current document were labels already; a
        # state saved before it loads it as 1 (the test above), what the packer assumed then.
        assert isinstance(now["packer"].pop("covered"), int) and "covered" not in old[mode]["state"]["packer"]
    assert same(now, old[mode]["state"])


def test_every_part_the_checkpoint_carries_is_stateful(shared_data: Path):
    """One convention: state_dict()/load_state_dict() on each feed, the mixer, the packer and the stream;
    the old names are gone, and each part's state_dict is the matching entry of the pipeline's."""
    cfg, schedule, sts = make(shared_data, PACKING["concat"])
    tok = load_tokenizer(cfg.data)
    with DataPipeline(cfg.data, tok, schedule, seed=7, prefetch=0) as pipe:
        pipe.next_batch(sts[0])
        stream = pipe._stream
        parts = {**{f"feeds.{n}": f for n, f in stream.feeds.items()}, "mixer": stream.mixer,
                 "packer": stream.packer}
        whole = pipe.state_dict()
        for name, part in [*parts.items(), ("stream", stream)]:
            assert callable(part.state_dict) and callable(part.load_state_dict), name
            assert not any(hasattr(part, old) for old in ("state", "restore", "snapshot")), name
        assert same(stream.mixer.state_dict(), whole["mixer"])
        assert same(stream.packer.state_dict(), whole["packer"])
        assert same(stream.feeds["plays"].state_dict(), whole["feeds"]["plays"])
        # A part restored on its own goes back exactly: draw on, then load the mixer's and packer's states.
        mixer, packer = stream.mixer.state_dict(), stream.packer.state_dict()
        pipe.next_batch(sts[1])
        assert not same(stream.mixer.state_dict(), mixer)
        stream.mixer.load_state_dict(mixer)
        stream.packer.load_state_dict(packer)
        assert same(stream.mixer.state_dict(), mixer) and same(stream.packer.state_dict(), packer)
