"""The learning-rate range test, once per sequence length (``gradus lr-find``).

For each probed length: a fresh model (the same seed every time, so the lengths are comparable; built as
the trainer builds it, ``model.init_from``'s weights included), the
batch of the curriculum stage with that length, data drawn through the real :class:`DataPipeline`,
AdamW built as the trainer builds it, the stage's gradient clip, and a learning rate raised
exponentially from ``min_lr`` to ``max_lr`` over ``K`` steps. What the loss does along the way says
where training is fastest and where it breaks.

The curve's analysis (the LR schedule, the smoothing, the divergence point, the steepest descent and
the suggested peak, with the definitions of each) is pure and lives in :mod:`gradus.plan.lr_curve`.

Layering: torch is imported inside the function that trains, so the pure parts here (which stage a length
borrows its batch from, the ``--write`` config) import in no time and are tested without a model.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gradus.config import GradusConfig
from gradus.curriculum import Schedule, StageState, clip_by_length, derive_batch, resolve_schedule, state_at
from gradus.errors import ConfigError, GradusError
from gradus.plan.lr_curve import (
    RULES,
    CurveStats,
    Smoother,
    analyse,
    check_sweep,
    lr_schedule,
    smoothing_beta,
)


@dataclass(frozen=True)
class Probe:
    """The shape one length is tested at, and the stage it borrows it (and its mix) from."""

    seq_len: int
    batch_size: int
    tokens_per_step: int
    grad_clip: float
    stage_index: int
    stage_name: str
    mix: dict[str, float]
    note: str = ""
    """Empty when a stage has this length; else how the batch was chosen."""


def parse_seq_lens(text: str) -> list[int]:
    """``"64,128,256"`` → [64, 128, 256] (order kept, duplicates dropped); a ConfigError for anything else."""
    out: list[int] = []
    for raw in text.split(","):
        item = raw.strip()
        try:
            value = int(item)
        except ValueError:
            raise ConfigError(
                f"--seq-lens={text}: {item!r} is not a whole number; give lengths like 64,128,256"
            ) from None
        if value <= 0:
            raise ConfigError(f"--seq-lens={text}: {value} is not a positive length")
        if value not in out:
            out.append(value)
    return out


def plan_probes(cfg: GradusConfig, schedule: Schedule, seq_lens: list[int]) -> list[Probe]:
    """The shape of each probed length: the first stage with that seq_len gives its batch, clip and mix;
    a length no stage has takes the batch that keeps the tokens per step of the stage with the nearest
    length (the shorter one on a tie; rows rounded to the nearest whole number), and that stage's mix and
    clip (its clip rule re-applied to the new length when it has one)."""
    max_len = cfg.model.max_seq_len
    too_long = [n for n in seq_lens if n > max_len]
    if too_long:
        raise ConfigError(
            f"--seq-lens: {', '.join(map(str, too_long))} exceeds model.max_seq_len={max_len}; "
            f"drop it or raise the limit with --set model.max_seq_len={max(too_long)}"
        )
    probes = []
    for n in seq_lens:
        exact = [s for s in schedule.stages if s.seq_len == n]
        if exact:
            s = exact[0]
            probes.append(Probe(n, s.batch_size, s.tokens_per_step, s.grad_clip, s.index, s.name, dict(s.mix)))
            continue
        s = min(schedule.stages, key=lambda st: (abs(st.seq_len - n), st.seq_len, st.index))
        st_cfg = cfg.curriculum.stages[s.index]
        # The nearest whole number of rows, not the stage's batch_multiple: what is compared across lengths
        # is the tokens per step, and a multiple of 8 would move it by up to a third at short lengths.
        batch = derive_batch(s.tokens_per_step, n, 1)
        clip = clip_by_length(n) if st_cfg.clip_rule == "by_length" else s.grad_clip
        note = (f"no stage has seq_len {n}: batch {batch} keeps the {s.tokens_per_step:,} tokens/step of stage "
                f"{s.name} (seq_len {s.seq_len})")
        if batch * n != s.tokens_per_step:
            note += f", rounded to {batch * n:,}"
        probes.append(Probe(n, batch, batch * n, clip, s.index, s.name, dict(s.mix), note))
    return probes


@dataclass
class Curve:
    """One length's sweep: its shape, the LR and raw and smoothed loss of every step run, and the stats."""

    probe: Probe
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    grad_norms: list[float]
    stats: CurveStats
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """Plain data (``--json`` and lr_find.json); non-finite losses become null."""
        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None

        out: dict[str, Any] = {
            "seq_len": self.probe.seq_len,
            "batch_size": self.probe.batch_size,
            "tokens_per_step": self.probe.tokens_per_step,
            "grad_clip": self.probe.grad_clip,
            "stage": self.probe.stage_index,
            "stage_name": self.probe.stage_name,
            "note": self.probe.note,
            "steps_run": len(self.losses),
            "seconds": round(self.seconds, 3),
        }
        out.update(asdict(self.stats))
        out["lrs"] = self.lrs[: len(self.losses)]
        out["losses"] = [num(x) for x in self.losses]
        out["smoothed"] = [num(x) for x in self.smoothed]
        out["grad_norms"] = [num(x) for x in self.grad_norms]
        return out


@dataclass
class LRFindResult:
    """Every length's curve plus the sweep's settings."""

    curves: list[Curve]
    min_lr: float
    max_lr: float
    steps: int
    beta: float
    seed: int
    device: str
    precision: str
    model: dict[str, Any] = field(default_factory=dict)

    def suggestions(self) -> dict[int, float]:
        """seq_len → suggested peak LR, for the lengths that have one."""
        return {c.probe.seq_len: c.stats.suggested_lr for c in self.curves if c.stats.suggested_lr is not None}

    def to_json(self) -> dict[str, Any]:
        """The report as data: settings, the rules in words, and one entry per length."""
        return {
            "min_lr": self.min_lr,
            "max_lr": self.max_lr,
            "steps": self.steps,
            "smoothing_beta": self.beta,
            "seed": self.seed,
            "device": self.device,
            "precision": self.precision,
            "model": self.model,
            "rules": RULES,
            "lengths": [c.to_json() for c in self.curves],
        }


# ====================================================================================== training
def run_lr_find(
    cfg: GradusConfig,
    seq_lens: list[int],
    *,
    steps: int = 100,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    run_dir: str | Path | None = None,
    stop_on_divergence: bool = True,
    log: Callable[[str], None] | None = None,
) -> LRFindResult:
    """Sweep the LR at each of ``seq_lens`` (see the module docstring) and return the curves.

    ``run_dir`` receives a tokenizer the config trains (as a run directory would). ``log`` gets one
    line per length as it finishes. ``stop_on_divergence=False`` runs every step (for studies)."""
    from gradus.data import load_tokenizer
    from gradus.train.build import model_shape
    from gradus.train.runtime import setup_runtime
    from gradus.train.storage.run_dir import RunDir

    check_sweep(min_lr, max_lr, steps)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("gradus lr-find runs in one process; start it without torchrun")
    plan = resolve_schedule(cfg)
    probes = plan_probes(cfg, plan, seq_lens)
    schedule = lr_schedule(min_lr, max_lr, steps)
    beta = smoothing_beta(steps)
    rt = setup_runtime(cfg.train)
    tokenizer = load_tokenizer(cfg.data, run_dir=run_dir, log=log,  # says so before training a BPE
                               run_config=RunDir.of(run_dir).config if run_dir is not None else None)
    shape = model_shape(cfg, tokenizer.vocab_size)  # as the trainer resolves it (a too small vocab refused)

    curves = []
    for probe in probes:
        curve = _sweep(cfg, plan, tokenizer, shape, rt, probe, schedule, beta, stop_on_divergence)
        curves.append(curve)
        if log is not None:
            log(_progress_line(curve))
    return LRFindResult(curves, min_lr, max_lr, steps, beta, cfg.train.seed, str(rt.device), rt.precision,
                        {"n_layers": shape.n_layers, "d_model": shape.d_model, "n_heads": shape.n_heads,
                         "vocab_size": shape.vocab_size, "params": shape.params_total})


def _sweep(cfg: GradusConfig, plan: Schedule, tokenizer, shape, rt, probe: Probe, schedule: list[float],
           beta: float, stop_on_divergence: bool) -> Curve:
    """One length's sweep: a fresh model, AdamW and data stream, one optimizer step per LR of ``schedule``
    (stopping at divergence unless told otherwise)."""
    import torch

    from gradus.data import DataPipeline
    from gradus.train.build import build_config_parts
    from gradus.train.step import optimizer_step

    t0 = time.perf_counter()
    # The same seed for every length: the same initial weights and the same stream of documents. Built as the
    # trainer builds its model (the config's AdamW, seed and model.init_from).
    parts = build_config_parts(cfg, shape, rt)
    parts.model.train()
    micro = _sweep_micro_batch(cfg, shape, rt, probe)
    base = _sweep_state(plan, probe)
    losses: list[float] = []
    smoothed: list[float] = []
    norms: list[float] = []
    smoother = Smoother(beta)
    # curriculum=None: the pipeline predicts "same shape as the last batch", which is exactly what a
    # sweep asks for, so its prefetching never has to rewind.
    with DataPipeline(cfg.data, tokenizer, None, seed=cfg.train.seed) as pipe:
        for i, lr in enumerate(schedule):
            state: StageState = replace(base, step=i, tokens=i * probe.tokens_per_step, lr=lr, peak_lr=lr)
            batch = pipe.next_batch(state)
            if batch.inputs.shape != (probe.batch_size, probe.seq_len):
                raise GradusError(f"data pipeline returned {batch.inputs.shape}, expected "
                                  f"{(probe.batch_size, probe.seq_len)}")
            try:
                loss, norm, _ = optimizer_step(parts.model, parts.model, parts.optimizer, parts.scaler,
                                               torch.from_numpy(batch.inputs), torch.from_numpy(batch.labels),
                                               lr=lr, clip=probe.grad_clip, micro=micro, rt=rt)
            except torch.OutOfMemoryError:
                raise GradusError(
                    f"seq_len {probe.seq_len} × batch {probe.batch_size} does not fit in memory; "
                    f"use --set train.micro_batch_size=N (accumulation keeps the batch)"
                ) from None
            losses.append(loss)
            norms.append(norm)
            value, bad = smoother.update(loss)
            smoothed.append(value)
            if bad and stop_on_divergence:
                break
    del parts
    if rt.device.type == "cuda":
        torch.cuda.empty_cache()  # the next length starts from the same free memory
    return Curve(probe, schedule, losses, smoothed, norms, analyse(schedule, losses, beta), time.perf_counter() - t0)


def _sweep_micro_batch(cfg: GradusConfig, shape, rt, probe: Probe) -> int:
    """The micro-batch a sweep runs at: configured, and on CPU (as the trainer: a CPU that runs out of
    memory kills the process) the largest that fits in the host's free memory."""
    from gradus.train.micro_batch import configured_micro_batch, host_micro_batch
    from gradus.train.runtime import host_memory_budget

    micro = configured_micro_batch(probe.batch_size, cfg.train.micro_batch_size)
    if rt.device.type != "cpu":
        return micro
    fitted = host_micro_batch(shape, probe.seq_len, micro, rt.precision, host_memory_budget())
    if fitted is None:
        raise GradusError(f"seq_len {probe.seq_len} does not fit in this machine's free memory even at "
                          f"micro-batch 1; use a smaller model or a shorter length")
    return fitted


def _sweep_state(plan: Schedule, probe: Probe) -> StageState:
    """The curriculum state a sweep's steps start from: the probe's stage at its start, with the probe's
    shape, clip and mix, warmup done (the sweep sets the LR itself)."""
    s = plan.stages[probe.stage_index]
    return replace(
        state_at(plan, s.start_step, s.start_tokens),
        stage_index=probe.stage_index, stage_name=probe.stage_name, seq_len=probe.seq_len,
        batch_size=probe.batch_size, tokens_per_step=probe.tokens_per_step, grad_clip=probe.grad_clip,
        mix=dict(probe.mix), warmup_progress=1.0, done=False, done_reason=None,
    )


def _progress_line(c: Curve) -> str:
    st = c.stats
    end = f"diverged at step {st.diverged_step}" if st.diverged else "no divergence"
    return f"seq_len {c.probe.seq_len}: {len(c.losses)} steps in {c.seconds:.1f}s, {end}"


# ===================================================================================== --write
LR_FORMS = ("peak_lr", "lr_multiplier", "lr_scale", "lr_rule")
"""Keys that set a stage's peak LR; the config allows only one, so setting peak_lr clears the others."""


@dataclass(frozen=True)
class StageChange:
    """What ``--write`` did to one stage."""

    index: int
    name: str
    seq_len: int
    old_lr: float
    old_source: str
    new_lr: float | None
    """None: the stage's length was not probed (or gave no suggestion) and it keeps its LR."""


def round_lr(lr: float) -> float:
    """Three significant digits: 0.011547 → 0.0115 (a config is read by people)."""
    return float(f"{lr:.3g}")


def config_with_peaks(raw: dict, schedule: Schedule, suggestions: dict[int, float]) -> tuple[dict, list[StageChange]]:
    """A copy of the config mapping ``raw`` (as read from YAML, overrides applied) in which every stage
    whose seq_len has a suggestion gets ``peak_lr`` = that suggestion (3 significant digits), with its
    ``lr_multiplier`` / ``lr_scale`` / ``lr_rule`` removed; other stages are left as they are.

    Works on the raw mapping rather than the validated objects so the copy keeps the file's own form
    (token budgets, defaults left out) and differs from it only in the LRs. ``schedule`` (built from the
    same mapping) says each stage's resolved seq_len and current peak."""
    import copy

    out = copy.deepcopy(raw)
    stages = out.get("curriculum", {}).get("stages", [])
    if len(stages) != len(schedule.stages):
        raise GradusError("--write: the config's stages do not match the loaded curriculum; please report this")
    changes = []
    for raw_stage, plan in zip(stages, schedule.stages, strict=True):
        lr = suggestions.get(plan.seq_len)
        new = round_lr(lr) if lr is not None else None
        if new is not None:
            for key in LR_FORMS:
                raw_stage.pop(key, None)
            raw_stage["peak_lr"] = new
        changes.append(StageChange(plan.index, plan.name, plan.seq_len, plan.peak_lr, plan.lr_source, new))
    return out, changes
