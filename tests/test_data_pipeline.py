"""The pipeline: exact resume (mid-stage, across a boundary, with shuffle buffers, interleaved sources and
prefetch), prefetch/workers never change content, sharding across ranks, validation, metrics, layering."""

from __future__ import annotations

import ast
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from gradus.config import from_dict
from gradus.curriculum import Schedule, resolve_schedule, state_at
from gradus.data import DataPipeline, load_tokenizer
from gradus.data.sources import open_reader
from gradus.errors import DataError

REPO = Path(__file__).resolve().parents[1]

STAGES = [
    {"step": 0, "seq_len": 64, "batch_size": 32, "mix": {"plays": 0.5, "gsm8k": 0.3, "code": 0.2}},
    {"step": 6, "seq_len": 128, "batch_size": 16, "mix": {"plays": 0.2, "gsm8k": 0.3, "code": 0.5}},
    {"step": 12, "seq_len": 32, "batch_size": 64, "mix": {"plays": 0.0, "gsm8k": 1.0, "code": 0.0}},
]
STEPS = 18


def make(shared: Path, stages=STAGES, max_steps=STEPS, sources=None, **data):
    srcs = sources or [
        {"name": "plays", "path": str(shared / "tinyshakespeare" / "input.jsonl")},
        {"name": "gsm8k", "path": str(shared / "gsm8k" / "test.jsonl"), "template": "{question}\n{answer}"},
        {"name": "code", "path": str(shared / "python-code-networkx" / "networkx_py.jsonl")},
    ]
    d = {"sources": srcs, "tokenizer": {"name_or_path": str(shared / "gpt2-tokenizer")}, "shuffle_buffer": 8}
    d.update(data)
    cfg = from_dict({"data": d, "curriculum": {"stages": stages}, "train": {"max_steps": max_steps, "seed": 7}})
    return cfg, resolve_schedule(cfg)


@pytest.fixture(scope="module")
def tok(bpe_tokenizer_dir: Path):
    cfg, _ = make(bpe_tokenizer_dir.parent)
    return load_tokenizer(cfg.data)


def states(cur: Schedule, steps: int):
    """Curriculum states for steps 0..steps-1, as the trainer advances its counters."""
    out, tokens = [], 0
    for step in range(steps):
        st = state_at(cur, step, tokens)
        out.append(st)
        tokens += st.tokens_per_step
    return out


def run(pipe: DataPipeline, sts, save_after=()) -> tuple[list, dict]:
    batches, saved = [], {}
    for st in sts:
        batches.append(pipe.next_batch(st))
        if st.step in save_after:
            saved[st.step] = pickle.dumps(pipe.state_dict())
    return batches, saved


def same(a, b) -> bool:
    return (np.array_equal(a.inputs, b.inputs) and np.array_equal(a.labels, b.labels)
            and a.tokens_by_source == b.tokens_by_source and a.stage_index == b.stage_index and a.step == b.step)


@pytest.mark.parametrize("lanes", [1, 24])
def test_exact_resume_mid_stage_and_across_boundaries(offline_data: Path, tok, lanes: int):
    # 24 lanes: fewer than stage 0's and stage 2's rows, more than stage 1's.
    cfg, cur = make(offline_data, prefetch_batches=3, packing={"lanes": lanes})
    sts = states(cur, STEPS)
    assert [s.stage_index for s in sts] == [0] * 6 + [1] * 6 + [2] * 6
    with DataPipeline(cfg.data, tok, cur, seed=7) as pipe:
        ref, saved = run(pipe, sts, save_after={2, 5, 11, 12})
    assert ref[0].inputs.shape == (32, 64) and ref[6].inputs.shape == (16, 128) and ref[12].inputs.shape == (64, 32)
    for k, blob in saved.items():
        feeds = pickle.loads(blob)["feeds"]
        # The saved states really hold shuffle buffers of interleaved sources.
        assert len(feeds["plays"]["buffer"]) >= 7 and len(feeds["gsm8k"]["buffer"]) >= 7, k
        with DataPipeline(cfg.data, tok, cur, seed=7) as resumed:
            resumed.load_state_dict(pickle.loads(blob))
            got, _ = run(resumed, sts[k + 1 :])
        assert all(same(a, b) for a, b in zip(got, ref[k + 1 :], strict=True)), f"resume after step {k}"


def test_state_dict_reflects_last_returned_batch_despite_prefetch(offline_data: Path, tok):
    cfg, cur = make(offline_data, prefetch_batches=6)
    sts = states(cur, 8)
    with DataPipeline(cfg.data, tok, cur, seed=7, prefetch=0) as plain:
        ref, _ = run(plain, sts)
    with DataPipeline(cfg.data, tok, cur, seed=7) as pipe:
        run(pipe, sts[:3])
        time.sleep(0.5)  # let the thread run ahead
        assert pipe._queue is not None and pipe._queue.qsize() > 0
        state = pipe.state_dict()
    assert state["batches"] == 3
    with DataPipeline(cfg.data, tok, cur, seed=7, prefetch=0) as resumed:
        resumed.load_state_dict(state)
        got, _ = run(resumed, sts[3:])
    assert all(same(a, b) for a, b in zip(got, ref[3:], strict=True))


def test_prefetch_and_workers_never_change_content(offline_data: Path, tok):
    cfg, cur = make(offline_data)
    sts = states(cur, STEPS)
    with DataPipeline(cfg.data, tok, cur, seed=7, prefetch=0) as plain:
        ref, _ = run(plain, sts)
    with DataPipeline(cfg.data, tok, cur, seed=7, prefetch=4, num_workers=2) as fast:
        got, saved = run(fast, sts, save_after={9})
    assert all(same(a, b) for a, b in zip(got, ref, strict=True))
    with DataPipeline(cfg.data, tok, cur, seed=7, prefetch=2) as resumed:  # a worker state resumes without workers
        resumed.load_state_dict(pickle.loads(saved[9]))
        tail, _ = run(resumed, sts[10:])
    assert all(same(a, b) for a, b in zip(tail, ref[10:], strict=True))


def test_prefetching_during_set_up_makes_the_first_batch_ready_and_the_same(offline_data: Path, tok):
    """prefetch_for: the trainer starts the data thread before its compile warm-up, so the cold start is off
    the first step's clock. The batches are those made without it (also when resumed mid-stage), the first
    one is waiting when asked for (no rewind, a wait of a millisecond or so), and a finished curriculum
    starts nothing."""
    cfg, cur = make(offline_data, prefetch_batches=3)
    sts = states(cur, STEPS)
    with DataPipeline(cfg.data, tok, cur, seed=7, prefetch=0) as plain:
        ref, saved = run(plain, sts, save_after={7})
    with DataPipeline(cfg.data, tok, cur, seed=7) as pipe:
        pipe.prefetch_for(sts[0])
        pipe.settle()  # the set-up the thread overlaps: it fills its queue meanwhile
        assert pipe._queue.full()
        first = pipe.next_batch(sts[0])
        assert pipe.metrics()["data/wait_seconds"] < 0.1  # already made: taken from the queue
        rest, _ = run(pipe, sts[1:])
        got = [first, *rest]
        assert pipe.metrics()["data/rewinds"] == 0
    assert all(same(a, b) for a, b in zip(got, ref, strict=True))
    with DataPipeline(cfg.data, tok, cur, seed=7) as resumed:
        resumed.load_state_dict(pickle.loads(saved[7]))
        resumed.prefetch_for(sts[8])
        tail, _ = run(resumed, sts[8:])
        assert resumed.metrics()["data/rewinds"] == 0
    assert all(same(a, b) for a, b in zip(tail, ref[8:], strict=True))
    done = state_at(cur, STEPS, sum(s.tokens_per_step for s in sts))
    assert done.done
    with DataPipeline(cfg.data, tok, cur, seed=7) as idle:
        idle.prefetch_for(done)
        assert idle._thread is None


def test_unpredicted_states_rewind_to_the_right_batch(offline_data: Path, tok):
    cfg, cur = make(offline_data)
    sts = states(cur, STEPS)
    order = [sts[0], sts[1], sts[9], sts[14], sts[2]]  # jumps the prefetcher cannot predict
    with DataPipeline(cfg.data, tok, cur, seed=7, prefetch=0) as plain:
        ref, _ = run(plain, order)
    with DataPipeline(cfg.data, tok, cur, seed=7, prefetch=3) as pipe:
        got, _ = run(pipe, order)
        assert pipe.metrics()["data/rewinds"] >= 3
    assert all(same(a, b) for a, b in zip(got, ref, strict=True))


def test_resume_with_other_settings_is_refused(offline_data: Path, tok):
    cfg, cur = make(offline_data)
    with DataPipeline(cfg.data, tok, cur, seed=7, prefetch=0) as pipe:
        pipe.next_batch(states(cur, 1)[0])
        state = pipe.state_dict()
    with DataPipeline(cfg.data, tok, cur, seed=8, prefetch=0) as other, pytest.raises(DataError, match="seed"):
        other.load_state_dict(state)
    laned, _ = make(offline_data, packing={"lanes": 4})
    with DataPipeline(laned.data, tok, cur, seed=7, prefetch=0) as other, pytest.raises(DataError, match="lanes"):
        other.load_state_dict(state)


def test_ranks_read_disjoint_shares(offline_data: Path, tok):
    src = [{"name": "gsm8k", "path": str(offline_data / "gsm8k" / "test.jsonl"), "template": "{question}\n{answer}"}]
    stages = [{"step": 0, "seq_len": 32, "batch_size": 8}]
    cfg, cur = make(offline_data, stages=stages, sources=src, shuffle_buffer=0, validation={"fraction": 0},
                    packing={"lanes": 1})  # one stream per rank, so each rank's stream reads as its documents
    docs = [p.text for p in open_reader(cfg.data.sources[0]).scan(None) if not p.end_of_pass]
    sts = states(cur, 6)
    for rank in range(2):
        with DataPipeline(cfg.data, tok, cur, seed=7, rank=rank, world_size=2, prefetch=0) as pipe:
            batches, _ = run(pipe, sts)
        assert batches[0].inputs.shape == (4, 32)
        stream = np.concatenate([b.inputs.ravel() for b in batches])
        expected = np.concatenate(tok.encode_arrays(docs[rank::2][:40], eos=[True] * 40)).astype(np.int64)
        assert np.array_equal(stream, expected[: len(stream)])
    with pytest.raises(DataError, match="does not divide by world_size=3"):
        with DataPipeline(cfg.data, tok, cur, seed=7, rank=0, world_size=3, prefetch=0) as pipe:
            pipe.next_batch(sts[0])


def test_validation_documents_are_never_trained_on(offline_data: Path, tok):
    src = [{"name": "gsm8k", "path": str(offline_data / "gsm8k" / "test.jsonl"), "template": "{question}\n{answer}"}]
    stages = [{"step": 0, "seq_len": 256, "batch_size": 32}]
    cfg, cur = make(offline_data, stages=stages, sources=src, shuffle_buffer=0,
                    validation={"fraction": 0.2, "max_documents": 1000}, packing={"lanes": 1})
    reader_all = open_reader(cfg.data.sources[0], role="all")
    every = [p.text for p in reader_all.scan(None) if not p.end_of_pass]
    train = [p.text for p in open_reader(cfg.data.sources[0], role="train", holdout=0.2).scan(None) if not p.end_of_pass]
    held = [p.text for p in open_reader(cfg.data.sources[0], role="validation", holdout=0.2).scan(None)
            if not p.end_of_pass]
    assert len(train) + len(held) == len(every) and 200 < len(held) < 330
    train_stream = np.concatenate(tok.encode_arrays(train, eos=[True] * len(train))).astype(np.int64)
    with DataPipeline(cfg.data, tok, cur, seed=7, prefetch=2) as pipe:
        # A whole epoch of training data: exactly the training documents, in order, nothing else.
        n = len(train_stream) // (256 * 32)
        batches, _ = run(pipe, states(cur, n))
        stream = np.concatenate([b.inputs.ravel() for b in batches])
        assert np.array_equal(stream, train_stream[: len(stream)])
        assert pipe.metrics()["data/documents"] >= len(train) * 0.9
        v64 = pipe.validation_batches(64, 4096, 8)
        again = pipe.validation_batches(64, 4096, 8)
        v128 = pipe.validation_batches(128, 4096, 8)
    held_stream = np.concatenate(tok.encode_arrays(held, eos=[True] * len(held))).astype(np.int64)
    assert [b.inputs.shape for b in v64] == [(8, 64)] * 8 and [b.inputs.shape for b in v128] == [(8, 128)] * 4
    assert all(np.array_equal(a.inputs, b.inputs) for a, b in zip(v64, again, strict=True))
    for vb in (v64, v128):
        flat = np.concatenate([b.inputs.ravel() for b in vb])
        assert np.array_equal(flat, held_stream[: len(flat)])
        assert np.array_equal(vb[0].labels[0], held_stream[1 : vb[0].seq_len + 1])
        assert vb[0].source == "gsm8k" and vb[0].step == -1


def test_metrics_keys(offline_data: Path, tok):
    cfg, cur = make(offline_data)
    with DataPipeline(cfg.data, tok, cur, seed=7) as pipe:
        batches, _ = run(pipe, states(cur, 4))
        m = pipe.metrics()
    for key in ("data/tokens/plays", "data/tokens/gsm8k", "data/tokens/code", "data/tokens_total", "data/epochs/plays",
                "data/skipped_empty", "data/replaced_utf8", "data/wait_fraction"):
        assert key in m
    assert m["data/tokens_total"] == sum(b.num_tokens for b in batches) == 4 * 32 * 64
    assert 0.0 <= m["data/wait_fraction"] <= 1.0


def test_data_layer_imports_neither_model_nor_trainer_nor_torch():
    for path in sorted((REPO / "gradus" / "data").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(("gradus.model", "gradus.train", "torch")), f"{path.name} imports {name}"


def test_bad_record_reaches_the_trainer_as_one_line(offline_data: Path, tok, tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    good = (offline_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:300]
    path.write_text("\n".join(good[:200] + ['{"question": "no answer here"}'] + good[200:]) + "\n")
    src = [{"name": "gsm8k", "path": str(path), "template": "{question}\n{answer}"}]
    cfg, cur = make(offline_data, stages=[{"step": 0, "seq_len": 64, "batch_size": 16}], sources=src, shuffle_buffer=0)
    sts = states(cur, 40)
    with DataPipeline(cfg.data, tok, cur, seed=7, prefetch=3) as pipe:
        with pytest.raises(DataError) as err:
            run(pipe, sts)
        (line,) = err.value.problems
        assert f"{path}:201: record has no field 'answer'" in line
        with pytest.raises(DataError):  # and again, from the last good batch, not from a half-made one
            pipe.next_batch(sts[0])


def test_explicit_validation_split_replaces_the_hash(offline_data: Path, tok):
    wiki = offline_data / "wikitext-2"
    src = [{"name": "wiki", "path": str(wiki / "test.jsonl"), "validation_split": str(wiki / "valid.jsonl")}]
    stages = [{"step": 0, "seq_len": 128, "batch_size": 8}]
    cfg, cur = make(offline_data, stages=stages, sources=src, shuffle_buffer=0, validation={"fraction": 0.5},
                    packing={"lanes": 1})
    import json

    train_docs = [json.loads(line)["text"] for line in (wiki / "test.jsonl").read_text().splitlines()]
    valid_docs = [json.loads(line)["text"] for line in (wiki / "valid.jsonl").read_text().splitlines()]
    with DataPipeline(cfg.data, tok, cur, seed=7, prefetch=0) as pipe:
        stream = np.concatenate([b.inputs.ravel() for b in run(pipe, states(cur, 3))[0]])
        val = pipe.validation_batches(128, 2048, 4)
    # Training reads every document of its path (no hash split), validation reads the other file.
    first = tok.encode_arrays(train_docs[:1], eos=[True])[0].astype(np.int64)
    assert np.array_equal(stream[: len(first)], first[: len(stream)])
    held = tok.encode_arrays(valid_docs[:1], eos=[True])[0].astype(np.int64)
    assert np.array_equal(val[0].inputs[0], held[:128]) and len(val) == 4


def test_the_prefetcher_asks_the_schedule_what_each_step_needs(offline_data: Path, tok):
    """Token-budget stages switch on the token counter: the thread predicts every shape and mix from
    state_at(schedule, k, tokens_at_step(k)), so a run through two switches never rewinds."""
    stages = [
        {"tokens": 3000, "seq_len": 64, "batch_size": 16, "mix": {"plays": 1.0}},  # 1024/step: steps 0..2
        {"tokens": 2000, "seq_len": 32, "batch_size": 16, "mix": {"gsm8k": 1.0}},  # 512/step: 3072 → steps 3..6
        {"tokens": 1000, "seq_len": 128, "batch_size": 8, "mix": {"code": 1.0}},  # 1024/step: 5120 → steps 7..7
    ]
    cfg, cur = make(offline_data, stages=stages, max_steps=None, prefetch_batches=3)
    sts = states(cur, 8)
    assert [s.stage_index for s in sts] == [0, 0, 0, 1, 1, 1, 1, 2]
    with DataPipeline(cfg.data, tok, cur, seed=7) as pipe:
        got, _ = run(pipe, sts)
        assert pipe.metrics()["data/rewinds"] == 0
    assert [b.inputs.shape for b in got] == [(16, 64)] * 3 + [(16, 32)] * 4 + [(8, 128)]
    assert [b.stage_index for b in got] == [0, 0, 0, 1, 1, 1, 1, 2]
    stage1 = {n: sum(b.tokens_by_source[n] for b in got[3:7]) for n in ("plays", "gsm8k", "code")}
    assert stage1["code"] == 0 and stage1["gsm8k"] > 0.75 * sum(stage1.values())  # the rest: plays left in the packer


def test_a_pool_whose_teardown_hangs_does_not_hang_close(monkeypatch):
    """PoolEncoder.close gives Pool.terminate (which joins the pool's own threads, seen once to wait for ever)
    a bounded time on a daemon thread, then returns."""
    import threading
    import time

    from gradus.data import workers

    release = threading.Event()

    class StuckPool:
        def terminate(self):
            release.wait()  # as the pool's task thread did: never returns on its own

        def join(self):
            pass

    monkeypatch.setattr(workers, "TERMINATE_TIMEOUT", 0.2)
    encoder = workers.PoolEncoder.__new__(workers.PoolEncoder)
    encoder.pool = StuckPool()
    t0 = time.monotonic()
    encoder.close()
    assert time.monotonic() - t0 < 5
    release.set()


def test_a_pipeline_dropped_without_close_stops_its_thread(offline_data: Path, tok):
    """The data thread held the pipeline (a bound method as its target), so a pipeline dropped without
    close() was never collected and its thread polled a full queue for the life of the process."""
    import gc
    import threading

    cfg, cur = make(offline_data, prefetch_batches=2)
    sts = states(cur, 4)
    pipe = DataPipeline(cfg.data, tok, cur, seed=7)
    run(pipe, sts[:2])
    pipe.settle()
    thread = pipe._thread
    assert thread is not None and thread.is_alive() and pipe._queue.full()
    del pipe
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert not [t for t in threading.enumerate() if t is thread]


def _fail_in_stage_1(pipe: DataPipeline) -> None:
    """Make ``pipe``'s stream fail on every stage-1 batch (a source that became unreachable there). The
    replacement holds the stream's bound method, not the pipeline, so a dropped pipeline can still go."""
    real = pipe._stream.make

    def fails_in_stage_1(spec):
        if spec.stage_index == 1:
            raise DataError("stage 1's source is unreachable")
        return real(spec)

    pipe._stream.make = fails_in_stage_1


def test_an_error_making_a_mispredicted_batch_is_not_raised_for_the_batch_asked_for(offline_data: Path, tok):
    """The thread makes the batches its schedule predicts. When one of those fails but the trainer asks for
    another (an adaptive decision moved the switch, or a resume), the error was raised anyway and stopped
    the run; now the failed prediction is rewound like any other, and only an error in a batch that is
    asked for is raised."""
    longer = [dict(STAGES[0]), {**STAGES[1], "step": 12}, {**STAGES[2], "step": 16}]
    cfg, cur = make(offline_data, prefetch_batches=3)
    _, moved = make(offline_data, stages=longer, prefetch_batches=3)
    wanted = states(moved, 8)  # stage 0 for steps 0..7 where `cur` switches at step 6
    with DataPipeline(cfg.data, tok, moved, seed=7, prefetch=0) as plain:
        ref, _ = run(plain, wanted)
    with DataPipeline(cfg.data, tok, cur, seed=7) as pipe:
        _fail_in_stage_1(pipe)
        got, _ = run(pipe, wanted)
        assert pipe.metrics()["data/rewinds"] >= 1
        with pytest.raises(DataError, match="stage 1's source is unreachable"):
            pipe.next_batch(states(cur, 7)[6])  # asked for: raised
    assert all(same(a, b) for a, b in zip(got, ref, strict=True))


def test_a_dropped_pipeline_whose_thread_failed_also_stops_it(offline_data: Path, tok):
    """The thread that met an error held the pipeline while it waited to hand the error over a full queue."""
    import gc

    cfg, cur = make(offline_data, prefetch_batches=2)
    pipe = DataPipeline(cfg.data, tok, cur, seed=7)
    _fail_in_stage_1(pipe)
    run(pipe, states(cur, 4))
    time.sleep(1.0)  # the thread reaches stage 1 and waits with its error on a full queue
    thread = pipe._thread
    assert thread is not None and thread.is_alive()
    del pipe
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
