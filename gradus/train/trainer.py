"""The curriculum training loop.

Each step asks the pure schedule (:func:`gradus.curriculum.state_at`) for the state of the step about to run (seq_len, batch, LR, clip,
mix), asks the data pipeline for a batch of exactly that shape, and trains on it. The parts are built
(:mod:`gradus.train.build`, :mod:`gradus.train.micro_batch`) and wired here, in the open, in
:meth:`Trainer.setup`; the loop in :meth:`Trainer.fit` reads top to bottom. Only the counters (step,
tokens) and the states of the Stateful parts (:attr:`Trainer.parts`) are checkpointed; the schedule is
recomputed from the counters on resume. A program that watches a run passes ``on_step`` and receives a
:class:`~gradus.train.metrics.StepReport` after every step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gradus.config import GradusConfig, dump_yaml
from gradus.curriculum import StageState, resolve_schedule, stage_of_step, state_at
from gradus.train import checkpoint, early_stop, faults, lag, metrics, parallel, recovery, runtime
from gradus.train.build import build_training_parts, load_tokenizer_on_ranks, wrap_for_training
from gradus.train.ema import WeightEMA
from gradus.train.evaluate import Validation, side_evaluations
from gradus.train.guard import LossGuard
from gradus.train.lag import StepDone
from gradus.train.metrics import Console, RunResult, StepReport, Window
from gradus.train.micro_batch import check_batches_divide, plan_micro_batches, probe_micro_batch
from gradus.train.passkey import PasskeyProbe
from gradus.train.run_dir import RunDir
from gradus.train.sharded_checkpoint import open_checkpoints
from gradus.train.signals import StopRequest
from gradus.train.stateful import PerRank, Progress, RngState, Stateful
from gradus.train.step import batch_tensors, optimizer_step
from gradus.train.trackers import open_metrics
from gradus.train.warmup import compile_warmup, report_warmup


class Trainer:
    """Builds every part of a run from a config and trains it through the curriculum.

    ``on_step``, when given, is called with a :class:`~gradus.train.metrics.StepReport` after every step
    (on every rank): the public way for a program to watch a run as it trains."""

    def __init__(self, cfg: GradusConfig, run_dir: str | Path, *, resume: bool = True,
                 allow_config_change: bool = False, quiet: bool = False,
                 on_step: Callable[[StepReport], None] | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run = RunDir(self.run_dir)  # every path in it (gradus.train.run_dir)
        self.resume, self.allow_config_change = resume, allow_config_change
        self.quiet, self.on_step = quiet, on_step
        self.stop = StopRequest()  # a signal (or code setting stop.reason) ends the run after the current step
        self.last_val: dict[str, float] = {}
        self._aside_seconds = 0.0  # evaluation and checkpoint time since the last StepReport
        self._saved_at_step: int | None = None

    # =================================================================================== set-up
    def setup(self) -> None:
        """Build runtime, tokenizer, curriculum, model, optimizer, data pipeline, guard; then resume."""
        # Heavy imports here so `gradus schedule`/`plan` never pay for them.
        from gradus.model import resolve_shape
        from gradus.sizes import check_vocab_fits

        cfg = self.cfg
        self.rt = rt = runtime.setup_runtime(cfg.train)
        self._threads_before = runtime.set_threads(cfg.train.threads)
        self.schedule = resolve_schedule(cfg)
        check_batches_divide(self.schedule.stages, rt)  # before the run directory is touched
        if rt.is_main:
            self._lock = self.run.prepare()
        rt.barrier()
        self.console = Console(enabled=rt.is_main and not self.quiet, progress_bar=cfg.logging.progress_bar,
                               total_tokens=None)
        self.ckpt = open_checkpoints(self.run.checkpoints, cfg.train, rt)  # sharded under FSDP
        runtime.seed_everything(cfg.train.seed)

        self.tokenizer = load_tokenizer_on_ranks(cfg.data, self.run, rt, self.console.print)
        check_vocab_fits(cfg.model, self.tokenizer.vocab_size)
        self.shape = resolve_shape(cfg.model, self.tokenizer.vocab_size)
        self._build_parts()
        self.lagged = lag.lagged_mode(cfg.train.host_sync, rt.device, self.optimizer)  # read figures a step late
        self.compat = checkpoint.compat_signature(self.schedule, rt.world_size, self.tokenizer.identity())

        resumed_from = self._maybe_resume()
        self.data.prefetch_for(state_at(self.schedule, self.progress.step, self.progress.tokens))  # cold start ∥ set-up
        if rt.is_main and resumed_from is None:
            self.run.config.write_text(dump_yaml(cfg), encoding="utf-8")
            if not self.run.tokenizer.is_file():  # a trained BPE is already saved there
                self.tokenizer.save(self.run_dir)
        # From step 0 too: what a run killed before its first checkpoint logged is redone, so dropped.
        self.metrics = open_metrics(cfg, self.run, rt.is_main,  # + TensorBoard, W&B
                                    resume_step=self.progress.step)
        if resumed_from is not None:
            self.metrics.write({"event": "resume", "step": self.progress.step, "checkpoint": resumed_from.name})
        self.net, self.compiled = wrap_for_training(self.model, rt, cfg.train.compile)
        self.micro_batches = plan_micro_batches(
            self.schedule.stages, self.shape, rt, cfg.train.micro_batch_size,
            lambda seq_len, micro: probe_micro_batch(self.net, self.optimizer, rt, self.shape.vocab_size, seq_len, micro),
            layout=parallel.memory_layout(cfg.train, self.shape.n_layers, rt.world_size))  # FSDP shards, recompute
        # Every training shape compiled now, not at its stage's first step (see gradus.train.warmup).
        self.warmup = (compile_warmup(self.net, self.model, self.optimizer, rt, self.schedule.stages,
                                      self.micro_batches) if self.compiled else None)
        # Evaluated at a fixed length (configured, else the longest stage's), in batches known to fit.
        self.validation = Validation(self.data, cfg.data.validation.tokens, self.micro_batches[max(self.micro_batches)],
                                     cfg.train.eval_reference_seq_len or max(s.seq_len for s in self.schedule.stages))
        self.probe = PasskeyProbe(cfg.train.passkey, self.tokenizer) if cfg.train.passkey is not None else None
        self.peak, self.peak_source = runtime.peak_flops(rt.device, cfg.logging.peak_flops, rt.precision)
        self._announce(resumed_from)

    def _build_parts(self) -> None:
        """The model, its optimizer and scaler, the data pipeline, the guard and the counters; and
        :attr:`parts`, everything a checkpoint carries besides the weights and the optimizer."""
        from gradus.data import DataPipeline

        cfg, rt = self.cfg, self.rt
        # Seeded again inside: the model's init does not depend on what the tokenizer consumed.
        built = build_training_parts(self.shape, cfg.optim, rt.device, rt.precision, cfg.train.seed,
                                     cfg.model.init_from, prepare=lambda m: parallel.prepare_model(m, cfg.train, rt))
        self.model, self.optimizer, self.scaler = built.model, built.optimizer, built.scaler
        self.data = DataPipeline(cfg.data, self.tokenizer, self.schedule, seed=cfg.train.seed,
                                 rank=rt.rank, world_size=rt.world_size)
        self.guard, self.progress = LossGuard(cfg.train.guard), Progress()
        # In the order they are restored: the data pipeline before the RNG states, as always.
        data = PerRank(self.data, rt, "data", restart_on_other_world_size=self.allow_config_change)
        self.parts: dict[str, Stateful] = {"progress": self.progress, "data": data, "guard": self.guard,
                                           "rng": RngState(rt)}
        if self.scaler is not None:
            self.parts["scaler"] = self.scaler
        self.ema = WeightEMA(self.model, cfg.train.ema) if cfg.train.ema is not None else None
        if self.ema is not None:  # after the model's parts: restored with them
            self.parts["ema"] = self.ema

    def _maybe_resume(self) -> Path | None:
        latest = self.ckpt.latest() if self.resume else None
        if latest is None:
            return None
        checkpoint.refuse_incompatible(latest, self.ckpt.read_meta(latest).get("compat", {}), self.compat,
                                       self.allow_config_change)
        self._restore(latest)
        return latest

    def _restore(self, path: Path) -> None:
        """Load a checkpoint into the model, the optimizer and every Stateful part: resume and rollback."""
        state, _ = self.ckpt.load(path, model=self.model, optimizer=self.optimizer)
        checkpoint.load_parts(self.parts, state, path)

    def _announce(self, resumed_from: Path | None) -> None:
        self.console.print(f"gradus: run directory {self.run_dir}")
        if resumed_from is not None:
            self.console.print(f"resuming from {resumed_from} (step {self.progress.step:,}, "
                               f"{self.progress.tokens:,} tokens)")
            if self.guard.notice:  # an LR factor raised to its floor is said, never silent
                self.console.print(f"guard: {self.guard.notice}")
        for line in [*self.metrics.notes, *metrics.run_summary(self.shape, self.rt, self.compiled, self.schedule,
                                                                self.micro_batches),
                     *parallel.parallel_notes(self.cfg.train, self.rt, self.shape.n_layers)]:
            self.console.print(line)
        if self.warmup is not None:
            report_warmup(self.warmup, self.console.print, self.metrics.write)

    # ===================================================================================== loop
    def fit(self, stop_at_step: int | None = None) -> RunResult:
        """Train until the curriculum is done, early stopping triggers, a signal arrives, or
        ``stop_at_step`` (a clean stop with a checkpoint, as if preempted)."""
        rt, pr = self.rt, self.progress
        state = state_at(self.schedule, pr.step, pr.tokens)
        if state.done:
            self.console.print(f"run already complete at step {pr.step:,} ({state.done_reason})")
            return self._result(state.done_reason or "done")
        self.console = Console(enabled=rt.is_main and not self.quiet, progress_bar=self.cfg.logging.progress_bar,
                               total_tokens=self.schedule.total_tokens)
        self.console.advance(0, pr.tokens)
        self.stop.install()
        if pr.step == 0 or state.stage_index != stage_of_step(self.schedule, pr.step - 1):
            self._stage_banner(state)
        try:
            with runtime.quick_thread_switch():  # the data thread packs in Python while the step runs
                reason = self._loop(state, stop_at_step)
        finally:
            self.stop.restore()
            self.console.close()
        recovery.check_ranks_in_sync(self.rt, self.model, self.metrics.write, pr.step)
        result = self._result(reason, self.last_val)
        self.console.print(
            f"finished: {reason}; step {pr.step:,}, {pr.tokens:,} tokens, {pr.train_seconds:.1f}s training"
            + (f", best val loss {pr.best_val_loss:.4f}" if pr.best_val_loss is not None else "")
        )
        self.console.print(f"run directory: {self.run_dir}")
        return result

    def _loop(self, state: StageState, stop_at_step: int | None) -> str:
        """Step until a reason to stop; returns it. A step's figures are read at once at a sync point and
        otherwise one step late, after the next step is queued (``train.host_sync``, :mod:`.lag`)."""
        pr = self.progress
        window, reader = Window(), lag.LateReader()
        while True:
            t0 = time.perf_counter()
            batch = self.data.next_batch(state)
            done = StepDone(state, pr.step + 1, pr.tokens + state.tokens_per_step, t0, self._train_step(state, batch))
            pr.step, pr.tokens = done.step, done.tokens
            self.console.advance(state.tokens_per_step)
            nxt = state_at(self.schedule, pr.step, pr.tokens)
            due = lag.due_after(self.cfg, pr, state, nxt, stop_at_step)
            sync = not self.lagged or due.sync(self.stop.reason is not None and not self.rt.distributed)
            ready = reader.take(done, sync, self.rt.device)
            pr.train_seconds += done.seconds
            rolled = self._settle(ready, window, sync)
            if rolled is not None or not sync:  # (a lagged step is never a stage's last: nxt is in its stage)
                state, reader.pending = (rolled, None) if rolled is not None else (nxt, reader.pending)
                continue
            loss, grad_norm, applied = done.resolve()
            record = None
            if due.log:
                record = self._log_step(state, loss, grad_norm, window, applied)
                window = Window()
            reason = self._after_step(state, nxt, due)
            self._report(done, None if reason else nxt.stage_index, record)
            if reason is not None:
                return reason
            if nxt.stage_index != state.stage_index:
                self._stage_banner(nxt)
            state = nxt

    def _settle(self, ready: list[StepDone], window: Window, sync: bool) -> StageState | None:
        """Show the guard and the throughput window the steps read just now, in order, and report those
        that ran a step ago; the state to go on from after a rollback, else None."""
        for d in ready:
            loss, grad_norm, _ = d.resolve()
            event = self.guard.observe(d.step - 1, loss, grad_norm)
            if event is not None:
                self._log_event(event)
                if event.kind in ("rollback", "diverged"):
                    return recovery.rollback(self, event)
            window.add(loss, d.state.tokens_per_step, d.seconds)
            if not (sync and d is ready[-1]):  # the sync step is reported after its evaluation and checkpoint
                self._report(d, d.state.stage_index, None)
        return None

    def _report(self, d: StepDone, next_stage: int | None, record: dict | None) -> None:
        if self.on_step is not None:
            self.on_step(StepReport(d.step, d.tokens, d.state.stage_index, next_stage, d.state.tokens_per_step,
                                    *d.resolve(), d.started, d.seconds, self._aside_seconds, record))
        self._aside_seconds = 0.0

    def _after_step(self, state: StageState, nxt: StageState, due: lag.Due) -> str | None:
        """Evaluate, checkpoint, and decide whether to stop after the step just run (``state``; ``nxt`` is
        the next one's; ``due``, what follows it). Returns the reason to stop, or None to go on."""
        pr = self.progress
        if due.evaluate or (due.stage_end and self.cfg.train.eval_at_stage_change):
            self.last_val = self._evaluate(state)
            stop = self._early_stop_check(self.last_val)
            if stop is not None:
                self._save_checkpoint(state)
                return stop
        if not self._just_saved() and due.checkpoint:
            self._save_checkpoint(state)
        if nxt.done:
            return nxt.done_reason or "done"
        if self.stop.agreed(self.rt) or due.stop_at_step:
            self._save_checkpoint(state)  # (a no-op when this step's checkpoint is written)
            return self.stop.reason or f"stopped at step {pr.step} (--stop-at-step)"
        return None

    def _train_step(self, state: StageState, batch) -> tuple[float, float, bool] | lag.DeviceValues:
        """:func:`optimizer_step` at the stage's LR × the guard's factor: (loss, grad_norm, applied), on the device when lagged."""
        rt = self.rt
        if state.rope_scaling != self.model.shape.rope_scaling:
            # A long-context stage interpolates positions (RoPE scaling) from its first step on.
            self.model.set_rope_scaling(state.rope_scaling)
        lr = state.lr * self.guard.lr_factor(state.step)
        inputs, labels = batch_tensors(batch, state.batch_size // rt.world_size, state.seq_len, state.stage_index, rt)
        out = optimizer_step(self.net, self.model, self.optimizer, self.scaler, inputs, labels, lr=lr,
                             clip=state.grad_clip, micro=self.micro_batches[state.stage_index], rt=rt,
                             loss_multiplier=faults.active().loss_multiplier(state.step), lagged=self.lagged)
        # After each applied step (the one about to be counted); lagged, after every step (a skipped one changed nothing).
        if self.ema is not None and (self.lagged or out[2]):
            self.ema.maybe_update(self.progress.step + 1, self.model)
        return out

    # ============================================================================ loop helpers
    def _stage_banner(self, state: StageState) -> None:
        stage = self.schedule.stages[state.stage_index]
        self.console.print(metrics.stage_banner(state, stage, len(self.schedule.stages), self.schedule))
        if self.rt.is_main:
            self.metrics.write(metrics.stage_record(state, stage))

    def _log_step(self, state: StageState, loss: float, grad_norm: float, window: Window,
                  applied: bool) -> dict[str, Any]:
        pr, rt = self.progress, self.rt
        record = metrics.step_record(
            state, pr, window, loss=loss, grad_norm=grad_norm, applied=applied,
            lr_factor=self.guard.lr_factor(state.step), micro_batch=self.micro_batches[state.stage_index],
            flops_per_token=self.shape.flops_per_token(state.seq_len), peak_flops=self.peak,
            world_size=rt.world_size, peak_memory=rt.peak_memory_bytes(),
            total_tokens=self.schedule.total_tokens, data=self.data.metrics(), compiled=self.compiled,
            recompiles=self.warmup.recompiles() if self.warmup is not None else None,
        )
        self.metrics.write(record)
        self.console.print(metrics.progress_line(record, state.num_stages, self.schedule.target_tokens,
                                                 self.console.timing(pr.tokens)))
        return record

    def _log_event(self, event) -> None:
        self.console.print(f"guard: step {event.step}: {event.kind}: {event.detail}")
        self.metrics.write({**metrics.guard_record(event), "data_position": recovery.data_position(self.data.metrics())})

    @contextlib.contextmanager
    def _aside(self) -> Iterator[None]:
        """Time spent evaluating and checkpointing: reported as ``StepReport.aside_seconds``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._aside_seconds += time.perf_counter() - t0

    def _evaluate(self, state: StageState) -> dict[str, float]:
        """Evaluate at the reference length (comparable across stages) and at the stage's own length."""
        with self._aside():
            ref, own = self.validation.run(self.model, state.seq_len, self.rt.device, self.rt.autocast)
            record, text = metrics.eval_record(state, self.progress, self.validation.reference_seq_len, ref, own)
            extra, more = side_evaluations(self.ema, self.probe, self.model, self.validation, state.seq_len, self.rt)
            record, text = {**record, **extra}, text + more
            self.metrics.write(record)
            self.console.print(text)
        return {k: v for k, v in record.items() if isinstance(v, float)}

    def _early_stop_check(self, val: dict[str, float]) -> str | None:
        """Track the best followed loss (saving the best); the reason to stop (:mod:`.early_stop`), or None."""
        pr, t = self.progress, self.cfg.train
        # Every rank evaluates the same held-out windows, but GPU kernels need not give bit-identical
        # losses on every rank; decide on the mean, so no rank saves the "best" checkpoint (a collective)
        # or stops early without the others.
        loss = self.rt.mean(early_stop.followed_loss(val, t.early_stopping_metric))
        improved, reason = early_stop.observe_config(pr, loss, t)
        if improved and t.save_best:
            path = self._save_checkpoint(state_at(self.schedule, pr.step, pr.tokens))
            if self.rt.is_main and path is not None:
                self.ckpt.mark_best(path)
        return reason

    def _just_saved(self) -> bool:
        return self._saved_at_step == self.progress.step

    def _save_checkpoint(self, state: StageState) -> Path | None:
        """Checkpoint the weights, the optimizer and every Stateful part (rank 0 writes)."""
        pr, rt = self.progress, self.rt
        if self._just_saved():
            return self.ckpt.latest()
        with self._aside():
            t0 = time.perf_counter()
            pr.last_checkpoint_tokens = pr.tokens
            payload = checkpoint.parts_state(self.parts, rt.world_size)  # every rank: RNG states are gathered
            path = None
            if rt.is_main or self.ckpt.collective:  # sharded (FSDP): every rank writes its shard
                meta = checkpoint.checkpoint_meta(pr, state.stage_index, self.compat, self.tokenizer.identity(),
                                                  self.shape)
                path = self.ckpt.save(pr.step, model=self.model, optimizer=self.optimizer, state=payload, meta=meta,
                                      config_yaml=dump_yaml(self.cfg), ema=self.ema and self.ema.model)
                self.console.print(metrics.checkpoint_line(path, pr.step, pr.tokens, time.perf_counter() - t0))
            rt.barrier()
        self._saved_at_step = pr.step
        return path

    def _result(self, reason: str, last_val: dict | None = None) -> RunResult:
        pr = self.progress
        return RunResult(self.run_dir, pr.step, pr.tokens, reason, pr.best_val_loss, last_val or {}, pr.train_seconds)

    def close(self, clean: bool = False) -> None:
        """Release files, loader threads and the process group (``clean``: every rank got here together, so they leave together)."""
        for part in ("metrics", "data"):
            obj = getattr(self, part, None)
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()
        if hasattr(self, "_lock"):
            self._lock.release()
        if hasattr(self, "rt"):
            runtime.teardown_runtime(self.rt, clean)
            runtime.set_threads(self._threads_before)  # a library call should not leave the process changed


def train(cfg: GradusConfig, run_dir: str | Path, *, resume: bool = True, allow_config_change: bool = False,
          stop_at_step: int | None = None, quiet: bool = False,
          on_step: Callable[[StepReport], None] | None = None) -> RunResult:
    """Build a trainer, run it, and release everything: the one call scripts and benchmarks use.
    ``on_step``: see :class:`Trainer`."""
    trainer = Trainer(cfg, run_dir, resume=resume, allow_config_change=allow_config_change, quiet=quiet,
                      on_step=on_step)
    result, agreed = None, False
    try:
        trainer.setup()
        result = trainer.fit(stop_at_step=stop_at_step)
    except BaseException as exc:
        recovery.record_failure(trainer, exc)
        agreed = getattr(exc, "agreed", False)  # every rank raised it: they leave the group together too
        raise
    finally:
        trainer.close(clean=result is not None or agreed)
    recovery.record_result(trainer, result)
    return result
