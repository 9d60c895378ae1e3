"""The learning-rate range test, once per sequence length (``gradus lr-find``).

For each probed length: a fresh model (the same seed every time, so the lengths are comparable), the
batch of the curriculum stage with that length, data drawn through the real :class:`DataPipeline`,
AdamW built as the trainer builds it, the stage's gradient clip, and a learning rate raised
exponentially from ``min_lr`` to ``max_lr`` over ``K`` steps. What the loss does along the way says
where training is fastest and where it breaks.

Definitions (what the report's numbers mean)
--------------------------------------------
* LR of step i (i = 0 … K−1): ``min_lr · (max_lr / min_lr) ** (i / (K − 1))`` — exactly min_lr at the
  first step and max_lr at the last, a constant factor in between.
* Smoothed loss s_i: an exponential moving average of the step losses with bias correction (as the
  fastai LR finder): ``a_i = β·a_{i−1} + (1−β)·loss_i``, ``s_i = a_i / (1 − β^(i+1))``, with
  ``β = 1 − 1/w`` and ``w = max(2, K/20)`` steps. The window is a fixed share (5%) of the sweep, i.e.
  about 0.3 decades of LR for a 1e-6…1 sweep: wide enough to calm batch-to-batch noise, short enough
  that the curve lags the LR by a factor < 2 (fastai's β = 0.98 lags by ~50 steps, half the sweep).
* Divergence: the first step whose raw loss is not finite, or whose smoothed loss has risen above its
  minimum so far m_i by more than ``max(0.1, (s_0 − m_i) / 3)`` nats, s_0 being the first step's loss
  (the untrained model's, ≈ ln V): the sweep has given back a third of what it had learned. Why not
  fastai's "4 × the minimum": language-model cross-entropy with gradient clipping does not quadruple when
  training breaks, it climbs back towards ln V (measured: a 4 × 64 model falls from 6.24 to 4.9 and
  returns to 6.4 at LR 1, never near 4 × 4.9), so a ratio rule would call almost every sweep stable.
  The 0.1-nat floor keeps noise on the flat start (where s_0 − m_i ≈ 0) from counting. The sweep stops
  at the divergent step.
* Max stable LR: the LR of the last step before divergence; ``max_lr`` when the loss never diverged
  (the report flags it: the real limit is higher than the sweep went).
* Steepest-descent LR: the LR where the smoothed loss falls fastest per unit of log LR (most negative
  finite-difference slope ds/dlnLR), among the steps before divergence.
* Min-loss LR: the LR at the smallest smoothed loss before divergence.
* Suggested peak LR: ``min(steepest, max_stable / 3)`` — see :func:`suggest_peak` for why.

Layering: torch is imported inside the functions that train, so the pure parts (schedule, smoothing,
analysis, which stage a length borrows its batch from, the ``--write`` config) import in no time and are
tested without a model.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradus.config import GradusConfig
from gradus.curriculum import Curriculum, StageState, clip_by_length, derive_batch
from gradus.errors import ConfigError, GradusError

if TYPE_CHECKING:

    pass

RISE_FRACTION = 1 / 3
"""Divergence: the smoothed loss rose above its minimum by this share of the progress made so far …"""
RISE_FLOOR = 0.1
"""… and by at least this many nats (see the module docstring)."""
STABILITY_MARGIN = 3.0
"""The suggested peak is at most max_stable / this (see :func:`suggest_peak`)."""
MIN_STEPS = 5
"""Fewer steps cannot give a slope, a minimum and a divergence point."""


# =========================================================================================== pure
def lr_schedule(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """The LR of each step: exponential from ``min_lr`` (step 0) to ``max_lr`` (step steps−1)."""
    check_sweep(min_lr, max_lr, steps)
    ratio = max_lr / min_lr
    lrs = [min_lr * ratio ** (i / (steps - 1)) for i in range(steps)]
    lrs[-1] = max_lr  # exact end point, not min·ratio¹ with its rounding
    return lrs


def check_sweep(min_lr: float, max_lr: float, steps: int) -> None:
    """One-line ConfigErrors for a sweep that cannot work."""
    for flag, value in (("--min-lr", min_lr), ("--max-lr", max_lr)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag}={value:g}: must be a positive learning rate, e.g. 1e-6")
    if min_lr >= max_lr:
        raise ConfigError(f"--min-lr={min_lr:g} must be below --max-lr={max_lr:g}; the sweep raises the LR")
    if steps < MIN_STEPS:
        raise ConfigError(f"--steps={steps}: the sweep needs at least {MIN_STEPS} steps (default 100)")


def smoothing_beta(steps: int) -> float:
    """EMA factor of the smoothed loss: a window of 5% of the sweep, at least 2 steps."""
    window = max(2.0, steps / 20)
    return 1.0 - 1.0 / window


class Smoother:
    """Bias-corrected exponential moving average, fed one loss at a time; tells when the loss diverged."""

    def __init__(self, beta: float):
        self.beta = beta
        self.avg = 0.0
        self.n = 0
        self.best = math.inf
        self.first: float | None = None

    def update(self, loss: float) -> tuple[float, bool]:
        """Add one raw loss; returns (smoothed loss, diverged). A non-finite loss is divergence itself and
        leaves the average as it was (the curve stays drawable)."""
        if not math.isfinite(loss):
            return (self.avg / (1 - self.beta**self.n) if self.n else math.nan), True
        if self.first is None:
            self.first = loss
        self.n += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        smoothed = self.avg / (1 - self.beta**self.n)
        self.best = min(self.best, smoothed)
        return smoothed, smoothed > divergence_threshold(self.first, self.best)


def divergence_threshold(initial: float, best: float) -> float:
    """Smoothed loss above which the sweep counts as diverged, given the first loss and the best smoothed
    loss so far: ``best + max(RISE_FLOOR, RISE_FRACTION × (initial − best))``."""
    return best + max(RISE_FLOOR, RISE_FRACTION * (initial - best))


def smooth(losses: Iterable[float], beta: float) -> list[float]:
    """The smoothed curve of a list of raw losses (see :class:`Smoother`)."""
    sm = Smoother(beta)
    return [sm.update(x)[0] for x in losses]


def suggest_peak(steepest_lr: float | None, max_stable_lr: float | None) -> float | None:
    """The suggested peak LR: ``min(steepest, max_stable / 3)``.

    Why the steepest-descent LR first: it is where a fresh model learns fastest per step, which is what a
    peak reached after warmup should be, and it is the figure that matched a tuned run. On DESIGN.md's
    first measurement (4 × 128, BPE 8192, WikiText-2, 8,192 tokens/step, length 256; grid-tuned best LR
    4e-3, with 2e-3 and 8e-3 both worse) a 60-step sweep gives steepest 4.6e-3, min-loss 1.2e-2
    (fastai's min-loss / 10 would say 1.2e-3) and max-stable 7.6e-2 (/3 = 2.5e-2, far too high).
    Why the cap at max_stable / 3: a sweep holds each LR for one step on small fresh weights, while a run
    holds its peak for thousands of steps, so the LR a sweep survives is an upper bound that real runs
    near it spike at; a factor of 3 is Smith's margin for cyclical-LR bounds. It binds when a curve keeps
    falling until it breaks (the steepest point then sits at the edge), and it is the only figure when
    the curve never falls (steepest is None).
    """
    candidates = [x for x in (steepest_lr, None if max_stable_lr is None else max_stable_lr / STABILITY_MARGIN)
                  if x is not None]
    return min(candidates) if candidates else None


@dataclass
class CurveStats:
    """What one sweep says (see the module docstring for each definition)."""

    diverged: bool
    diverged_step: int | None
    """First divergent step (None when the loss never diverged)."""
    diverged_lr: float | None
    max_stable_lr: float | None
    """LR of the last step before divergence (the sweep's max_lr when it never diverged)."""
    steepest_lr: float | None
    steepest_slope: float | None
    """ds/dlnLR at the steepest point, nats per e-fold of LR (negative)."""
    min_loss_lr: float | None
    min_loss: float | None
    suggested_lr: float | None
    initial_loss: float | None
    """The first raw loss: the untrained model's (≈ ln V)."""


def analyse(lrs: list[float], losses: list[float], beta: float) -> CurveStats:
    """Divergence point, steepest-descent LR, min-loss LR and the suggestion, from a sweep's raw losses.

    ``losses`` may be shorter than ``lrs`` (a sweep stops at divergence); the definitions are those of
    the module docstring, applied to exactly the same smoothing the sweep stopped on."""
    sm = Smoother(beta)
    smoothed: list[float] = []
    diverged_step = None
    for i, loss in enumerate(losses):
        s, bad = sm.update(loss)
        smoothed.append(s)
        if bad:
            diverged_step = i
            break
    stable = len(smoothed) if diverged_step is None else diverged_step  # steps 0 … stable-1 are usable
    if stable == 0:
        return CurveStats(True, 0, lrs[0], None, None, None, None, None, None,
                          losses[0] if losses and math.isfinite(losses[0]) else None)
    max_stable = lrs[stable - 1]
    s_ok = smoothed[:stable]
    k_min = min(range(stable), key=lambda i: s_ok[i])
    steepest_lr = steepest_slope = None
    if stable >= 3:
        # Central differences on a uniform log-LR grid (one-sided at the ends), as numpy.gradient does.
        logs = [math.log(x) for x in lrs[:stable]]
        slopes = []
        for i in range(stable):
            a, b = max(0, i - 1), min(stable - 1, i + 1)
            slopes.append((s_ok[b] - s_ok[a]) / (logs[b] - logs[a]))
        k = min(range(stable), key=lambda i: slopes[i])
        if slopes[k] < 0:  # a curve that never falls has no steepest descent
            steepest_lr, steepest_slope = lrs[k], slopes[k]
    return CurveStats(
        diverged=diverged_step is not None,
        diverged_step=diverged_step,
        diverged_lr=lrs[diverged_step] if diverged_step is not None else None,
        max_stable_lr=max_stable,
        steepest_lr=steepest_lr,
        steepest_slope=steepest_slope,
        min_loss_lr=lrs[k_min],
        min_loss=s_ok[k_min],
        suggested_lr=suggest_peak(steepest_lr, max_stable),
        initial_loss=losses[0] if math.isfinite(losses[0]) else None,
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


def plan_probes(curriculum: Curriculum, seq_lens: list[int]) -> list[Probe]:
    """The shape of each probed length: the first stage with that seq_len gives its batch, clip and mix;
    a length no stage has takes the batch that keeps the tokens per step of the stage with the nearest
    length (the shorter one on a tie; rows rounded to the nearest whole number), and that stage's mix and
    clip (its clip rule re-applied to the new length when it has one)."""
    cfg = curriculum.cfg
    max_len = cfg.model.max_seq_len
    too_long = [n for n in seq_lens if n > max_len]
    if too_long:
        raise ConfigError(
            f"--seq-lens: {', '.join(map(str, too_long))} exceeds model.max_seq_len={max_len}; "
            f"drop it or raise the limit with --set model.max_seq_len={max(too_long)}"
        )
    probes = []
    for n in seq_lens:
        exact = [s for s in curriculum.stages if s.seq_len == n]
        if exact:
            s = exact[0]
            probes.append(Probe(n, s.batch_size, s.tokens_per_step, s.grad_clip, s.index, s.name, dict(s.mix)))
            continue
        s = min(curriculum.stages, key=lambda st: (abs(st.seq_len - n), st.seq_len, st.index))
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


RULES = {
    "schedule": "lr_i = min_lr * (max_lr/min_lr)^(i/(K-1)), i = 0..K-1",
    "smoothing": "bias-corrected EMA, beta = 1 - 1/max(2, K/20)",
    "divergence": f"raw loss not finite, or smoothed > m + max({RISE_FLOOR:g}, (first loss - m) / "
                  f"{1 / RISE_FRACTION:g}) with m the min smoothed loss so far",
    "max_stable_lr": "LR of the last step before divergence (max_lr if none)",
    "steepest_lr": "most negative d(smoothed)/d(ln LR) before divergence",
    "min_loss_lr": "LR at the minimum smoothed loss before divergence",
    "suggested_lr": f"min(steepest_lr, max_stable_lr / {STABILITY_MARGIN:g})",
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
    import torch

    from gradus.data import DataPipeline, load_tokenizer
    from gradus.model import GPT, resolve_shape
    from gradus.train.runtime import host_memory_budget, seed_everything, setup_runtime
    from gradus.train.step import build_optimizer, host_micro_batch, optimizer_step

    check_sweep(min_lr, max_lr, steps)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("gradus lr-find runs in one process; start it without torchrun")
    curriculum = Curriculum(cfg)
    probes = plan_probes(curriculum, seq_lens)
    schedule = lr_schedule(min_lr, max_lr, steps)
    beta = smoothing_beta(steps)
    rt = setup_runtime(cfg.train)
    tokenizer = load_tokenizer(cfg.data, run_dir=run_dir)
    shape = resolve_shape(cfg.model, tokenizer.vocab_size)

    curves = []
    for probe in probes:
        t0 = time.perf_counter()
        # The same seed for every length: the same initial weights and the same stream of documents.
        seed_everything(cfg.train.seed)
        model = GPT(shape).to(rt.device)
        model.train()
        optimizer = build_optimizer(model, cfg.optim, rt.device)
        scaler = torch.amp.GradScaler(rt.device.type) if rt.precision == "fp16" else None
        micro = min(probe.batch_size, cfg.train.micro_batch_size or probe.batch_size)
        if rt.device.type == "cpu":  # as the trainer: a CPU that runs out of memory kills the process
            fitted = host_micro_batch(shape, probe.seq_len, micro, rt.precision, host_memory_budget())
            if fitted is None:
                raise GradusError(f"seq_len {probe.seq_len} does not fit in this machine's free memory even at "
                                  f"micro-batch 1; use a smaller model or a shorter length")
            micro = fitted
        s = curriculum.stages[probe.stage_index]
        base = replace(
            curriculum.state_at(s.start_step, s.start_tokens),
            stage_index=probe.stage_index, stage_name=probe.stage_name, seq_len=probe.seq_len,
            batch_size=probe.batch_size, tokens_per_step=probe.tokens_per_step, grad_clip=probe.grad_clip,
            mix=dict(probe.mix), warmup_progress=1.0, done=False, done_reason=None,
        )
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
                    loss, norm, _ = optimizer_step(model, model, optimizer, scaler, torch.from_numpy(batch.inputs),
                                                   torch.from_numpy(batch.labels), lr=lr, clip=probe.grad_clip,
                                                   micro=micro, rt=rt)
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
        del model, optimizer
        if rt.device.type == "cuda":
            torch.cuda.empty_cache()  # the next length starts from the same free memory
        curve = Curve(probe, schedule, losses, smoothed, norms, analyse(schedule, losses, beta),
                      time.perf_counter() - t0)
        curves.append(curve)
        if log is not None:
            log(_progress_line(curve))
    return LRFindResult(curves, min_lr, max_lr, steps, beta, cfg.train.seed, str(rt.device), rt.precision,
                        {"n_layers": shape.n_layers, "d_model": shape.d_model, "n_heads": shape.n_heads,
                         "vocab_size": shape.vocab_size, "params": shape.params_total})


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


def config_with_peaks(raw: dict, curriculum: Curriculum, suggestions: dict[int, float]) -> tuple[dict, list[StageChange]]:
    """A copy of the config mapping ``raw`` (as read from YAML, overrides applied) in which every stage
    whose seq_len has a suggestion gets ``peak_lr`` = that suggestion (3 significant digits), with its
    ``lr_multiplier`` / ``lr_scale`` / ``lr_rule`` removed; other stages are left as they are.

    Works on the raw mapping rather than the validated objects so the copy keeps the file's own form
    (token budgets, defaults left out) and differs from it only in the LRs. ``curriculum`` (built from the
    same mapping) says each stage's resolved seq_len and current peak."""
    import copy

    out = copy.deepcopy(raw)
    stages = out.get("curriculum", {}).get("stages", [])
    if len(stages) != len(curriculum.stages):
        raise GradusError("--write: the config's stages do not match the loaded curriculum; please report this")
    changes = []
    for raw_stage, plan in zip(stages, curriculum.stages, strict=True):
        lr = suggestions.get(plan.seq_len)
        new = round_lr(lr) if lr is not None else None
        if new is not None:
            for key in LR_FORMS:
                raw_stage.pop(key, None)
            raw_stage["peak_lr"] = new
        changes.append(StageChange(plan.index, plan.name, plan.seq_len, plan.peak_lr, plan.lr_source, new))
    return out, changes
