"""The streaming loader: sources → tokenise → mix (stage weights) → pack (stage seq_len) → batches.

:class:`DataPipeline` is what the trainer holds. ``next_batch(state)`` returns the batch for the
curriculum state of the step about to run; a background thread prepares the following batches ahead,
asking the schedule what each next step needs (``state_at(schedule, k, tokens_at_step(schedule, k))``,
a pure function of the step). When a state does not
match the prediction (the trainer resumed, or skipped), the pipeline rewinds to the last batch it
returned and produces the right one: prefetching never changes what the trainer sees.

Exactness: everything that decides the stream — each source's cursor, shuffle buffer and RNG, the
mixer's RNG and counters, the packer's leftover tokens — lives in the
:class:`~gradus.data.batch_stream.BatchStream` (its own module: what the trainer sees, apart from when it is
made) and is captured after every batch (each of those parts has ``state_dict()``/``load_state_dict()``, the
one Stateful protocol). ``state_dict()`` returns the capture taken after the *last batch returned*, however
far the thread has run ahead, and ``load_state_dict()`` restores it, after which the batches are
bit-identical to those of the uninterrupted pipeline.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from gradus.config import DataConfig
from gradus.curriculum import state_at, tokens_at_step
from gradus.data.batch_stream import STATE_VERSION, Batch, BatchSpec, BatchStream, concat_batches, no_pause
from gradus.data.chat import chat_loss_rows
from gradus.data.validation import heldout_records, heldout_tokens, windows
from gradus.errors import DataError

if TYPE_CHECKING:
    from gradus.curriculum import Schedule, StageState
    from gradus.data.tokenizer import Tokenizer

log = logging.getLogger("gradus.data")

__all__ = ["Batch", "DataPipeline"]  # Batch lives in gradus.data.batch_stream; imported from here too


class _Stop(Exception):
    pass


class _Courtesy:
    """Called by the data thread between documents: while it is ahead (a batch is ready), it naps briefly
    after every ``slice_s`` of work, so the trainer's thread gets the GIL (and, on a busy core, the CPU)
    within about a millisecond instead of waiting out the interpreter's 5 ms switch interval.

    Why: reading, packing and converting ids are Python and hold the GIL; a trainer that wakes up (a
    finished GPU step, a sleep) would otherwise stall behind them. When the queue is empty the consumer
    is waiting for data, and the thread runs flat out."""

    def __init__(self, ahead: Callable[[], bool], slice_s: float = 0.001, nap_s: float = 0.0001):
        self.ahead = ahead
        self.slice_s = slice_s
        self.nap_s = nap_s
        self.last = time.perf_counter()

    def __call__(self) -> None:
        now = time.perf_counter()
        if now - self.last >= self.slice_s:
            if self.ahead():
                time.sleep(self.nap_s)
            self.last = time.perf_counter()


class DataPipeline:
    """Batches for curriculum states, prepared ahead in a background thread; exact ``state_dict``.

    ``schedule`` is what the thread asks for the shape and mix of the steps ahead (None: every next batch
    is predicted to look like the last; a wrong prediction only costs a rewind, never content).
    ``prefetch`` (default ``cfg.prefetch_batches``; 0 = make each batch on the caller's thread) and
    ``num_workers`` (default ``cfg.num_workers``; tokenising processes) change speed, never content."""

    def __init__(self, cfg: DataConfig, tokenizer: Tokenizer, schedule: Schedule | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1, *, prefetch: int | None = None,
                 num_workers: int | None = None):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.cfg = cfg
        self.tok = tokenizer
        self.schedule = schedule
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.prefetch = cfg.prefetch_batches if prefetch is None else prefetch
        workers = cfg.num_workers if num_workers is None else num_workers
        from gradus.data.workers import InlineEncoder, PoolEncoder

        self._encoder = PoolEncoder(tokenizer, workers) if workers > 0 else InlineEncoder(tokenizer)
        try:
            self._stream = BatchStream(cfg, tokenizer, self._encoder, seed, rank, world_size)
        except BaseException:
            self._encoder.close()
            raise
        self._committed = self._stream.state_dict()
        self._fingerprint = self._make_fingerprint()
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop_event: threading.Event | None = None
        self._validation: dict[str, np.ndarray] | None = None
        self._validation_chat: dict[str, list[np.ndarray]] | None = None
        self._wait = 0.0
        self._t0: float | None = None
        self._t_last = 0.0
        self._rewinds = 0
        self._dirty = False
        self._closed = False

    # --------------------------------------------------------------------------------- specs
    def _spec(self, seq_len: int, batch_size: int, stage_index: int, mix: dict[str, float],
              kind: str = "pretrain") -> BatchSpec:
        if batch_size % self.world_size:
            raise DataError(
                f"stage {stage_index}: batch_size={batch_size} does not divide by world_size={self.world_size}; "
                f"make the stage's batch a multiple of the number of ranks"
            )
        unknown = [n for n, w in mix.items() if w > 0 and n not in self._stream.feeds]
        if unknown:
            raise DataError(f"stage {stage_index}: mix names unknown source(s) {', '.join(unknown)}")
        ordered = tuple((n, float(mix.get(n, 0.0))) for n in self._stream.names)
        return BatchSpec(stage_index, seq_len, batch_size // self.world_size, ordered, kind)

    def _spec_of_state(self, state: StageState) -> BatchSpec:
        return self._spec(state.seq_len, state.batch_size, state.stage_index, state.mix, state.kind)

    def _predict(self, step: int, previous: BatchSpec) -> BatchSpec:
        """The spec of step ``step``, asked of the schedule at the token counter that step will have."""
        if self.schedule is None:
            return previous
        return self._spec_of_state(state_at(self.schedule, step, tokens_at_step(self.schedule, step)))

    # --------------------------------------------------------------------------------- batches
    def next_batch(self, state: StageState) -> Batch:
        """The batch for ``state`` (the curriculum state of the step about to run), for this rank:
        ``[state.batch_size // world_size, state.seq_len]``."""
        if self._closed:
            raise DataError("the data pipeline is closed")
        spec = self._spec_of_state(state)
        start = time.perf_counter()
        if self._t0 is None:
            self._t0 = start
        if self._dirty:
            # A batch failed half-way (e.g. a source became unreachable): start again from the last
            # batch returned, not from wherever the failure left the stream.
            self._stream.load_state_dict(self._committed)
            self._dirty = False
        if self.prefetch <= 0:
            try:
                batch = self._stream.make(spec)
            except BaseException:
                self._dirty = True
                raise
            self._committed = self._stream.state_dict()
        else:
            if self._thread is None:
                self._start(spec, state.step + 1)
            got_spec, batch, snap = self._get(spec)
            if got_spec != spec:
                # The prediction was wrong (resume at another step, or an unusual caller): rewind to the
                # last batch returned and make the one asked for.
                self._rewinds += 1
                self._halt()
                self._stream.load_state_dict(self._committed)
                self._start(spec, state.step + 1)
                got_spec, batch, snap = self._get(spec)
            self._committed = snap
        end = time.perf_counter()
        self._wait += end - start
        self._t_last = end
        batch.step = state.step
        return batch

    def follow(self, schedule: Schedule) -> None:
        """Predict the steps ahead from ``schedule`` from now on (an adaptive run's decision changed its table).
        Batches already prepared from the old one are only predictions: the first that no longer matches
        the state asked for is made again (a rewind), so what the trainer sees never depends on when this is
        called."""
        self.schedule = schedule

    def prefetch_for(self, state: StageState) -> None:
        """Start making the batches from ``state`` on in the data thread without waiting for any, so that a
        run's cold start (tokenising, filling the shuffle buffers and lanes: 14 s of the first step in the CPU
        compile benchmark) overlaps the trainer's set-up (micro-batch probe, compile warm-up) instead of
        delaying its first step; ``next_batch(state)`` then takes the first of them. Nothing happens for a
        finished curriculum, without a prefetch thread, or once the thread runs. The batches are the same as
        without it: the thread starts from the committed position either way."""
        if state.done or self._closed or self.prefetch <= 0 or self._thread is not None:
            return
        self._start(self._spec_of_state(state), state.step + 1)

    def settle(self, timeout: float = 60.0) -> None:
        """Wait (up to ``timeout`` s) until the data thread has filled its queue and sits idle: for a
        benchmark that times something else right after set-up and should not share the CPU with the cold
        start :meth:`prefetch_for` began. Returns at once without a thread."""
        deadline = time.perf_counter() + timeout
        while (self._thread is not None and self._queue is not None and self._thread.is_alive()
               and not self._queue.full() and time.perf_counter() < deadline):
            time.sleep(0.01)

    def _start(self, spec: BatchSpec, next_step: int) -> None:
        self._queue = queue.Queue(maxsize=max(1, self.prefetch))
        self._stop_event = threading.Event()
        # The thread holds the pipeline only by a weak reference, and not while it waits on a full queue: a
        # pipeline dropped without close() is then collected, and its finaliser stops the thread (a bound
        # method as the target kept both alive for the life of the process).
        self._thread = threading.Thread(
            target=_produce, args=(weakref.ref(self), spec, next_step, self._queue, self._stop_event),
            name="gradus-data", daemon=True,
        )
        self._thread.start()

    def _get(self, wanted: BatchSpec) -> tuple[Any, Batch, dict]:
        """The next prepared (spec, batch, stream state). An error the thread met is raised here, unless it came
        from making a batch of another spec than ``wanted``: that batch was a wrong prediction (a resume, an
        adaptive decision), so the caller rewinds as for any misprediction and makes the one asked for."""
        assert self._queue is not None and self._thread is not None
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._thread = None
                    raise DataError("the data thread stopped unexpectedly") from None
        if item[0] == "error":
            made_for = item[2]
            if made_for is not None and made_for != wanted:
                return made_for, None, None  # type: ignore[return-value]
            self._halt()
            self._dirty = True
            raise item[1]
        return item

    def _halt(self) -> None:
        """Stop the producer thread (it finishes the batch it is making) and drop what it prepared."""
        if self._thread is None:
            return
        assert self._stop_event is not None and self._queue is not None
        self._stop_event.set()
        if threading.current_thread() is self._thread:
            return  # the finaliser ran in the producer itself (it dropped the last reference): it ends on the event
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
        self._thread = None
        self._queue = None
        self._stream.set_pause(no_pause)

    # --------------------------------------------------------------------------------- state
    def _make_fingerprint(self) -> dict:
        return {
            "sources": [s.name for s in self.cfg.sources],
            "tokenizer": self.tok.identity()["sha256"],
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "packing": self.cfg.packing.mode,
            "lanes": self.cfg.packing.lanes,
            "shuffle_buffer": self.cfg.shuffle_buffer,
        }

    def state_dict(self) -> dict:
        """The position after the last batch returned by ``next_batch`` (plain Python and numpy, picklable)."""
        out = copy.deepcopy(self._committed)
        out["fingerprint"] = dict(self._fingerprint)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Continue from a ``state_dict()``: the next batches are those the saved pipeline would have made."""
        if state.get("version") != STATE_VERSION:
            raise DataError(f"data state version {state.get('version')} is not {STATE_VERSION}; cannot resume it")
        saved = state.get("fingerprint", {})
        diff = [k for k, v in self._fingerprint.items() if saved.get(k) != v]
        if diff:
            what = ", ".join(f"{k}: saved {saved.get(k)!r}, now {self._fingerprint[k]!r}" for k in diff)
            raise DataError(f"the data state was saved with other settings ({what}); resume with the same data config")
        self._halt()
        snap = copy.deepcopy({k: v for k, v in state.items() if k != "fingerprint"})
        self._stream.load_state_dict(snap)
        self._committed = self._stream.state_dict()
        self._dirty = False

    # --------------------------------------------------------------------------------- validation
    def validation_batches(self, seq_len: int, tokens: int, batch_size: int) -> list[Batch]:
        """Batches of held-out documents only: about ``tokens`` input tokens shared equally among the
        sources that have held-out documents, windows of ``seq_len`` (+1) without overlap, each batch from
        one source (``batch.source``). The same on every call and every rank."""
        if self._validation is None:
            self._validation = heldout_tokens(self.cfg, self.tok)
            self._validation_chat = heldout_records(self.cfg, self.tok)
        usable = {n: t for n, t in self._validation.items() if len(t) > seq_len}
        chats = self._validation_chat or {}
        if not usable and not chats:
            return []
        per_source = max(seq_len, tokens // (len(usable) + len(chats)))
        out: list[Batch] = []
        for name, records in chats.items():
            # One held-out record per row, as an sft stage trains (labels only on assistant tokens).
            count = min(len(records), max(1, per_source // seq_len))
            for i in range(0, count, batch_size):
                x, y, _ = chat_loss_rows(records[i : min(count, i + batch_size)], seq_len, self.tok.eos_id)
                out.append(Batch(x, y, {n: (int((y != -100).sum()) if n == name else 0) for n in self._stream.names},
                                 -1, -1, name))
        for name, toks in usable.items():
            count = min(max(1, per_source // seq_len), (len(toks) - 1) // seq_len)
            inputs, labels = windows(toks, seq_len, count)
            for i in range(0, count, batch_size):
                x, y = inputs[i : i + batch_size], labels[i : i + batch_size]
                out.append(Batch(x, y, {n: (x.size if n == name else 0) for n in self._stream.names}, -1, -1, name))
        return out

    # --------------------------------------------------------------------------------- metrics
    def metrics(self) -> dict[str, float]:
        """Counters as of the last batch returned: tokens per source and in total, epochs per source,
        documents skipped for being empty, invalid UTF-8 replaced, and the share of time the consumer
        waited inside ``next_batch``."""
        snap = self._committed
        out: dict[str, float] = {}
        total = 0
        empty = utf8 = docs = 0
        for name in self._stream.names:
            t = snap["tokens"][name]
            total += t
            out[f"data/tokens/{name}"] = float(t)
            cur = snap["feeds"][name]["cursor"]
            out[f"data/epochs/{name}"] = float(cur.get("epoch", 0))
            empty += cur.get("empty", 0)
            utf8 += cur.get("utf8", 0)
            docs += cur.get("docs", 0)
        out["data/tokens_total"] = float(total)
        out["data/documents"] = float(docs)
        out["data/skipped_empty"] = float(empty)
        out["data/replaced_utf8"] = float(utf8)
        out["data/dropped_sources"] = float(len(snap["mixer"]["dropped"]))
        if "dropped" in snap["packer"]:
            out["data/dropped_tokens"] = float(snap["packer"]["dropped"])
        if "records" in snap:  # sft stages: tokens of records longer than a row, cut off
            out["data/sft_cut_tokens"] = float(snap["records"]["cut"])
        elapsed = (self._t_last - self._t0) if self._t0 is not None else 0.0
        out["data/wait_fraction"] = float(self._wait / elapsed) if elapsed > 0 else 0.0
        out["data/wait_seconds"] = float(self._wait)
        out["data/rewinds"] = float(self._rewinds)
        return out

    def reset_wait_clock(self) -> None:
        """Start measuring ``data/wait_fraction`` afresh (e.g. after warm-up)."""
        self._wait = 0.0
        self._t0 = None

    # --------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Stop the thread and the worker processes."""
        if self._closed:
            return
        self._closed = True
        self._halt()
        self._encoder.close()

    def __enter__(self) -> DataPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass


def _produce(ref: weakref.ReferenceType[DataPipeline], spec: BatchSpec, step: int, q: queue.Queue,
             stop: threading.Event) -> None:
    """The data thread: make each step's batch ahead and queue it with the stream's state after it; an error
    is queued for the consumer to raise. Ends on ``stop`` or once the pipeline is gone."""
    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stop

    pipe = ref()
    if pipe is None:
        return
    pipe._stream.set_pause(_Courtesy(lambda: q.qsize() > 0))
    del pipe
    making: BatchSpec | None = None  # the spec of the batch being made: an error there names it
    try:
        while not stop.is_set():
            pipe = ref()
            if pipe is None:
                return
            making = spec
            item = (spec, pipe._stream.make(spec), pipe._stream.state_dict())
            making = None
            del pipe  # not held while waiting for room in the queue
            put(item)
            pipe = ref()
            if pipe is None:
                return
            spec = pipe._predict(step, spec)
            del pipe
            step += 1
    except _Stop:
        return
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
        pipe = None  # not held while waiting to hand the error over (the pipeline may be dropped meanwhile)
        try:
            put(("error", exc, making))
        except _Stop:
            return


RESUME_SOURCE_FIELDS = ("dataset", "dataset_config", "split", "format", "builtin", "text_unit", "text_field",
                        "template", "kind", "messages_field", "prompt_template", "response_template", "chat_template")
"""A source's settings that decide which documents it yields and how they read: a saved position in it means
something else once one changes. Its ``path`` is not among them: moving the files (another machine) is fine."""


def resume_signature(cfg: DataConfig) -> dict:
    """The data settings a checkpoint's positions rest on (the checkpoint's compat signature, refused on a
    resume when they change): each source's :data:`RESUME_SOURCE_FIELDS` and whether it names a validation
    split, the held-out fraction (another fraction trains on documents that were held out, and evaluates on
    ones already trained), and how windows are cut (stride, remainder)."""
    return {
        "sources": {s.name: {**{k: getattr(s, k) for k in RESUME_SOURCE_FIELDS},
                             "validation_split": s.validation_split is not None} for s in cfg.sources},
        "validation_fraction": cfg.validation.fraction,
        "packing": {"stride": cfg.packing.stride, "stride_fraction": cfg.packing.stride_fraction,
                    "remainder": cfg.packing.remainder},
    }


def describe_data_change(saved: dict, now: dict) -> list[str]:
    """What differs between two :func:`resume_signature` values, one phrase each, with the config field."""
    problems = []
    if saved.get("validation_fraction") != now["validation_fraction"]:
        problems.append(f"data.validation.fraction {saved.get('validation_fraction')} → {now['validation_fraction']} "
                        "(held-out documents would be trained on, or trained ones evaluated)")
    for key, value in now["packing"].items():
        if saved.get("packing", {}).get(key) != value:
            problems.append(f"data.packing.{key} {saved.get('packing', {}).get(key)} → {value}")
    old_sources = saved.get("sources", {})
    for name, fields in now["sources"].items():
        if name not in old_sources:
            continue  # a source added or removed is the data fingerprint's to refuse (its names)
        for key, value in fields.items():
            if old_sources[name].get(key) != value:
                problems.append(f"data.sources[{name}].{key} {old_sources[name].get(key)!r} → {value!r}")
    return problems


def branch_batch(data, schedule, step: int, tokens: int, branch_tokens: int) -> tuple[Any, int]:
    """The batch of a verification branch's step that trains ``branch_tokens`` from ``tokens`` on: the main
    run's batches from its ``step`` (at ``tokens``) on ``schedule``, joined until they hold that many tokens
    (two for a doubled batch); and the main run's step counter after them."""
    batches, covered = [], 0
    while covered < branch_tokens:
        st = state_at(schedule, step, tokens + covered)
        batches.append(data.next_batch(st))
        covered += st.tokens_per_step
        step += 1
    if covered != branch_tokens:
        raise DataError(f"a verification branch step of {branch_tokens:,} tokens is not a whole number of the "
                        f"main run's steps at {tokens:,} tokens")
    return concat_batches(batches), step
