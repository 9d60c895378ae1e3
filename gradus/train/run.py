"""Every part of a training run, built in one place: :func:`build_run` returns one frozen :class:`RunParts`.

The trainer used to wire about 25 parts by hand in its set-up and test ``hasattr`` when closing; the
rollback reached into its privates. Now the parts are one record the trainer holds (``trainer.parts``), and
adding a part to a run is one field in :class:`RunParts` and one line in :func:`build_run` (its order is the
order the parts are built in, which fixes the RNG draws: keep a new part after those it needs, and after the
model when it draws random numbers, so the runs before it repeat bit for bit). A part that must be
closed registers its closer with :class:`Held` where it is built, so a set-up that fails halfway releases
what it had opened, and nothing asks whether an attribute exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradus.config import GradusConfig, dump_yaml
from gradus.curriculum import Schedule, StageState, resolve_schedule, state_at
from gradus.curriculum.adaptive import envelope
from gradus.train import lag, parallel, runtime
from gradus.train.build import build_config_parts, load_tokenizer_on_ranks, model_shape, wrap_for_training
from gradus.train.console import Console
from gradus.train.controller import AdaptiveController
from gradus.train.ema import WeightEMA
from gradus.train.evaluate import Validation
from gradus.train.guard import LossGuard
from gradus.train.micro_batch import (
    check_batches_divide,
    noise_copy_bytes,
    noise_splits,
    plan_micro_batches,
    probe_micro_batch,
)
from gradus.train.noise_scale import GradientNoiseScale, MicroBatchNorms, ShardedMicroBatchNorms
from gradus.train.passkey import PasskeyProbe
from gradus.train.stateful import PerRank, Progress, RngState, Stateful
from gradus.train.storage import checkpoint
from gradus.train.storage.run_dir import RunDir
from gradus.train.storage.sharded_checkpoint import open_checkpoints
from gradus.train.trackers import Tracked, open_metrics
from gradus.train.warmup import CompileWarmup, compile_warmup

if TYPE_CHECKING:
    import torch

    from gradus.data import DataPipeline, Tokenizer
    from gradus.model.gpt import GPT
    from gradus.sizes import ModelShape
    from gradus.train.runtime import Runtime
    from gradus.train.storage.checkpoint import CheckpointManager


class Held:
    """What a run holds open while it is built and trains (the run directory's lock, the data thread, the
    metrics files), released by :meth:`release` in the reverse order of opening; and, once the metrics
    writer is open, the counters a failure is reported at (``status.json``, :func:`.recovery.record_failure`)."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.created_folder = False
        """Whether this process created the run directory and took its lock (rank 0): only then may a start
        refused for bad input remove it."""
        self.created_parents: list[Path] = []
        """The folders above the run directory that did not exist before it was made (nearest first): a start
        refused for bad input removes them too, when empty, so it leaves no empty ``runs/`` behind."""
        self.reporting: Progress | None = None
        """The run's counters once its metrics writer is open; None before (a refused set-up keeps the
        run directory's status as it was)."""

    def add(self, close: Callable[[], Any], *, quiet: bool = False) -> None:
        """Release ``close`` with the run; ``quiet``: an exception it raises is dropped (the files and the
        thread of a failed run must not hide the error that ended it)."""
        if quiet:
            def close_quietly() -> None:
                with contextlib.suppress(Exception):
                    close()
            self._stack.callback(close_quietly)
        else:
            self._stack.callback(close)

    def release(self) -> None:
        """Close everything added, last added first."""
        self._stack.close()


@dataclass(frozen=True)
class RunParts:
    """Every part of one training run, built by :func:`build_run` (fields in the order they are built)."""

    run: RunDir
    """The run directory (:mod:`gradus.train.storage.run_dir`)."""
    rt: Runtime
    """Device, precision, process group, RNG."""
    schedule: Schedule
    """The resolved curriculum (frozen; :func:`gradus.curriculum.state_at` reads it)."""
    console: Console
    """The set-up's console (the loop opens its own, with the progress bar)."""
    ckpt: CheckpointManager
    """Saves, lists and loads the run's checkpoints (sharded under FSDP)."""
    tokenizer: Tokenizer
    """The run's tokenizer (trained once and kept in the run directory, or the one configured)."""
    shape: ModelShape
    """The model's shape (vocabulary from the tokenizer)."""
    model: GPT
    """The plain module: its parameters are what is clipped, averaged and saved."""
    optimizer: torch.optim.AdamW
    """AdamW (:func:`gradus.train.build.build_optimizer`)."""
    scaler: torch.amp.GradScaler | None
    """fp16's gradient scaler, else None."""
    data: DataPipeline
    """The prefetching data pipeline: batches of the shape each step asks for, and the held-out split."""
    guard: LossGuard
    """Loss spikes, non-finite steps, the LR back-off and the rollback's trigger."""
    progress: Progress
    """The counters: step, tokens, seconds, best validation loss, patience."""
    ema: WeightEMA | None
    """The weights' moving average (``train.ema``), else None."""
    gns: GradientNoiseScale | None
    """The gradient noise scale's averages (``train.noise_scale``), else None."""
    gns_hooks: MicroBatchNorms | ShardedMicroBatchNorms | None
    """The per-parameter hooks that measure the noise scale inside a step (built with :attr:`gns`, registered at
    the first measured step and kept for the run, armed per step by :func:`gradus.train.step.optimizer_step`;
    under FSDP2 the reader of the sharded gradients instead), else None."""
    stateful: dict[str, Stateful]
    """Everything a checkpoint carries besides the weights and the optimizer, in restoring order (the
    names of ``state.pt``: ARCHITECTURE.md, "Stateful parts")."""
    lagged: bool
    """Whether a step's figures are read one step late (``train.host_sync``, :mod:`gradus.train.lag`)."""
    compat: dict
    """What must not change between a checkpoint and the config resuming it."""
    resumed_from: Path | None
    """The checkpoint the run continued from, or None for a fresh start."""
    metrics: Tracked
    """metrics.jsonl, TensorBoard and W&B (rank 0 writes)."""
    net: torch.nn.Module
    """What the loop runs: the model, wrapped by DDP and/or torch.compile."""
    compiled: bool
    """Whether ``net`` is compiled."""
    micro_batches: dict[int, int]
    """The micro-batch each stage of the configured table runs at, by stage index."""
    micro_by_shape: dict[tuple[int, int], int]
    """The micro-batch of every shape the run can reach, by (seq_len, batch), on the steps that measure the
    noise scale (every step, unless ``train.noise_scale.every``): an adaptive run's decisions make stages the
    table does not have (:func:`gradus.curriculum.adaptive.envelope`)."""
    warmup: CompileWarmup | None
    """The start-up compilation of every training shape (compiled runs), else None."""
    validation: Validation
    """The held-out evaluation at the reference length and the stage's."""
    probe: PasskeyProbe | None
    """The long-context passkey probe (``train.passkey``), else None."""
    peak: float | None
    """The device's peak FLOP/s for MFU, when known."""
    peak_source: str
    """Where :attr:`peak` came from."""
    controller: AdaptiveController | None = None
    """The adaptive controller (``curriculum.adaptive``), else None: the part that changes the run's course
    from what it observes (:mod:`gradus.train.controller`)."""
    unsplit_by_shape: dict[tuple[int, int], int] | None = None
    """With ``train.noise_scale.every`` > 1 and its ``micro_batches``: the micro-batch of every shape on the
    steps that do not measure (planned without the noise scale's split), else None (as :attr:`micro_by_shape`)."""

    @property
    def current_schedule(self) -> Schedule:
        """The schedule the run follows now: with an adaptive controller, the table its decisions made
        (:func:`gradus.curriculum.adaptive.adapted_schedule`), else :attr:`schedule`."""
        return self.controller.schedule if self.controller is not None else self.schedule

    @property
    def unsplit_batches(self) -> dict[int, int] | None:
        """:attr:`unsplit_by_shape` by stage index of the configured table (as :attr:`micro_batches`), or None."""
        if self.unsplit_by_shape is None:
            return None
        return {s.index: self.unsplit_by_shape[(s.seq_len, s.batch_size)] for s in self.schedule.stages}

    def measures_noise(self, state: StageState) -> bool:
        """Whether the step whose curriculum state is ``state`` takes a noise-scale sample (hooks armed)."""
        return self.gns is not None and self.gns.measures(state.step)

    def micro_batch(self, state: StageState) -> int:
        """The micro-batch of the step whose curriculum state is ``state``: split for the noise scale on the
        steps that measure it, unsplit on the others when ``train.noise_scale.every`` skips them."""
        key = (state.seq_len, state.batch_size)
        if self.unsplit_by_shape is not None and not self.measures_noise(state):
            return self.unsplit_by_shape[key]
        return self.micro_by_shape[key]

    def restore(self, path: Path) -> None:
        """Load a checkpoint into the model, the optimizer and every Stateful part: resume and rollback."""
        state, _ = self.ckpt.load(path, model=self.model, optimizer=self.optimizer)
        checkpoint.load_parts(self.stateful, state, path)


def build_run(cfg: GradusConfig, run_dir: RunDir | str | Path, rt: Runtime, *, held: Held, resume: bool = True,
              allow_config_change: bool = False, quiet: bool = False) -> RunParts:
    """Build every part of the run ``cfg`` describes in ``run_dir`` on ``rt`` and, with ``resume``, continue
    from its newest checkpoint (a changed config is refused in one line unless ``allow_config_change``).
    What must be closed is added to ``held`` as soon as it is open. The order is the one the runs before
    this module was written built in: every RNG draw, and so every figure, is as it was."""
    # Heavy imports here so `gradus schedule`/`plan` never pay for them.
    from gradus.data import DataPipeline
    from gradus.data.pipeline import resume_signature

    run = RunDir.of(run_dir)
    schedule = resolve_schedule(cfg)
    # Every shape the run can reach: the table's, and an adaptive run's doublings (prepared at start-up).
    shapes = envelope(cfg, schedule, rt.world_size) if cfg.curriculum.adaptive is not None else list(schedule.stages)
    check_batches_divide(shapes, rt)  # before the run directory is touched
    if rt.is_main:
        created = not run.path.exists()
        # The folders above it that prepare() makes too (./runs on a first run): a refused start removes them.
        held.created_parents = [d for d in run.path.absolute().parents if not d.exists()] if created else []
        held.add(run.prepare().release)
        held.created_folder = created  # this process made the folder and holds its lock (a failed start may remove it)
    rt.barrier()
    console = Console(enabled=rt.is_main and not quiet, progress_bar=cfg.logging.progress_bar, total_tokens=None)
    ckpt = open_checkpoints(run.checkpoints, cfg.train, rt)  # sharded under FSDP
    runtime.seed_everything(cfg.train.seed)
    tokenizer = load_tokenizer_on_ranks(cfg.data, run, rt, console.print)
    shape = model_shape(cfg, tokenizer.vocab_size)

    # Seeded again inside: the model's init does not depend on what the tokenizer consumed.
    built = build_config_parts(cfg, shape, rt, prepare=lambda m: parallel.prepare_model(m, cfg.train, rt),
                               sharded=parallel.shards(rt, cfg.train.parallel))
    data = DataPipeline(cfg.data, tokenizer, schedule, seed=cfg.train.seed, rank=rt.rank, world_size=rt.world_size)
    held.add(data.close, quiet=True)
    guard, progress = LossGuard(cfg.train.guard), Progress()
    # In the order they are restored: the data pipeline before the RNG states, as always.
    stateful: dict[str, Stateful] = {
        "progress": progress, "data": PerRank(data, rt, "data", restart_on_other_world_size=allow_config_change),
        "guard": guard, "rng": RngState(rt)}
    if built.scaler is not None:
        stateful["scaler"] = built.scaler
    ema = WeightEMA(built.model, cfg.train.ema) if cfg.train.ema is not None else None
    if ema is not None:  # after the model's parts: restored with them
        stateful["ema"] = ema
    gns = (GradientNoiseScale(cfg.train.noise_scale.beta, cfg.train.noise_scale.every)
           if cfg.train.noise_scale.enabled else None)
    if gns is not None:  # draws no random numbers: the runs before it repeat bit for bit
        stateful["gns"] = gns
    gns_hooks: MicroBatchNorms | ShardedMicroBatchNorms | None = None
    if gns is not None:  # hooks registered at their first use; under FSDP2 the sharded gradients are read instead
        kind = ShardedMicroBatchNorms if parallel.is_sharded(built.model) else MicroBatchNorms
        gns_hooks = kind(built.model.parameters())
    if gns_hooks is not None:
        held.add(gns_hooks.close, quiet=True)
    controller = None
    if cfg.curriculum.adaptive is not None:  # plain data, no random numbers: the runs before it repeat bit for bit
        reference = cfg.train.eval_reference_seq_len or max(s.seq_len for s in schedule.stages)
        controller = AdaptiveController(
            cfg, schedule, cost=lambda seq_len: shape.flops_per_token(seq_len) / shape.flops_per_token(reference),
            publish=run.write_decisions if rt.is_main else None, world_size=rt.world_size)
        stateful["adaptive"] = controller
    lagged = lag.lagged_mode(cfg.train.host_sync, rt.device, built.optimizer)  # read figures a step late
    compat = checkpoint.compat_signature(schedule, rt.world_size, tokenizer.identity(), resume_signature(cfg.data))

    latest = ckpt.latest() if resume else None
    if latest is not None:
        checkpoint.refuse_incompatible(latest, ckpt.read_meta(latest).get("compat", {}), compat, allow_config_change)
        state, _ = ckpt.load(latest, model=built.model, optimizer=built.optimizer)
        checkpoint.load_parts(stateful, state, latest)
    current = controller.schedule if controller is not None else schedule  # (a resumed run's decisions)
    data.follow(current)
    data.prefetch_for(state_at(current, progress.step, progress.tokens))  # cold start ∥ set-up
    if rt.is_main and latest is None:
        run.config.write_text(dump_yaml(cfg), encoding="utf-8")
        if not run.tokenizer.is_file():  # a trained BPE is already saved there
            tokenizer.save(run.path)
    # From step 0 too: what a run killed before its first checkpoint logged is redone, so dropped.
    metrics = open_metrics(cfg, run, rt.is_main, resume_step=progress.step)  # + TensorBoard, W&B
    held.add(metrics.close, quiet=True)
    held.reporting = progress
    if latest is not None:
        metrics.write({"event": "resume", "step": progress.step, "checkpoint": latest.name})

    net, compiled = wrap_for_training(built.model, rt, cfg.train.compile)

    def plan(splits: int) -> dict[int, int]:
        return plan_micro_batches(
            shapes, shape, rt, cfg.train.micro_batch_size,
            lambda seq_len, micro: probe_micro_batch(net, built.optimizer, rt, shape.vocab_size, seq_len, micro,
                                                     noise_copy_bytes(gns_hooks, built.optimizer)),
            layout=parallel.memory_layout(cfg.train, shape.n_layers, rt.world_size),  # FSDP shards, recompute
            splits=splits)

    splits = noise_splits(cfg.train, rt.world_size, parallel.is_sharded(built.model))
    micro_of = plan(splits)
    # With train.noise_scale.every, the steps that do not measure run unsplit: a second plan, None if the same.
    unsplit_of = plan(1) if splits > 1 and gns is not None and gns.every > 1 else None
    micro_by_shape = {(s.seq_len, s.batch_size): micro_of[s.index] for s in shapes}
    unsplit_by_shape = (None if unsplit_of is None else
                        {(s.seq_len, s.batch_size): unsplit_of[s.index] for s in shapes})
    micro_batches = {s.index: micro_by_shape[(s.seq_len, s.batch_size)] for s in schedule.stages}
    # Every training shape compiled now, not at its stage's first step (see gradus.train.warmup).
    warmup = (compile_warmup(net, built.model, built.optimizer, rt, shapes, micro_of, also=unsplit_of)
              if compiled else None)
    # Evaluated at a fixed length (configured, else the longest stage's), in batches known to fit: the rows the
    # longest stage's micro-batch holds, in tokens at the reference length (not the last stage's: an sft tail
    # at a shorter length fits more rows than the longest length does).
    reference = cfg.train.eval_reference_seq_len or max(s.seq_len for s in schedule.stages)
    longest = max(schedule.stages, key=lambda s: (s.seq_len, s.index))
    eval_rows = max(1, micro_batches[longest.index] * longest.seq_len // reference)
    validation = Validation(data, cfg.data.validation.tokens, eval_rows, reference)
    probe = PasskeyProbe(cfg.train.passkey, tokenizer) if cfg.train.passkey is not None else None
    peak, peak_source = runtime.peak_flops(rt.device, cfg.logging.peak_flops, rt.precision)
    return RunParts(run=run, rt=rt, schedule=schedule, console=console, ckpt=ckpt, tokenizer=tokenizer, shape=shape,
                    model=built.model, optimizer=built.optimizer, scaler=built.scaler, data=data, guard=guard,
                    progress=progress, ema=ema, gns=gns, gns_hooks=gns_hooks, stateful=stateful, lagged=lagged, compat=compat, resumed_from=latest,
                    metrics=metrics, net=net, compiled=compiled, micro_batches=micro_batches, micro_by_shape=micro_by_shape,
                    unsplit_by_shape=unsplit_by_shape, warmup=warmup,
                    validation=validation, probe=probe, peak=peak, peak_source=peak_source,
                    controller=controller)
