"""The curriculum training loop.

Each step asks the pure schedule (:func:`gradus.curriculum.state_at`) for the state of the step about to run
(seq_len, batch, LR, clip, mix), asks the data pipeline for a batch of exactly that shape, and trains on it.
Every part of the run is built by :func:`gradus.train.run.build_run` into one :class:`~gradus.train.run.RunParts`
(:attr:`Trainer.parts`); the loop in :meth:`Trainer.fit` reads top to bottom, and the rollback to the last
good checkpoint is :meth:`Trainer._rollback`. Only the counters (step, tokens) and the states of the Stateful
parts (``parts.stateful``) are checkpointed; the schedule is recomputed from the counters on resume. A
program that watches a run passes ``on_step`` and receives a :class:`~gradus.train.metrics.StepReport`
after every step.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradus.config import GradusConfig, dump_yaml
from gradus.curriculum import StageState, stage_of_step, state_at
from gradus.curriculum.adaptive import envelope_lines
from gradus.data import pipeline
from gradus.errors import GradusError
from gradus.train import console, early_stop, faults, lag, metrics, parallel, recovery, runtime
from gradus.train.cadence import Due, due_after
from gradus.train.console import Console
from gradus.train.controller import Branch
from gradus.train.evaluate import side_evaluations
from gradus.train.lag import StepDone
from gradus.train.metrics import RunResult, StepReport, Window
from gradus.train.noise_scale import NoiseSample, unmeasured_note, unmeasured_reason
from gradus.train.run import Held, RunParts, build_run
from gradus.train.signals import StopRequest
from gradus.train.step import batch_tensors, optimizer_step
from gradus.train.storage import checkpoint
from gradus.train.storage.run_dir import RunDir
from gradus.train.warmup import report_warmup

if TYPE_CHECKING:
    from gradus.train.guard import GuardEvent


class Trainer:
    """Builds every part of a run from a config (:func:`~gradus.train.run.build_run`, kept in :attr:`parts`)
    and trains it through the curriculum.

    ``on_step``, when given, is called with a :class:`~gradus.train.metrics.StepReport` after every step
    (on every rank): the public way for a program to watch a run as it trains."""

    def __init__(self, cfg: GradusConfig, run_dir: str | Path, *, resume: bool = True,
                 allow_config_change: bool = False, quiet: bool = False,
                 on_step: Callable[[StepReport], None] | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run = RunDir(self.run_dir)  # every path in it (gradus.train.storage.run_dir)
        self.resume, self.allow_config_change = resume, allow_config_change
        self.quiet, self.on_step = quiet, on_step
        self.stop = StopRequest()  # a signal (or code setting stop.reason) ends the run after the current step
        self.last_val: dict[str, float] = {}
        self.rt: runtime.Runtime | None = None  # set up first, torn down last (close)
        self.parts: RunParts | None = None  # every part of the run, once set-up has built them all
        self.held = Held()  # what set-up opened: released by close, whether or not set-up finished
        self._threads_before: int | None = None
        self._aside_seconds = 0.0  # evaluation and checkpoint time since the last StepReport
        self._saved_at_step: int | None = None
        self._gns_said = False  # whether the run has said it cannot measure the noise scale

    # =================================================================================== set-up
    def setup(self) -> None:
        """Set up the runtime, build every part of the run (resuming from its newest checkpoint), say what
        was built."""
        self.rt = runtime.setup_runtime(self.cfg.train)
        self._threads_before = runtime.set_threads(self.cfg.train.threads)
        self.parts = build_run(self.cfg, self.run, self.rt, held=self.held, resume=self.resume,
                               allow_config_change=self.allow_config_change, quiet=self.quiet)
        self.console = self.parts.console
        self._announce()

    def _announce(self) -> None:
        p = self.parts
        self.console.print(f"gradus: run directory {self.run_dir}")
        if p.resumed_from is not None:
            self.console.print(f"resuming from {p.resumed_from} (step {p.progress.step:,}, "
                               f"{p.progress.tokens:,} tokens)")
            if p.guard.notice:  # an LR factor raised to its floor is said, never silent
                self.console.print(f"guard: {p.guard.notice}")
        # What resolving the config adjusted (a batch rounded to batch_multiple, a mix normalised) is said once
        # here, as gradus schedule says it, rather than silently (issue 31).
        for line in [*p.metrics.notes, *(f"note: {w}" for w in p.schedule.warnings),
                     *console.run_summary(p.shape, p.rt, p.compiled, p.schedule, p.micro_batches, p.unsplit_batches,
                                          p.gns.every if p.gns is not None else 1),
                     *parallel.parallel_notes(self.cfg.train, p.rt, p.shape.n_layers)]:
            self.console.print(line)
        if p.rt.precision == "fp8":
            from gradus.train.fp8 import fp8_note

            self.console.print(fp8_note(p.model, self.cfg.train.fp8.recipe, self.cfg.train.fp8.emulate))
        if p.controller is not None:  # the envelope, as gradus schedule shows it, and what a resumed run decided
            for line in envelope_lines(self.cfg, p.schedule, p.rt.world_size)[1:]:
                self.console.print(line)
            made = [r for r in p.controller.records if r.get("edit")]
            if made:
                self.console.print(f"adaptive: {len(made)} decision(s) so far, the last at step {made[-1]['step']:,} "
                                   f"({p.run.decisions})")
        if p.warmup is not None:
            report_warmup(p.warmup, self.console.print, p.metrics.write)

    # ===================================================================================== loop
    def fit(self, stop_at_step: int | None = None) -> RunResult:
        """Train until the curriculum is done, early stopping triggers, a signal arrives, or
        ``stop_at_step`` (a clean stop with a checkpoint, as if preempted)."""
        rt, p = self.rt, self.parts
        pr = p.progress
        state = state_at(p.current_schedule, pr.step, pr.tokens)
        if state.done:
            self.console.print(f"run already complete at step {pr.step:,} ({state.done_reason})")
            return self._result(state.done_reason or "done")
        self.console = Console(enabled=rt.is_main and not self.quiet, progress_bar=self.cfg.logging.progress_bar,
                               total_tokens=p.current_schedule.total_tokens)
        self.console.advance(0, pr.tokens)
        self.stop.install()
        if pr.step == 0 or state.stage_index != stage_of_step(p.current_schedule, pr.step - 1):
            self._stage_banner(state)
        try:
            with runtime.quick_thread_switch():  # the data thread packs in Python while the step runs
                reason = self._loop(state, stop_at_step)
        finally:
            self.stop.restore()
            self.console.close()
        recovery.check_ranks_in_sync(rt, p.model, p.metrics.write, pr.step)
        result = self._result(reason, self.last_val)
        if p.controller is not None:
            self.console.print(p.controller.summary())
        # A stop (a signal, --stop-at-step) is not an end: it says "stopped ...", and the next line how to go on.
        label = reason if str(reason).startswith("stopped") else f"finished: {reason}"
        self.console.print(
            f"{label}; step {pr.step:,}, {pr.tokens:,} tokens, {pr.train_seconds:.1f}s training"
            + (f", best val loss {pr.best_val_loss:.4f}" if pr.best_val_loss is not None else "")
        )
        self.console.print(f"run directory: {self.run_dir}")
        return result

    def _loop(self, state: StageState, stop_at_step: int | None) -> str:
        """Step until a reason to stop; returns it. A step's figures are read at once at a sync point and
        otherwise one step late, after the next step is queued (``train.host_sync``, :mod:`.lag`)."""
        p = self.parts
        pr = p.progress
        window, reader = Window(), lag.LateReader()
        while True:
            t0 = time.perf_counter()
            batch = p.data.next_batch(state)
            values, noise = self._train_step(state, batch)
            done = StepDone(state, pr.step + 1, pr.tokens + state.tokens_per_step, t0, values, noise)
            pr.step, pr.tokens = done.step, done.tokens
            self.console.advance(state.tokens_per_step)
            nxt = state_at(p.current_schedule, pr.step, pr.tokens)
            due = due_after(self.cfg, pr.step, pr.tokens, pr.last_checkpoint_tokens, state, nxt, stop_at_step)
            sync = due.read_now(p.lagged, signalled=self.stop.reason is not None and not self.rt.distributed)
            # An adaptive check decides from every step's figures: it is a sync point too.
            sync = sync or (p.controller is not None and p.controller.due(pr.tokens, state.tokens_per_step))
            ready = reader.take(done, sync, self.rt.device)
            pr.train_seconds += done.seconds
            rolled = self._settle(ready, window, sync)
            if rolled is not None or not sync:  # (a lagged step is never a stage's last: nxt is in its stage)
                state, reader.pending = (rolled, None) if rolled is not None else (nxt, reader.pending)
                if rolled is not None:
                    window = Window()  # the steps it averaged were thrown away with the rollback
                continue
            loss, grad_norm, applied = done.resolve()
            record = None
            if due.log:
                record = self._log_step(state, loss, grad_norm, window, applied)
                window = Window()
            reason, nxt = self._after_step(state, nxt, due)
            self._report(done, None if reason else nxt.stage_index, record)
            if reason is not None:
                return reason
            if nxt.stage_index != state.stage_index:
                self._stage_banner(nxt)
            state = nxt

    def _settle(self, ready: list[StepDone], window: Window, sync: bool) -> StageState | None:
        """Show the guard and the throughput window the steps read just now, in order, and report those
        that ran a step ago; the state to go on from after a rollback, else None."""
        gns = self.parts.gns
        for d in ready:
            loss, grad_norm, _ = d.resolve()
            if gns is not None:  # in step order, each step once, with the stage it ran in (a stage's last
                gns.enter_stage(d.state.stage_index)  # step is never a lagged one, so stages never mix)
                if gns.measures(d.state.step):  # a step train.noise_scale.every skips is no sample at all
                    gns.update(d.noise.read() if d.noise is not None else None)
            if self.parts.controller is not None:  # the main side of a verification window
                self.parts.controller.observe_step(d.tokens, loss)
            event = self.parts.guard.observe(d.step - 1, loss, grad_norm)
            if event is not None:
                self._log_event(event)
                if event.kind in ("rollback", "diverged"):
                    return self._rollback(event)
            window.add(loss, d.state.tokens_per_step, d.seconds)
            if not (sync and d is ready[-1]):  # the sync step is reported after its evaluation and checkpoint
                self._report(d, d.state.stage_index, None)
        return None

    def _rollback(self, event: GuardEvent) -> StageState:
        """Back to the last checkpoint written before the run of bad steps ``event`` ends (a checkpoint written
        during it is no good one); the guard keeps its halved LR factor and its event counts. Returns the state
        to go on from. A ``diverged`` event (the guard gave up) raises the one-line divergence error instead."""
        p, guard_cfg = self.parts, self.cfg.train.guard
        if event.kind == "diverged":
            p.progress.step = event.step  # steps done: those before the bad one (status.json's step)
            raise recovery.diverged_error(event, recovery.data_position(p.data.metrics()), guard_cfg)
        latest = p.ckpt.latest(at_most=event.since)
        if latest is None:
            raise recovery.no_checkpoint_error(event, guard_cfg)
        factor, totals = p.guard.rollback_factor, dict(p.guard.events_total)
        p.restore(latest)
        p.guard.rollback_factor, p.guard.events_total = factor, totals
        self._saved_at_step = p.progress.step
        # The steps after the checkpoint are redone: their records go, so each step is logged once.
        p.metrics.rewind(p.progress.step)
        p.metrics.write({"event": "rollback", "step": p.progress.step, "checkpoint": latest.name,
                         "bad_step": event.step})
        self.console.print(f"guard: rolled back to {latest.name}; LR factor {factor:g} from now on")
        p.data.follow(p.current_schedule)  # the controller went back to the checkpoint's decisions too
        return state_at(p.current_schedule, p.progress.step, p.progress.tokens)

    def _report(self, d: StepDone, next_stage: int | None, record: dict | None) -> None:
        if self.on_step is not None:
            self.on_step(StepReport(d.step, d.tokens, d.state.stage_index, next_stage, d.state.tokens_per_step,
                                    *d.resolve(), d.started, d.seconds, self._aside_seconds, record))
        self._aside_seconds = 0.0

    def _after_step(self, state: StageState, nxt: StageState, due: Due) -> tuple[str | None, StageState]:
        """Evaluate, let the adaptive controller decide, checkpoint, and decide whether to stop after the step
        just run (``state``; ``nxt`` is the next one's; ``due``, what follows it). Returns the reason to stop
        (None to go on) and the next step's state (a decision may have changed it)."""
        pr = self.parts.progress
        if due.evaluate_now:
            self.last_val = self._evaluate(state)
        # Before any checkpoint of this step (the best one an evaluation may write, too), so that every
        # checkpoint holds the controller after its turn: a resume never takes a decision twice.
        decided = self._adapt(state, due) if self.parts.controller is not None else False
        if decided:
            nxt = state_at(self.parts.current_schedule, pr.step, pr.tokens)
        if due.evaluate_now:
            stop = self._early_stop_check(self.last_val, state)
            if stop is not None:
                self._save_checkpoint(state)
                return stop, nxt
        if not self._just_saved() and (due.checkpoint or decided):  # a decision is in a checkpoint at once
            self._save_checkpoint(state)
        if nxt.done:
            return nxt.done_reason or "done", nxt
        if self.stop.agreed(self.rt) or due.stop_at_step:
            self._save_checkpoint(state)  # (a no-op when this step's checkpoint is written)
            return self.stop.reason or f"stopped at step {pr.step} (--stop-at-step)", nxt
        return None, nxt

    # ========================================================================== adaptive stages
    def _adapt(self, state: StageState, due: Due) -> bool:
        """The controller's turn after a sync step: feed it the step's signals, run a verification branch when
        it asks for one, follow its new schedule. Returns whether the schedule changed."""
        p = self.parts
        c = p.controller
        assert c is not None
        before, seen = c.schedule, len(c.records)
        # Every rank decides alike: the noise scale is all-reduced, the evaluation averaged over ranks.
        val = self.rt.mean(self.last_val["val/loss"]) if due.evaluate_now and "val/loss" in self.last_val else None
        gns = p.gns
        # At a verification window's end the main run is evaluated on the held-out rows the branch was (the
        # verdict compares the two there: AdaptiveController._conclude).
        held_out = self._held_out_rows(state.seq_len) if c.concluding(p.progress.tokens) else None
        branch = c.after_step(p.progress.step, p.progress.tokens, state, None if gns is None else gns.b_simple,
                              0 if gns is None else gns.count, val, held_out=held_out)
        if branch is not None:
            self._run_branch(branch)
        for record in c.records[seen:]:
            self._say_decision(record)
        if c.schedule is before:
            return False
        p.data.follow(c.schedule)
        return True

    def _run_branch(self, branch: Branch) -> None:
        """Train the proposal's branch from here to ``branch.until`` tokens, then put every part back as it
        was (weights, AdamW, every Stateful part: data position, RNG, counters, noise scale, controller), so
        the main run goes on as if the branch had not run; its time is counted as training time.

        Each branch step trains the main run's next batches joined (:func:`gradus.data.pipeline.branch_batch`: two of them for a
        doubled batch), so the branch and the main run see the same documents in the same order and the
        controller compares their losses on equal data. Drawing the branch's own batches instead would not:
        with ``data.packing.lanes`` a doubled batch opens new lanes, and a 26k-token window then shared a
        quarter of its text with the main run's."""
        p, rt = self.parts, self.rt
        t0 = time.perf_counter()
        saved = (_host_copy(p.model.state_dict()), _host_copy(p.optimizer.state_dict()),
                 copy.deepcopy(checkpoint.parts_state(p.stateful, rt.world_size)))
        losses: list[tuple[int, float]] = []
        step, tokens = p.progress.step, p.progress.tokens
        main_step = step  # the main run's step counter over the same tokens (its batches are the branch's data)
        try:
            while tokens < branch.until:
                st = state_at(branch.schedule, step, tokens)
                batch, main_step = pipeline.branch_batch(p.data, p.current_schedule, main_step, tokens, st.tokens_per_step)
                out, _ = self._train_step(st, batch)  # (the branch's noise samples are not kept)
                loss = (out.read() if isinstance(out, lag.DeviceValues) else out)[0]
                step, tokens = step + 1, tokens + st.tokens_per_step
                p.progress.step, p.progress.tokens = step, tokens  # (the EMA's step count)
                losses.append((tokens, loss))
            trained = time.perf_counter() - t0  # (the evaluation below is timed as evaluation)
            held_out = self._held_out_rows(st.seq_len)  # the branch's model, at the window's end
        finally:
            p.model.load_state_dict(saved[0])
            p.optimizer.load_state_dict(saved[1])
            checkpoint.load_parts(p.stateful, saved[2], self.run_dir)
        p.progress.train_seconds += trained
        p.controller.branch_done(losses, held_out, st.seq_len)
        if rt.is_main:
            p.metrics.write({"event": "adaptive/branch", "step": p.progress.step, "tokens": p.progress.tokens,
                             "branch_steps": len(losses), "until_tokens": branch.until,
                             "seconds": time.perf_counter() - t0})

    def _held_out_rows(self, seq_len: int) -> list[list[float]]:
        """The model's loss on each held-out row at ``seq_len`` ([loss sum, tokens] per row): one side of a
        verification's verdict. Every rank evaluates the same rows; their sums are averaged over the ranks
        (float64) so that every rank decides alike. Timed as evaluation."""
        with self._aside():
            p, rt = self.parts, self.rt
            rows = p.validation.row_losses(p.model, seq_len, rt.device, rt.autocast)
            sums = rt.mean_floats([v for v, _ in rows])
            return [[v, n] for v, (_, n) in zip(sums, rows, strict=True)]

    def _say_decision(self, record: dict) -> None:
        """A decision's console line and its event in metrics.jsonl (the report marks it where it happened)."""
        self.console.print(console.decision_line(record))
        if self.rt.is_main:
            self.parts.metrics.write({"event": "adaptive", **record})

    def _train_step(self, state: StageState, batch) -> tuple[tuple[float, float, bool] | lag.DeviceValues,
                                                             NoiseSample | None]:
        """:func:`optimizer_step` at the stage's LR × the guard's factor: ((loss, grad_norm, applied), on the device
        when lagged; the step's noise-scale sample, or None where the run or the step does not measure it)."""
        rt, p = self.rt, self.parts
        if state.rope_scaling != p.model.shape.rope_scaling:
            # A long-context stage interpolates positions (RoPE scaling) from its first step on.
            p.model.set_rope_scaling(state.rope_scaling)
        lr = state.lr * p.guard.lr_factor(state.step)
        inputs, labels = batch_tensors(batch, state.batch_size // rt.world_size, state.seq_len, state.stage_index, rt)
        hooks = p.gns_hooks if p.measures_noise(state) else None  # (train.noise_scale.every skips the others)
        out = optimizer_step(p.net, p.model, p.optimizer, p.scaler, inputs, labels, lr=lr,
                             clip=state.grad_clip, micro=p.micro_batch(state), rt=rt,
                             loss_multiplier=faults.active().loss_multiplier(state.step), lagged=p.lagged,
                             noise_hooks=hooks,
                             uneven_tokens=state.kind == "sft" or self.cfg.data.packing.mode == "document")
        out, sample = out if hooks is not None else (out, None)
        # After each applied step (the one about to be counted); lagged, after every step, weighted by its on-device
        # "applied" flag (a skipped step folds with weight 0: the same average as every_step, without a sync).
        if p.ema is not None and (p.lagged or out[2]):
            p.ema.maybe_update(p.progress.step + 1, p.model, out.applied if p.lagged else None)
        return out, sample

    # ============================================================================ loop helpers
    def _stage_banner(self, state: StageState) -> None:
        schedule = self.parts.current_schedule
        stage = schedule.stages[state.stage_index]
        self.console.print(console.stage_banner(state, stage, len(schedule.stages), schedule))
        if self.rt.is_main:
            self.parts.metrics.write(metrics.stage_record(state, stage))
        self._say_unmeasured_noise(state)

    def _say_unmeasured_noise(self, state: StageState) -> None:
        """Once per run, the first stage whose steps cannot measure the gradient noise scale says why."""
        p = self.parts
        if p.gns is None or self._gns_said:
            return
        rows = state.batch_size // self.rt.world_size
        micro = p.micro_by_shape[(state.seq_len, state.batch_size)]  # (that of the steps that measure)
        reason = unmeasured_reason(-(-rows // micro), self.rt.world_size, parallel.is_sharded(p.model))
        if reason is not None:
            self._gns_said = True
            self.console.print(unmeasured_note(reason, rows, micro, state.stage_index))
            if self.rt.is_main:
                p.metrics.write({"event": "gns/unmeasured", "step": p.progress.step, "stage": state.stage_index,
                                 "reason": reason})

    def _log_step(self, state: StageState, loss: float, grad_norm: float, window: Window,
                  applied: bool) -> dict[str, Any]:
        p, rt = self.parts, self.rt
        pr = p.progress
        record = metrics.step_record(
            state, pr, window, loss=loss, grad_norm=grad_norm, applied=applied,
            lr_factor=p.guard.lr_factor(state.step), micro_batch=p.micro_batch(state),
            flops_per_token=p.shape.flops_per_token(state.seq_len), peak_flops=p.peak,
            world_size=rt.world_size, peak_memory=rt.peak_memory_bytes(),
            total_tokens=p.current_schedule.total_tokens, data=p.data.metrics(), compiled=p.compiled,
            recompiles=p.warmup.recompiles() if p.warmup is not None else None,
        )
        if p.gns is not None:
            record.update(p.gns.metrics(state.tokens_per_step))
        if p.controller is not None:
            record.update(p.controller.metrics(state.tokens_per_step))
        p.metrics.write(record)
        # The run's end: its target, or sooner where train.max_steps cuts the schedule (as the ETA counts).
        ends = [t for t in (p.schedule.target_tokens, p.current_schedule.total_tokens) if t]
        self.console.print(console.progress_line(record, state.num_stages, min(ends) if ends else None,
                                                 self.console.timing(pr.tokens)))
        return record

    def _log_event(self, event) -> None:
        self.console.print(f"guard: step {event.step}: {event.kind}: {event.detail}")
        position = recovery.data_position(self.parts.data.metrics())
        self.parts.metrics.write({**metrics.guard_record(event), "data_position": position})

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
            p = self.parts
            ref, own = p.validation.run(p.model, state.seq_len, self.rt.device, self.rt.autocast)
            record, text = metrics.eval_record(state, p.progress, p.validation.reference_seq_len, ref, own)
            extra, more = side_evaluations(p.ema, p.probe, p.model, p.validation, state.seq_len, self.rt)
            record, text = {**record, **extra}, text + more
            p.metrics.write(record)
            self.console.print(text)
        return {k: v for k, v in record.items() if isinstance(v, float)}

    def _early_stop_check(self, val: dict[str, float], state: StageState) -> str | None:
        """Track the best followed loss (saving the best); the reason to stop (:mod:`.early_stop`), or None.
        ``state``: the step just run, whose stage the checkpoint names (at a stage's end, not the next one's:
        loading reads its RoPE scaling from it)."""
        pr, t = self.parts.progress, self.cfg.train
        # Every rank evaluates the same held-out windows, but GPU kernels need not give bit-identical
        # losses on every rank; decide on the mean, so no rank saves the "best" checkpoint (a collective)
        # or stops early without the others.
        loss = self.rt.mean(early_stop.followed_loss(val, t.early_stopping_metric))
        improved, reason = early_stop.observe_config(pr, loss, t)
        if improved and t.save_best:
            path = self._save_checkpoint(state)
            if self.rt.is_main and path is not None:
                self.parts.ckpt.mark_best(path)
        return reason

    def _just_saved(self) -> bool:
        return self._saved_at_step == self.parts.progress.step

    def _save_checkpoint(self, state: StageState) -> Path | None:
        """Checkpoint the weights, the optimizer and every Stateful part (rank 0 writes)."""
        p, rt = self.parts, self.rt
        pr = p.progress
        if self._just_saved():
            return p.ckpt.latest()
        with self._aside():
            t0 = time.perf_counter()
            pr.last_checkpoint_tokens = pr.tokens
            payload = checkpoint.parts_state(p.stateful, rt.world_size)  # every rank: RNG states are gathered
            path = None
            if rt.is_main or p.ckpt.collective:  # sharded (FSDP): every rank writes its shard
                # The model's shape as it trains now (its RoPE factor is the stage's), not the one it was built with.
                meta = checkpoint.checkpoint_meta(pr, state.stage_index, p.compat, p.tokenizer.identity(),
                                                  getattr(p.model, "shape", p.shape))
                path = p.ckpt.save(pr.step, model=p.model, optimizer=p.optimizer, state=payload, meta=meta,
                                   config_yaml=dump_yaml(self.cfg), ema=p.ema and p.ema.model)
                self.console.print(console.checkpoint_line(path, pr.step, pr.tokens, time.perf_counter() - t0))
            rt.barrier()
        self._saved_at_step = pr.step
        return path

    def _result(self, reason: str, last_val: dict | None = None) -> RunResult:
        pr = self.parts.progress
        return RunResult(self.run_dir, pr.step, pr.tokens, reason, pr.best_val_loss, last_val or {}, pr.train_seconds)

    def close(self, clean: bool = False) -> None:
        """Release what set-up opened (files, loader threads, the run directory's lock: :class:`Held`), then the
        run's parts, then the process group (``clean``: every rank got here together, so they leave together).
        The parts go first because DDP's reducer holds the group: released after it, the group would outlive
        ``destroy_process_group`` with gloo's worker threads running (:func:`runtime.teardown_runtime`)."""
        self.held.release()
        self.parts, self._noise = None, None
        if self.rt is not None:
            if self.rt.distributed:
                gc.collect()  # the model, DDP and the optimizer's cycles, so nothing references the group
            runtime.teardown_runtime(self.rt, clean)
            runtime.set_threads(self._threads_before)  # a library call should not leave the process changed


def _host_copy(state: Any) -> Any:
    """A copy of a (nested) state whose plain tensors are on the host: a verification branch's snapshot of the
    weights and the AdamW moments (12 bytes a parameter in fp32) kept off the accelerator, whose memory the
    micro-batch probe planned without it; ``load_state_dict`` puts each back on its parameter's device.
    Tensor subclasses (FSDP's DTensor shards, float8 weight wrappers) are cloned where they are: a shard is
    1/N of the model, and moving them is not something their owners support."""
    import torch

    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True) if type(state) is torch.Tensor else state.detach().clone()
    if isinstance(state, dict):
        return {k: _host_copy(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_host_copy(v) for v in state)
    return copy.deepcopy(state)


def train(cfg: GradusConfig, run_dir: str | Path, *, resume: bool = True, allow_config_change: bool = False,
          stop_at_step: int | None = None, quiet: bool = False,
          on_step: Callable[[StepReport], None] | None = None) -> RunResult:
    """Build a trainer, run it, and release everything: the one call scripts and benchmarks use.
    ``on_step``: see :class:`Trainer`."""
    trainer = Trainer(cfg, run_dir, resume=resume, allow_config_change=allow_config_change, quiet=quiet,
                      on_step=on_step)
    result, agreed, started, status = None, False, False, None
    try:
        trainer.setup()
        started = True
        result = trainer.fit(stop_at_step=stop_at_step)
        status = recovery.result_status(trainer.parts, result)  # judged now: close releases the parts
    except BaseException as exc:
        recovery.record_failure(trainer.run, trainer.rt, trainer.held.reporting, exc)
        agreed = getattr(exc, "agreed", False)  # every rank raised it: they leave the group together too
        raise
    finally:
        trainer.close(clean=result is not None or agreed)
        failed = sys.exc_info()[0]
        if (not started and trainer.held.created_folder and failed is not None
                and issubclass(failed, GradusError | KeyboardInterrupt)):
            # A start refused for bad input (a glob that matches nothing, a tokenizer file that is not one, a
            # missing wandb), or stopped by Ctrl-C before its first step (at W&B's login prompt), leaves nothing
            # behind: the folder it created holds only what set-up began, and nothing was trained.
            recovery.remove_failed_start(trainer.run, trainer.rt, trainer.held.created_parents)
    recovery.record_result(trainer.run, result, status)
    return result
