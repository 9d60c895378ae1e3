"""The report's pictures, one PNG each, drawn with matplotlib (the ``plot`` extra) off-screen.

Every chart that has a training axis shades the stages as bands labelled with their name and sequence
length, so where a curve jumps can be read against the stage that caused it.
"""

from __future__ import annotations

from pathlib import Path

from gradus.errors import ConfigError
from gradus.report.history import History, smooth

BAND_COLORS = ("#e8eef7", "#f7f1e3")
"""Alternating stage-band fills (light blue, light sand)."""
TRAIN_COLOR, VAL_COLOR, STAGE_VAL_COLOR = "#1f5fa8", "#d1495b", "#edae49"


def pyplot():
    """matplotlib's pyplot on the off-screen backend; a one-line :class:`ConfigError` (exit 2) when matplotlib is missing
    (it is in the default install; an environment may still lack it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never open a window
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ConfigError(f"gradus report needs matplotlib, part of the default install but missing here ({err}); "
                          f"pip install matplotlib, then run the command again (nothing was written)") from None
    return plt


def _bands(ax, h: History, axis: str, labels: bool = True) -> None:
    """Shade each stage along ``axis`` (tokens, step or seconds) and label it just above the axes."""
    for i, s in enumerate(h.stages):
        lo, hi = {"tokens": (s.start_tokens, s.end_tokens), "step": (s.start_step, s.end_step),
                  "seconds": (s.start_seconds, s.end_seconds)}[axis]
        if hi <= lo:
            continue
        ax.axvspan(lo, hi, color=BAND_COLORS[i % 2], zorder=0, lw=0)
        if labels:
            ax.text((lo + hi) / 2, 1.01, s.label, transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=8, color="#555555")


def _xlabel(axis: str) -> str:
    return {"tokens": "tokens trained", "step": "optimizer step", "seconds": "training time"}[axis]


def _format_axis(ax, axis: str) -> None:
    from matplotlib.ticker import FuncFormatter

    from gradus.units import format_count, format_duration

    if axis == "tokens":
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_count(v) if v else "0"))
    elif axis == "seconds":
        from matplotlib.ticker import MultipleLocator

        # Ticks on round durations (1m, 5m, 1h ...), about six of them, not matplotlib's 200 s.
        span = max(ax.get_xlim()[1], 1.0)
        nice = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400, 172800, 604800)
        ax.xaxis.set_major_locator(MultipleLocator(next((n for n in nice if span / n <= 7), nice[-1])))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_duration(v) if v else "0"))
    ax.set_xlabel(_xlabel(axis))
    ax.grid(True, alpha=0.3)


def _loss_ylim(ax, dense: list[float], every: list[float] = ()) -> None:
    """Clip the y axis to the interesting range: the top 5% of a dense series (the first steps' loss,
    ln V and above) would flatten everything after them. Points in ``every`` (evaluations: few, each
    one meaningful) always stay in view."""
    if len(dense) < 20:
        return
    ordered = sorted(dense)
    lo = min(ordered[0], *every) if every else ordered[0]
    hi = max(ordered[int(0.95 * (len(ordered) - 1))], *every) if every else ordered[int(0.95 * (len(ordered) - 1))]
    pad = 0.08 * (hi - lo or 1)
    ax.set_ylim(lo - pad, hi + pad)


def loss_chart(h: History, out: Path, axis: str, weight: float) -> Path:
    """Train loss (raw, faint; smoothed, bold) and validation loss at the reference length vs ``axis``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=100)
    _bands(ax, h, axis)
    xs, ys = h.series("loss", axis)
    # The mean over each logging window (loss_avg) when the run records it: smoothing one-step losses
    # that are log_every steps apart would need a heavy, lagging average.
    _, avg = h.series("loss_avg", axis)
    base, what = (avg, "window means") if len(avg) == len(ys) and avg else (ys, "logged steps")
    smoothed = smooth(base, weight) if base else []
    if xs:
        ax.plot(xs, ys, color=TRAIN_COLOR, alpha=0.25, lw=0.8, label="train loss (each logged step)")
        ax.plot(xs, smoothed, color=TRAIN_COLOR, lw=2, label=f"train loss ({what}, smoothed {weight:g})")
    vx, vy = h.series("val/loss", axis, h.evals)
    ref = next((r.get("val/seq_len") for r in h.evals if r.get("val/seq_len")), None)
    if vx:
        ax.plot(vx, vy, "o-", color=VAL_COLOR, lw=1.8, ms=4, label=f"validation loss at {ref or 'reference'} tokens")
    _loss_ylim(ax, smoothed, vy)
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(f"Loss vs {_xlabel(axis)}", loc="left", fontsize=11, pad=16)
    _format_axis(ax, axis)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9, bbox_to_anchor=(1, 0.9))
    return _save(fig, out)


def schedule_chart(h: History, out: Path) -> Path:
    """LR, sequence length and batch size per step, three panels sharing the step axis."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(9, 6.4), dpi=100, sharex=True)
    panels = (("lr", "learning rate", "#2e7d32", False),
              ("curriculum/current_seq_len", "sequence length", "#6a1b9a", True),
              ("curriculum/current_batch_size", "batch (sequences / step)", "#ef6c00", True))
    for i, (ax, (key, label, color, steps_)) in enumerate(zip(axes, panels, strict=True)):
        _bands(ax, h, "step", labels=i == 0)
        xs, ys = h.series(key, "step")
        stage_field = {"curriculum/current_seq_len": "seq_len", "curriculum/current_batch_size": "batch_size"}.get(key)
        if stage_field and h.stages and all(getattr(s, stage_field) for s in h.stages):
            # Exact from the stage events: logged steps are log_every apart and would move the switch.
            xs = [x for s in h.stages for x in (s.start_step, s.end_step)]
            ys = [float(getattr(s, stage_field)) for s in h.stages for _ in (0, 1)]
        if xs:
            ax.plot(xs, ys, color=color, lw=1.8, drawstyle="steps-post" if steps_ else "default")
        ax.set_ylabel(label, fontsize=9)
        ax.grid(True, alpha=0.3)
    _mark_decisions(axes[-1], h, "step")
    from matplotlib.ticker import FuncFormatter

    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.1e}"))  # no offset text over the labels
    axes[0].set_title("Schedule per step: learning rate, sequence length, batch size", loc="left", fontsize=11, pad=16)
    axes[-1].set_xlabel(_xlabel("step"))
    return _save(fig, out)


def throughput_chart(rows: list[dict], out: Path) -> Path:
    """Median tokens/s of each stage as bars labelled with the stage's shape."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    labels = [f"{r['name']}\n{r['seq_len']} × {r['batch_size']}" for r in rows]
    values = [r["tokens_per_sec"] or 0 for r in rows]
    bars = ax.bar(range(len(rows)), values, color="#1f5fa8", width=0.6)
    for b, v in zip(bars, values, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{v:,.0f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(rows)), labels, fontsize=9)
    ax.set_ylabel("tokens / s (median)")
    ax.set_ylim(0, max(values or [1]) * 1.18)
    ax.set_title("Throughput per stage (stage name, seq_len × batch)", loc="left", fontsize=11, pad=16)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, out)


def lengths_chart(h: History, out: Path) -> Path:
    """Validation loss at each stage's own length vs at the fixed reference length, over tokens."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=100)
    _bands(ax, h, "tokens")
    rx, ry = h.series("val/loss", "tokens", h.evals)
    sx, sy = h.series("val/stage_loss", "tokens", h.evals)
    ref = next((r.get("val/seq_len") for r in h.evals if r.get("val/seq_len")), "reference")
    ax.plot(rx, ry, "o-", color=VAL_COLOR, lw=1.8, ms=4, label=f"at the reference length ({ref})")
    ax.plot(sx, sy, "s--", color=STAGE_VAL_COLOR, lw=1.6, ms=4, label="at the stage's own length")
    for r in h.evals:
        if r.get("val/stage_seq_len") and isinstance(r.get("val/stage_loss"), (int, float)):
            ax.annotate(str(r["val/stage_seq_len"]), (r["tokens"], r["val/stage_loss"]), textcoords="offset points",
                        xytext=(0, -12), ha="center", fontsize=7, color="#8a6d1f")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation at the stage's length vs the reference length", loc="left", fontsize=11, pad=16)
    _format_axis(ax, "tokens")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9, bbox_to_anchor=(1, 0.9))
    return _save(fig, out)


def sources_chart(h: History, out: Path) -> Path:
    """Validation loss of each source over tokens (only when the records hold per-source losses)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=100)
    _bands(ax, h, "tokens")
    for name in h.source_names():
        xs, ys = h.series(h.source_key(name), "tokens", h.evals)
        ax.plot(xs, ys, "o-", lw=1.6, ms=3, label=name)
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss per source", loc="left", fontsize=11, pad=16)
    _format_axis(ax, "tokens")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9, bbox_to_anchor=(1, 0.9))
    return _save(fig, out)


def noise_scale_chart(h: History, out: Path) -> Path:
    """The gradient noise scale B_simple against tokens, beside the tokens per step the run took (both in
    tokens, log scale): where B_simple sits above the batch, a larger batch would have cost fewer steps."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=100)
    _bands(ax, h, "tokens")
    xs, ys = h.series("gns/b_simple", "tokens")
    bx, by = h.series("curriculum/tokens_per_step", "tokens")
    ax.plot(xs, ys, "o-", color="#6a1b9a", lw=1.6, ms=3, label="gradient noise scale B_simple (tokens, smoothed)")
    if bx:
        ax.plot(bx, by, color="#ef6c00", lw=1.8, drawstyle="steps-post", label="tokens per step")
    tx, ty = h.series("adaptive/batch_threshold", "tokens")
    if tx:  # an adaptive run: where the noise scale must stay (patience checks) for a doubling to be proposed
        ax.plot(tx, ty, color="#ef6c00", lw=1.2, ls="--", drawstyle="steps-post",
                label="adaptive batch threshold (rho × tokens per step)")
    ax.set_yscale("log")
    _mark_decisions(ax, h, "tokens")
    ax.set_ylabel("tokens")
    ax.set_title("Gradient noise scale vs the batch (above it: a larger batch would pay)", loc="left", fontsize=11,
                 pad=16)
    _format_axis(ax, "tokens")
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)  # (the top holds the decisions' labels)
    return _save(fig, out)


def _mark_decisions(ax, h: History, axis: str) -> None:
    """An adaptive run's decisions where they happened: a solid line for each accepted one (labelled with what
    it changed), a dotted grey one for each rejected verification."""
    key = "tokens" if axis == "tokens" else "step"
    for d in h.decisions():
        if d.get("verdict") not in ("accepted", "rejected") or key not in d:
            continue
        accepted = d["verdict"] == "accepted"
        ax.axvline(d[key], color="#c62828" if accepted else "#9e9e9e", lw=1.2 if accepted else 1.0,
                   ls="-" if accepted else ":", zorder=1)
        proposal = d.get("proposal") or {}
        label = (f"batch → {proposal.get('tokens_per_step', 0):,}" if d.get("kind") == "batch"
                 else f"length → {proposal.get('seq_len')}")
        ax.annotate(label if accepted else f"({label} rejected)", (d[key], 1), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", fontsize=7, rotation=90, va="top",
                    color="#c62828" if accepted else "#757575")


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out
