"""The curriculum training loop.

Each step asks the pure curriculum for the state of the step about to run (seq_len, batch, LR, clip,
mix), asks the data pipeline for a batch of exactly that shape, and trains on it. The parts are built
and wired here, in the open, in :meth:`Trainer.setup`; the loop in :meth:`Trainer.fit` reads top to
bottom. Only the counters (step, tokens) and the states of the stateful parts are checkpointed; the
schedule is recomputed from the counters on resume.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradus.config import GradusConfig, dump_yaml
from gradus.curriculum import Curriculum, StageState
from gradus.errors import CheckpointError, ConfigError, GradusError
from gradus.plan.memory import estimate_memory
from gradus.train.checkpoint import CheckpointManager
from gradus.train.evaluate import evaluate
from gradus.train.guard import LossGuard
from gradus.train.metrics import Console, MetricsWriter, console_line
from gradus.train.runtime import (
    Runtime,
    host_memory_budget,
    peak_flops,
    rng_state,
    seed_everything,
    set_rng_state,
    setup_runtime,
    teardown_runtime,
)
from gradus.train.step import adamw_state_bytes, halve_until_fits, host_micro_batch, optimizer_step


@dataclass
class RunResult:
    """What a finished (or stopped) run reports."""

    run_dir: Path
    step: int
    tokens: int
    reason: str
    best_val_loss: float | None
    last_val: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0


@dataclass
class Progress:
    """Counters and trackers that a checkpoint carries besides the model, optimizer and data."""

    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    best_val_loss: float | None = None
    evals_since_best: int = 0
    last_checkpoint_tokens: int = 0


def compat_signature(curriculum: Curriculum, world_size: int, tokenizer_identity: dict) -> dict:
    """What must not change between a checkpoint and the config resuming it."""
    return {
        "stages": [
            {"seq_len": s.seq_len, "batch_size": s.batch_size, "start_step": s.start_step, "end_step": s.end_step}
            for s in curriculum.stages
        ],
        "target_tokens": curriculum.target_tokens,
        "world_size": world_size,
        "tokenizer_sha256": tokenizer_identity.get("sha256"),
    }


def describe_incompatibility(saved: dict, now: dict) -> list[str]:
    """Human lines naming what differs between two compat signatures."""
    problems = []
    if saved.get("world_size") != now["world_size"]:
        problems.append(f"world size {saved.get('world_size')} → {now['world_size']} (resume on the same number of processes)")
    if saved.get("tokenizer_sha256") != now["tokenizer_sha256"]:
        problems.append("the tokenizer differs from the one the checkpoint was trained with")
    if saved.get("target_tokens") != now["target_tokens"]:
        problems.append(f"curriculum.target_tokens {saved.get('target_tokens')} → {now['target_tokens']}")
    old, new = saved.get("stages", []), now["stages"]
    if len(old) != len(new):
        problems.append(f"the curriculum has {len(new)} stages, the checkpoint {len(old)}")
    else:
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            for key in ("seq_len", "batch_size", "start_step", "end_step"):
                if a.get(key) != b.get(key):
                    problems.append(f"curriculum.stages[{i}] {key} {a.get(key)} → {b.get(key)}")
    return problems


class Trainer:
    """Builds every part of a run from a config and trains it through the curriculum."""

    def __init__(
        self,
        cfg: GradusConfig,
        run_dir: str | Path,
        *,
        resume: bool = True,
        allow_config_change: bool = False,
        quiet: bool = False,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.allow_config_change = allow_config_change
        self.quiet = quiet
        self.stop_requested: str | None = None

    # =================================================================================== set-up
    def setup(self) -> None:
        """Build runtime, tokenizer, curriculum, model, optimizer, data pipeline, guard; then resume."""
        # Heavy imports here so `gradus schedule`/`plan` never pay for them.
        from gradus.data import DataPipeline, load_tokenizer
        from gradus.model import GPT, resolve_shape
        from gradus.train.step import build_optimizer

        cfg = self.cfg
        self.rt: Runtime = setup_runtime(cfg.train)
        self._threads_before = torch.get_num_threads()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        rt = self.rt
        self._prepare_run_dir()
        self.console = Console(enabled=rt.is_main and not self.quiet, progress_bar=cfg.logging.progress_bar,
                               total_tokens=None)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep_last=cfg.train.keep_last)
        seed_everything(cfg.train.seed)

        # Rank 0 loads (and, if configured, trains) the tokenizer first; the others then read its cache.
        if rt.is_main:
            self.tokenizer = load_tokenizer(cfg.data, run_dir=self.run_dir)
        rt.barrier()
        if not rt.is_main:
            self.tokenizer = load_tokenizer(cfg.data, run_dir=self.run_dir)
        self.curriculum = Curriculum(cfg)
        self.shape = resolve_shape(cfg.model, self.tokenizer.vocab_size)

        seed_everything(cfg.train.seed)  # the model's init does not depend on what the tokenizer consumed
        self.model = GPT(self.shape).to(rt.device)
        self.optimizer = build_optimizer(self.model, cfg.optim, rt.device)
        self.scaler = torch.amp.GradScaler(rt.device.type) if rt.precision == "fp16" else None
        self.data = DataPipeline(cfg.data, self.tokenizer, self.curriculum, seed=cfg.train.seed,
                                 rank=rt.rank, world_size=rt.world_size)
        self.guard = LossGuard(cfg.train.guard)
        self.progress = Progress()
        self.compat = compat_signature(self.curriculum, rt.world_size, self.tokenizer.identity())
        for s in self.curriculum.stages:
            if s.batch_size % rt.world_size:
                raise ConfigError(
                    f"curriculum.stages[{s.index}] batch {s.batch_size} does not divide by world size "
                    f"{rt.world_size}; choose a batch (or tokens_per_batch) divisible by the number of processes"
                )

        resumed_from = self._maybe_resume()
        if rt.is_main and resumed_from is None:
            (self.run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
            if not (self.run_dir / "tokenizer.json").is_file():  # a trained BPE is already saved there
                self.tokenizer.save(self.run_dir)
        self.metrics = MetricsWriter(self.run_dir, tensorboard=cfg.logging.tensorboard, enabled=rt.is_main)
        if resumed_from is not None:
            self.metrics.write({"event": "resume", "step": self.progress.step, "checkpoint": resumed_from.name})

        # What the loop runs: DDP for gradient averaging, then torch.compile around it.
        self.net: torch.nn.Module = self.model
        if rt.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                **_no_forward_buffer_sync(DistributedDataParallel),
            )
        use_compile = {"auto": rt.device.type == "cuda", "on": True, "off": False}[cfg.train.compile]
        self.compiled = use_compile
        if use_compile:
            from torch import _dynamo

            # One graph per stage shape: specialise (dynamic=False) and allow enough cached graphs that a
            # ten-stage curriculum never falls back to eager mode.
            _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
            self.net = torch.compile(self.net, dynamic=False)
        self.micro_batches = self._plan_micro_batches()
        self.peak, self.peak_source = peak_flops(rt.device, cfg.logging.peak_flops, rt.precision)
        self._announce(resumed_from)

    def _prepare_run_dir(self) -> None:
        if self.rt.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                probe = self.run_dir / f".write-test-{os.getpid()}"
                probe.write_text("ok")
                probe.unlink()
            except OSError as exc:
                raise GradusError(
                    f"cannot write to the output directory {self.run_dir}: {exc.strerror or exc}; choose another --out"
                ) from None
        self.rt.barrier()

    def _maybe_resume(self) -> Path | None:
        latest = self.ckpt.latest() if self.resume else None
        if latest is None:
            return None
        meta = self.ckpt.read_meta(latest)
        problems = describe_incompatibility(meta.get("compat", {}), self.compat)
        if problems and not self.allow_config_change:
            raise ConfigError(
                f"{latest}: cannot continue this run: " + "; ".join(problems)
                + "; pass --allow-config-change to continue anyway, or use a new --out"
            )
        state, meta = self.ckpt.load(latest, model=self.model, optimizer=self.optimizer)
        self.progress.__dict__.update(state["progress"])
        self.data.load_state_dict(state["data"])
        self.guard.load_state_dict(state["guard"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if not self.rt.distributed or state.get("world_size") == self.rt.world_size:
            set_rng_state(state["rng"][self.rt.rank] if isinstance(state["rng"], list) else state["rng"])
        return latest

    def _plan_micro_batches(self) -> dict[int, int]:
        """Micro-batch per stage. On CUDA each stage's shape is run once (forward + backward), halving the
        micro-batch on out-of-memory, so no stage change can run out of memory later; this also compiles
        every stage's graph before the clock starts. Under DDP every rank takes the smallest micro-batch
        any rank found (different accumulation counts would hang the gradient all-reduce). On CPU, where
        running out of memory kills the process without a word, the largest divisor of the local batch
        whose estimated memory fits in the host's (:func:`host_micro_batch`): the whole batch for any
        model and shape a CPU trains at a useful speed."""
        rt = self.rt
        chosen: dict[int, int] = {}
        configured = self.cfg.train.micro_batch_size
        budget = host_memory_budget() if rt.device.type == "cpu" else None
        for s in self.curriculum.stages:
            local = s.batch_size // rt.world_size
            micro = min(local, configured) if configured else local
            if rt.device.type == "cpu" and s.steps > 0:
                micro = rt.min_over_ranks(host_micro_batch(self.shape, s.seq_len, micro, rt.precision, budget) or 0)
                if micro == 0:
                    need = estimate_memory(self.shape, s.seq_len, 1, rt.precision).total
                    raise GradusError(
                        f"curriculum.stages[{s.index}] (seq_len {s.seq_len}) needs about {need / 2**30:.1f} GiB "
                        f"even at micro-batch 1, more than the {(budget or 0) / 2**30:.1f} GiB this machine has "
                        f"free; use a smaller model or a shorter seq_len, or train on a GPU"
                    )
            elif rt.device.type == "cuda" and s.steps > 0:
                # 0 = "not even 1 fits" on some rank: every rank learns it from the same all-reduce, so
                # all of them stop with the error instead of some waiting for the others forever.
                found = self._probe(s.seq_len, micro) or 0
                micro = rt.min_over_ranks(found)
                if 0 < micro < found:
                    # Run the agreed shape once too: the graph is specialised on it (dynamic=False), and
                    # compiling it here keeps the compile out of the first timed step.
                    self._probe(s.seq_len, micro)
                if micro == 0:
                    raise GradusError(
                        f"curriculum.stages[{s.index}] (seq_len {s.seq_len}) does not fit in memory even at "
                        f"micro-batch 1 on {torch.cuda.get_device_name(rt.device)}; use a smaller model, "
                        f"a shorter seq_len, or more GPUs"
                    )
            chosen[s.index] = micro
        return chosen

    def _probe(self, seq_len: int, micro: int) -> int | None:
        """The largest micro-batch ≤ ``micro`` (halving) whose forward + backward fits on this GPU, with
        AdamW's moments held aside when they do not exist yet (a fresh run: they appear at the first step);
        None when not even 1 fits. Runs under ``no_sync``: a rank that runs out of memory must not leave
        the others waiting in a gradient all-reduce."""
        saved_rng = rng_state()
        rt = self.rt
        reserve_bytes = 0 if self.optimizer.state else adamw_state_bytes(self.optimizer)

        def fits(m: int) -> bool:
            reserve = x = y = loss = None
            try:
                if reserve_bytes:
                    reserve = torch.empty(reserve_bytes, dtype=torch.uint8, device=rt.device)
                x = torch.randint(0, self.shape.vocab_size, (m, seq_len), device=rt.device)
                # Separate label tensor: compiled with (x, x), the graph would assume aliased inputs and
                # the first real step (two tensors) would recompile after the clock has started.
                y = torch.randint(0, self.shape.vocab_size, (m, seq_len), device=rt.device)
                with self.net.no_sync() if rt.distributed else contextlib.nullcontext():
                    with rt.autocast():
                        _, loss = self.net(x, y)
                    loss.backward()
                torch.cuda.synchronize(rt.device)
                return True
            except torch.OutOfMemoryError:
                return False
            finally:
                # Drop every reference first (a failed backward's graph holds its activations), so that
                # empty_cache can give the memory back before the next, smaller try.
                reserve = x = y = loss = None  # noqa: F841
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()

        micro_found = halve_until_fits(micro, fits)
        set_rng_state(saved_rng)
        torch.cuda.reset_peak_memory_stats(rt.device)
        return micro_found

    def _announce(self, resumed_from: Path | None) -> None:
        p = self.console.print
        shape = self.shape
        p(f"gradus: run directory {self.run_dir}")
        if resumed_from is not None:
            p(f"resuming from {resumed_from} (step {self.progress.step:,}, {self.progress.tokens:,} tokens)")
        p(
            f"model: {shape.params_total / 1e6:.2f}M parameters ({shape.params_non_embedding / 1e6:.2f}M non-embedding), "
            f"{shape.n_layers} layers × {shape.d_model} wide, vocab {shape.vocab_size}; "
            f"device {self.rt.device}, {self.rt.precision}, world size {self.rt.world_size}"
            + (", torch.compile" if self.compiled else "")
        )
        parts = []
        for s in self.curriculum.stages:
            local = s.batch_size // self.rt.world_size
            micro = self.micro_batches[s.index]
            parts.append(f"{s.seq_len}×{local}→{micro}×{math.ceil(local / micro)}")
        p("micro-batches per stage (seq_len×local batch→micro×accumulation): " + ", ".join(parts))
        target = self.curriculum.target_tokens
        p(f"curriculum: {len(self.curriculum.stages)} stages, {self.curriculum.total_steps:,} steps, "
          f"{self.curriculum.total_tokens:,} tokens" + (f" (target {target:,})" if target else ""))

    # ===================================================================================== loop
    def fit(self, stop_at_step: int | None = None) -> RunResult:
        """Train until the curriculum is done, early stopping triggers, a signal arrives, or
        ``stop_at_step`` (a clean stop with a checkpoint, as if preempted)."""
        cfg, rt, pr = self.cfg, self.rt, self.progress
        state = self.curriculum.state_at(pr.step, pr.tokens)
        if state.done:
            self.console.print(f"run already complete at step {pr.step:,} ({state.done_reason})")
            return self._result(state.done_reason or "done")
        self.console.bar = None
        self.console = Console(enabled=rt.is_main and not self.quiet, progress_bar=cfg.logging.progress_bar,
                               total_tokens=self.curriculum.total_tokens)
        self.console.advance(0, pr.tokens)
        previous_handlers = self._install_signal_handlers()
        # The data thread packs in Python; with the default 5 ms GIL switch interval a short training
        # step can stall that long waiting for it (measured by benchmarks/stage_throughput.py).
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, 0.0005))
        reason = "done"
        window = {"loss": 0.0, "n": 0, "tokens": 0, "seconds": 0.0}
        last_val: dict[str, float] = {}
        if pr.step == 0 or state.stage_index != self.curriculum.stages_index_by_step(pr.step - 1):
            self._stage_banner(state)
        try:
            while True:
                t0 = time.perf_counter()
                batch = self.data.next_batch(state)
                loss, grad_norm, applied = self._train_step(state, batch)
                if rt.device.type == "cuda":
                    torch.cuda.synchronize(rt.device)
                dt = time.perf_counter() - t0
                pr.train_seconds += dt
                event = self.guard.observe(pr.step, loss, grad_norm)
                if event is not None:
                    self._log_event(event)
                    if event.kind == "rollback":
                        state = self._rollback(event)
                        continue
                pr.step += 1
                pr.tokens += state.tokens_per_step
                self.console.advance(state.tokens_per_step)
                window["loss"] += loss if math.isfinite(loss) else 0.0
                window["n"] += 1 if math.isfinite(loss) else 0
                window["tokens"] += state.tokens_per_step
                window["seconds"] += dt
                if pr.step % cfg.logging.log_every == 0:
                    self._log_step(state, loss, grad_norm, window, applied)
                    window = {"loss": 0.0, "n": 0, "tokens": 0, "seconds": 0.0}

                nxt = self.curriculum.state_at(pr.step, pr.tokens)
                stage_end = nxt.done or nxt.stage_index != state.stage_index
                if pr.step % cfg.train.eval_every == 0 or (stage_end and cfg.train.eval_at_stage_change):
                    last_val = self._evaluate(state)
                    if self._early_stop_check(last_val):
                        reason = f"early stopping: no improvement in {cfg.train.early_stopping_patience} evaluations"
                        self._save_checkpoint(state)
                        break
                if self._checkpoint_due(stage_end):
                    self._save_checkpoint(state)
                if nxt.done:
                    reason = nxt.done_reason or "done"
                    break
                if self._stop_agreed() or (stop_at_step is not None and pr.step >= stop_at_step):
                    reason = self.stop_requested or f"stopped at step {pr.step} (--stop-at-step)"
                    if not self._just_saved():
                        self._save_checkpoint(state)
                    break
                if nxt.stage_index != state.stage_index:
                    self._stage_banner(nxt)
                state = nxt
        finally:
            sys.setswitchinterval(switch_interval)
            self._restore_signal_handlers(previous_handlers)
            self.console.close()
        self._final_sync_check()
        result = self._result(reason, last_val)
        self.console.print(
            f"finished: {reason}; step {pr.step:,}, {pr.tokens:,} tokens, {pr.train_seconds:.1f}s training"
            + (f", best val loss {pr.best_val_loss:.4f}" if pr.best_val_loss is not None else "")
        )
        self.console.print(f"run directory: {self.run_dir}")
        return result

    def _train_step(self, state: StageState, batch) -> tuple[float, float, bool]:
        """Forward/backward over micro-batches, clip, and (unless the loss or gradient is not finite)
        an optimizer step at the stage's LR × the guard's factor. Returns (loss, grad_norm, applied)."""
        rt = self.rt
        if state.rope_scaling != self.model.shape.rope_scaling:
            # A long-context stage interpolates positions (RoPE scaling) from its first step on.
            self.model.set_rope_scaling(state.rope_scaling)
        lr = state.lr * self.guard.lr_factor(state.step)
        inputs = torch.from_numpy(batch.inputs)
        labels = torch.from_numpy(batch.labels)
        if inputs.shape != (state.batch_size // rt.world_size, state.seq_len):
            raise GradusError(
                f"data pipeline returned a batch of shape {tuple(inputs.shape)} for stage {state.stage_index}, "
                f"expected {(state.batch_size // rt.world_size, state.seq_len)}"
            )
        if rt.device.type == "cuda":
            inputs, labels = inputs.pin_memory(), labels.pin_memory()
        return optimizer_step(self.net, self.model, self.optimizer, self.scaler, inputs, labels, lr=lr,
                              clip=state.grad_clip, micro=self.micro_batches[state.stage_index], rt=rt)

    # ============================================================================ loop helpers
    def _stage_banner(self, state: StageState) -> None:
        s = self.curriculum.stages[state.stage_index]
        mix = ", ".join(f"{k} {v:.2f}" for k, v in s.mix.items() if v > 0)
        self.console.print(
            f"== Stage {s.index + 1}/{len(self.curriculum.stages)} ({s.name}) from step {state.step:,}: "
            f"seq_len {s.seq_len}, batch {s.batch_size}, {s.tokens_per_step:,} tokens/step, "
            f"peak LR {s.peak_lr:.2e}, warmup {s.warmup_steps}, clip {s.grad_clip:g}, mix {mix}"
        )
        if self.rt.is_main:
            self.metrics.write({"event": "stage", "step": state.step, "tokens": state.tokens,
                                "curriculum/stage": s.index, "name": s.name, "seq_len": s.seq_len,
                                "batch_size": s.batch_size})

    def _log_step(self, state: StageState, loss: float, grad_norm: float, window: dict, applied: bool) -> None:
        pr, rt = self.progress, self.rt
        tps = window["tokens"] / window["seconds"] if window["seconds"] > 0 else 0.0
        flops_per_token = self.shape.flops_per_token(state.seq_len)
        mfu = flops_per_token * tps / (self.peak * rt.world_size) if self.peak else 0.0
        if rt.device.type == "cuda":
            peak_mem = torch.cuda.max_memory_allocated(rt.device)
        else:
            peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        record: dict[str, Any] = {
            "step": pr.step,
            "tokens": pr.tokens,
            "loss": loss,
            "loss_avg": window["loss"] / window["n"] if window["n"] else float("nan"),
            "lr": state.lr * self.guard.lr_factor(state.step),
            "lr_scheduled": state.lr,
            "grad_norm": grad_norm,
            "grad_clip": state.grad_clip,
            "update_applied": applied,
            "tokens_per_sec": tps,
            "mfu": mfu,
            "memory/peak_bytes": peak_mem,
            "time/train_seconds": pr.train_seconds,
            "curriculum/stage": state.stage_index,
            "curriculum/current_seq_len": state.seq_len,
            "curriculum/current_batch_size": state.batch_size,
            "curriculum/examples_per_step": state.batch_size,
            "curriculum/tokens_per_step": state.tokens_per_step,
            "curriculum/micro_batch_size": self.micro_batches[state.stage_index],
            "curriculum/warmup_progress": state.warmup_progress,
            "curriculum/progress": pr.tokens / self.curriculum.total_tokens if self.curriculum.total_tokens else 0.0,
            "guard/lr_factor": self.guard.lr_factor(state.step),
        }
        for source, weight in state.mix.items():
            record[f"curriculum/mix/{source}"] = weight
        record.update(self.data.metrics())
        if self.compiled:
            record["compile/unique_graphs"] = _compile_graphs()
        self.metrics.write(record)
        self.console.print(console_line(pr.step, loss, tps, record["lr"], state.stage_index, state.num_stages,
                                        pr.tokens, self.curriculum.target_tokens))

    def _log_event(self, event) -> None:
        self.console.print(f"guard: step {event.step}: {event.kind}: {event.detail}")
        self.metrics.write({"event": f"guard/{event.kind}", "step": event.step, "loss": None if not math.isfinite(event.loss) else event.loss,
                            "detail": event.detail})

    def _validation_batches(self, seq_len: int) -> list:
        cache = self.__dict__.setdefault("_val_cache", {})
        if seq_len not in cache:
            tokens = self.cfg.data.validation.tokens
            batch = max(1, min(self.micro_batches[max(self.micro_batches)], max(1, tokens // seq_len)))
            cache[seq_len] = self.data.validation_batches(seq_len, tokens, batch)
        return cache[seq_len]

    def reference_seq_len(self) -> int:
        """Fixed evaluation length: configured, else the longest stage's seq_len."""
        return self.cfg.train.eval_reference_seq_len or max(s.seq_len for s in self.curriculum.stages)

    def _evaluate(self, state: StageState) -> dict[str, float]:
        """Evaluate at the reference length (comparable across stages) and at the stage's own length."""
        pr, rt = self.progress, self.rt
        ref_len = self.reference_seq_len()
        ref = evaluate(self.model, self._validation_batches(ref_len), rt.device, rt.autocast)
        record: dict[str, Any] = {
            "step": pr.step,
            "tokens": pr.tokens,
            "time/train_seconds": pr.train_seconds,
            "curriculum/stage": state.stage_index,
            "val/loss": ref["loss"],
            "val/ppl": ref["ppl"],
            "val/accuracy": ref["accuracy"],
            "val/seq_len": ref_len,
            "val/tokens": ref["tokens"],
        }
        text = f"eval @ step {pr.step:,}: val loss {ref['loss']:.4f} (ppl {ref['ppl']:.2f}, acc {ref['accuracy']:.3f}) at {ref_len}"
        if state.seq_len != ref_len:
            own = evaluate(self.model, self._validation_batches(state.seq_len), rt.device, rt.autocast)
            record.update({"val/stage_loss": own["loss"], "val/stage_ppl": own["ppl"],
                           "val/stage_accuracy": own["accuracy"], "val/stage_seq_len": state.seq_len})
            text += f"; {own['loss']:.4f} at stage length {state.seq_len}"
        else:
            record.update({"val/stage_loss": ref["loss"], "val/stage_ppl": ref["ppl"],
                           "val/stage_accuracy": ref["accuracy"], "val/stage_seq_len": state.seq_len})
        self.metrics.write(record)
        self.console.print(text)
        return {k: v for k, v in record.items() if isinstance(v, float)}

    def _early_stop_check(self, val: dict[str, float]) -> bool:
        """Track the best reference loss (saving the best checkpoint); True when patience is used up."""
        pr = self.progress
        # Every rank evaluates the same held-out windows, but GPU kernels need not give bit-identical
        # losses on every rank; decide on the mean, so no rank saves the "best" checkpoint (a collective)
        # or stops early without the others.
        loss = self.rt.mean(val.get("val/loss", float("nan")))
        if math.isfinite(loss) and (pr.best_val_loss is None or loss < pr.best_val_loss):
            pr.best_val_loss = loss
            pr.evals_since_best = 0
            path = self._save_checkpoint(self.curriculum.state_at(pr.step, pr.tokens))
            if self.rt.is_main and path is not None:
                self.ckpt.mark_best(path)
            return False
        pr.evals_since_best += 1
        patience = self.cfg.train.early_stopping_patience
        return patience is not None and pr.evals_since_best >= patience

    def _checkpoint_due(self, stage_end: bool) -> bool:
        pr, t = self.progress, self.cfg.train
        if self._just_saved():
            return False
        if stage_end:
            return True
        if t.checkpoint_every and pr.step % t.checkpoint_every == 0:
            return True
        if t.checkpoint_every_tokens and pr.tokens - pr.last_checkpoint_tokens >= t.checkpoint_every_tokens:
            return True
        return False

    def _just_saved(self) -> bool:
        return getattr(self, "_saved_at_step", None) == self.progress.step

    def _save_checkpoint(self, state: StageState) -> Path | None:
        """Checkpoint the current counters and every stateful part (rank 0 writes)."""
        pr, rt = self.progress, self.rt
        if self._just_saved():
            return self.ckpt.latest()
        pr.last_checkpoint_tokens = pr.tokens
        rngs = rng_state()
        if rt.distributed:
            import torch.distributed as dist

            gathered: list[Any] = [None] * rt.world_size
            dist.all_gather_object(gathered, rngs)
            rngs = gathered
        path = None
        if rt.is_main:
            payload = {
                "progress": dict(pr.__dict__),
                "data": self.data.state_dict(),
                "guard": self.guard.state_dict(),
                "rng": rngs,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "world_size": rt.world_size,
            }
            meta = {
                "step": pr.step,
                "tokens": pr.tokens,
                "stage": state.stage_index,
                "best_val_loss": pr.best_val_loss,
                "train_seconds": pr.train_seconds,
                "compat": self.compat,
                "tokenizer": self.tokenizer.identity(),
                "model_shape": self.shape.__dict__ if hasattr(self.shape, "__dict__") else str(self.shape),
            }
            path = self.ckpt.save(pr.step, model=self.model, optimizer=self.optimizer, state=payload,
                                  meta=json.loads(json.dumps(meta, default=str)), config_yaml=dump_yaml(self.cfg))
        rt.barrier()
        self._saved_at_step = pr.step
        return path

    def _rollback(self, event) -> StageState:
        """Restore the last checkpoint after repeated non-finite steps; the guard keeps its halved LR factor."""
        # A checkpoint written during the run of bad steps is not a good one to go back to.
        latest = self.ckpt.latest(at_most=event.since)
        if latest is None:
            raise GradusError(
                f"training diverged: {self.cfg.train.guard.max_bad_steps} non-finite steps in a row at step "
                f"{event.step} and no checkpoint to roll back to; lower optim.base_lr or the stages' LR"
            )
        factor, totals = self.guard.rollback_factor, dict(self.guard.events_total)
        state, _ = self.ckpt.load(latest, model=self.model, optimizer=self.optimizer)
        self.progress.__dict__.update(state["progress"])  # in place: fit() holds a reference
        self.data.load_state_dict(state["data"])
        self.guard.load_state_dict(state["guard"])
        self.guard.rollback_factor, self.guard.events_total = factor, totals
        self._saved_at_step = self.progress.step
        self.console.print(f"guard: rolled back to {latest.name}; LR factor {factor:g} from now on")
        return self.curriculum.state_at(self.progress.step, self.progress.tokens)

    def _final_sync_check(self) -> None:
        """Under DDP, confirm every rank ends with the same weights (a cheap checksum all-gather)."""
        if not self.rt.distributed:
            return
        import torch.distributed as dist

        checksum = float(sum(p.detach().double().sum() for p in self.model.parameters()))
        gathered: list[Any] = [None] * self.rt.world_size
        dist.all_gather_object(gathered, checksum)
        in_sync = all(g == gathered[0] for g in gathered)
        self.metrics.write({"event": "dist/weights_checksum", "step": self.progress.step, "checksums": gathered,
                            "in_sync": in_sync})
        if not in_sync:
            raise GradusError(f"ranks ended with different weights (checksums {gathered}); please report this")

    def _result(self, reason: str, last_val: dict | None = None) -> RunResult:
        pr = self.progress
        return RunResult(self.run_dir, pr.step, pr.tokens, reason, pr.best_val_loss, last_val or {}, pr.train_seconds)

    # ================================================================================== signals
    def _stop_agreed(self) -> bool:
        """Whether to stop after this step. Under DDP a signal can reach one rank a step before another:
        every rank asks all the others, every step, so all stop at the same step (a rank that stopped alone
        would wait in the checkpoint's all-gather while the others waited in the next step's all-reduce)."""
        if not self.rt.distributed:
            return self.stop_requested is not None
        stop = self.rt.any_over_ranks(self.stop_requested is not None)
        if stop and self.stop_requested is None:
            self.stop_requested = "stopped: another rank was signalled; checkpoint saved"
        return stop

    def _install_signal_handlers(self) -> dict:
        def handler(signum, _frame):
            name = signal.Signals(signum).name
            self.stop_requested = f"stopped by {name}; checkpoint saved"

        previous = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
            pass
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict) -> None:
        for sig, h in previous.items():
            signal.signal(sig, h)

    def close(self) -> None:
        """Release files, loader threads and the process group."""
        for part in ("metrics", "data"):
            obj = getattr(self, part, None)
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()
        if hasattr(self, "rt"):
            teardown_runtime(self.rt)
        if hasattr(self, "_threads_before"):  # a library call should not leave the process changed
            torch.set_num_threads(self._threads_before)


def _no_forward_buffer_sync(ddp_class) -> dict:
    """DDP arguments that switch off its buffer broadcast before every forward. GPT's only buffers (the RoPE
    tables) are computed alike on every rank, so the broadcast is one wasted collective per step, and in
    the micro-batch probe it breaks the ranks' lockstep: DDP repeats it until a forward completes, so a
    rank whose forward ran out of memory broadcasts again while the others do not, and they hang.
    Newer torch releases name this ``forward_sync_buffers`` and deprecate ``broadcast_buffers``."""
    import inspect

    if "forward_sync_buffers" in inspect.signature(ddp_class.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _compile_graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return -1


def train(cfg: GradusConfig, run_dir: str | Path, *, resume: bool = True, allow_config_change: bool = False,
          stop_at_step: int | None = None, quiet: bool = False) -> RunResult:
    """Build a trainer, run it, and release everything: the one call scripts and benchmarks use."""
    trainer = Trainer(cfg, run_dir, resume=resume, allow_config_change=allow_config_change, quiet=quiet)
    try:
        trainer.setup()
        return trainer.fit(stop_at_step=stop_at_step)
    except CheckpointError:
        raise
    finally:
        trainer.close()
