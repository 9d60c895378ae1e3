"""What a run prints: the progress line, the stage banner, an adaptive decision, the run's summary before
it trains, a saved checkpoint, and :class:`Console`, which prints them above an optional progress bar.

Torch-free (``gradus report`` words a decision as the console did, :func:`decision_line`); the records
these lines are read from are built in :mod:`gradus.train.metrics`.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradus.curriculum import Schedule, StagePlan, StageState
    from gradus.sizes import ModelShape
    from gradus.train.runtime import Runtime


def console_line(step: int, loss: float, tokens_per_sec: float, lr: float, stage: int, num_stages: int,
                 tokens: int, target: int | None, timing: str = "") -> str:
    """The plans' progress line, e.g.
    ``Step 1000: Loss=4.5421, PPL=93.84, Tokens/sec=85432, LR=6.00e-04 | Stage 3/10 (30,000,000/1,000,000,000 tokens, 3.0%)``.
    ``loss`` is the logging window's mean (one step's loss is too noisy to read); ``timing`` (elapsed and
    ETA, :func:`elapsed_eta`) is appended after `` | `` when given."""
    ppl = math.exp(loss) if loss < 50 else float("inf")
    tail = f"{tokens:,}"
    if target:
        tail += f"/{target:,} tokens, {100.0 * tokens / target:.1f}%"
    else:
        tail += " tokens"
    return (
        f"Step {step}: Loss={loss:.4f}, PPL={ppl:.2f}, Tokens/sec={tokens_per_sec:.0f}, LR={lr:.2e} "
        f"| Stage {stage + 1}/{num_stages} ({tail})" + (f" | {timing}" if timing else "")
    )


def progress_line(record: dict[str, Any], num_stages: int, target: int | None, timing: str = "") -> str:
    """:func:`console_line` for a :func:`step_record`: the loss shown is the window's mean (``loss_avg``;
    the step's own loss when no step of the window had a finite one)."""
    mean = record["loss_avg"] if math.isfinite(record["loss_avg"]) else record["loss"]
    return console_line(record["step"], mean, record["tokens_per_sec"], record["lr"], record["curriculum/stage"],
                        num_stages, record["tokens"], target, timing)


def clock(seconds: float) -> str:
    """``seconds`` as ``H:MM:SS`` (``M:SS`` under an hour)."""
    s = max(0, int(round(seconds)))
    h, m, sec = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def elapsed_eta(elapsed: float, tokens_done: int, tokens_start: int, total_tokens: int | None) -> str:
    """``elapsed 1:05, ETA 12:40``: wall-clock seconds since this process started training, and the time
    left at this session's pace (tokens since ``tokens_start`` over ``elapsed``, so a resumed run does not
    count the tokens it inherited); ``ETA ?`` until there is a pace or when the total is unknown."""
    text = f"elapsed {clock(elapsed)}"
    done = tokens_done - tokens_start
    if total_tokens and done > 0 and elapsed > 0:
        return text + f", ETA {clock(max(0, total_tokens - tokens_done) * elapsed / done)}"
    return text + ", ETA ?"


def warmup_text(stage: StagePlan, schedule: Schedule) -> str:
    """The banner's warmup as the LR really does it: a global schedule warms up once, over its first
    ``global_warmup_steps`` (shown on the first stage; later stages show ``no warmup (global schedule)``),
    while a per-stage schedule ramps each stage over its own ``warmup_steps``."""
    if schedule.is_global:
        warm = schedule.global_warmup_steps
        curve = "global schedule" if schedule.mode == "global" else f"{schedule.mode} schedule"
        parts = []
        if stage.index == 0 and warm:
            parts.append(f"warmup {warm:,} steps (once, {curve})")
        elif stage.start_step < warm:
            parts.append(f"the {curve}'s warmup goes on to step {warm:,}")
        if stage.index > 0 and stage.warmup_steps:
            parts.append(f"re-warmup {stage.warmup_steps:,} steps")
        return ", ".join(parts) or f"no warmup ({curve})"
    if stage.warmup_steps:
        return f"warmup {stage.warmup_steps:,} steps (this stage)"
    return "no warmup"


def stage_banner(state: StageState, stage: StagePlan, num_stages: int, schedule: Schedule | None = None) -> str:
    """The console line announcing a stage: its shape, tokens per step, LR, warmup (as :func:`warmup_text`
    says when ``schedule`` is given), clip and mix."""
    mix = ", ".join(f"{k} {v:.2f}" for k, v in stage.mix.items() if v > 0)
    warmup = warmup_text(stage, schedule) if schedule is not None else f"warmup {stage.warmup_steps}"
    return (
        f"== Stage {stage.index + 1}/{num_stages} ({stage.name}) from step {state.step:,}: "
        f"seq_len {stage.seq_len}, batch {stage.batch_size}, {stage.tokens_per_step:,} tokens/step, "
        f"peak LR {stage.peak_lr:.2e}, {warmup}, clip {stage.grad_clip:g}, mix {mix}"
    )


def decision_line(record: dict[str, Any]) -> str:
    """The console line of an adaptive decision (:mod:`gradus.train.controller`): where, what, why, the verdict."""
    kind, verdict, sig = record["kind"], record["verdict"], record.get("signal") or {}
    where = f"adaptive: step {record['step']:,} ({record['tokens']:,} tokens): "
    if kind == "batch":
        what = (f"batch {sig.get('tokens_per_step', 0):,} → {2 * sig.get('tokens_per_step', 0):,} tokens/step "
                f"(B_simple {sig.get('b_simple', math.nan):,.0f} > {sig.get('rho', math.nan):g} × batch for "
                f"{sig.get('checks', 0)} checks)")
    else:
        ratio = sig.get("ratio", math.nan)
        what = (f"length → {(record.get('proposal') or {}).get('seq_len')} (gain per compute doubling "
                f"{ratio:.2f} of the stage's first, at most {sig.get('ratio_upper', ratio):.2f} within its noise, "
                f"for {sig.get('evaluations', 0)} evaluations)")
    tail = f": {verdict}"
    comparison = record.get("comparison") or {}
    if "branch_loss" in comparison:
        which = (f"held-out loss at {comparison['held_out_seq_len']}" if comparison.get("held_out_seq_len")
                 else "branch loss")
        tail += (f" ({which} {comparison['branch_loss']:.4f} vs main {comparison['main_loss']:.4f} "
                 f"± {comparison['margin']:.4f}, {comparison['branch_tokens']:,} branch tokens)")
    if record.get("reason"):
        tail += f" ({record['reason']})"
    if verdict == "accepted" and kind == "batch":
        tail += f"; LR × {(record.get('proposal') or {}).get('lr_factor', 1):.3g}"
    return where + what + tail


def run_summary(shape: ModelShape, rt: Runtime, compiled: bool, schedule: Schedule,
                micro_batches: dict[int, int], unsplit: dict[int, int] | None = None,
                every: int = 1) -> list[str]:
    """The console lines that describe a run before it trains: the model, where it runs, each stage's
    micro-batch and accumulation (with ``unsplit``, the micro-batches of the steps that do not measure the
    noise scale, one in ``every`` measuring), and the curriculum's length."""
    parts = []
    for s in schedule.stages:
        local, micro = s.batch_size // rt.world_size, micro_batches[s.index]
        part = f"{s.seq_len}×{local}→{micro}×{math.ceil(local / micro)}"
        if unsplit is not None and unsplit[s.index] != micro:
            part += f" (else {unsplit[s.index]}×{math.ceil(local / unsplit[s.index])})"
        parts.append(part)
    target = schedule.target_tokens
    head = "micro-batches per stage (seq_len×local batch→micro×accumulation"
    if unsplit is not None:
        head += f"; split for the noise scale on 1 step in {every}, else as in brackets"
    return [
        f"model: {shape.params_total / 1e6:.2f}M parameters ({shape.params_non_embedding / 1e6:.2f}M non-embedding), "
        f"{shape.n_layers} layers × {shape.d_model} wide, vocab {shape.vocab_size}; "
        f"device {rt.device}, {rt.precision}, world size {rt.world_size}" + (", torch.compile" if compiled else ""),
        f"{head}): " + ", ".join(parts),
        f"curriculum: {len(schedule.stages)} stage{'s' if len(schedule.stages) != 1 else ''}, "
        f"{schedule.total_steps:,} steps, "
        f"{schedule.total_tokens:,} tokens" + (f" (target {target:,})" if target else ""),
    ]


class Console:
    """Console output that cooperates with an optional tqdm progress bar (stderr, TTY only). Without a
    bar (output to a file or a pipe, or the bar turned off) :meth:`timing` gives every progress line the
    elapsed time and an ETA instead, since nothing else shows them."""

    def __init__(self, *, enabled: bool, progress_bar: bool, total_tokens: int | None):
        self.enabled = enabled
        self.bar = None
        self.total_tokens = total_tokens
        self.started = time.perf_counter()
        self.tokens_start: int | None = None  # tokens done before this session (a resumed run's)
        if enabled and progress_bar and total_tokens and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_tokens, unit="tok", unit_scale=True, dynamic_ncols=True, leave=False)

    def print(self, text: str) -> None:
        """A line above the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def advance(self, tokens: int, tokens_done: int | None = None) -> None:
        """Move the bar; ``tokens_done`` (given once, before the first step) is where this session starts."""
        if tokens_done is not None and self.tokens_start is None:
            self.tokens_start = tokens_done
        if self.bar is not None:
            if tokens_done is not None and self.bar.n == 0 and tokens_done:
                self.bar.update(tokens_done)
            self.bar.update(tokens)

    def timing(self, tokens_done: int) -> str:
        """Elapsed time and ETA for a progress line (:func:`elapsed_eta`); empty when the bar shows them."""
        if self.bar is not None:
            return ""
        return elapsed_eta(time.perf_counter() - self.started, tokens_done, self.tokens_start or 0,
                           self.total_tokens)

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def checkpoint_line(path: Path, step: int, tokens: int, seconds: float) -> str:
    """The console line announcing a saved checkpoint."""
    return f"checkpoint: saved {path.name} (step {step:,}, {tokens:,} tokens) in {seconds:.1f}s -> {path}"
