"""PNG of validation curves against tokens and against training time, stage switches marked.

matplotlib is optional (``pip install matplotlib``): :func:`plot_curves` raises ImportError without it and
the commands then say so instead of writing the PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gradus.experiments.analysis import calibrated_seconds, seconds_at

AXES = {
    "tokens": "training tokens (M)",
    "seconds": "measured training seconds (evaluation excluded)",
    "calibrated": "calibrated training seconds (each shape's seconds per token × tokens)",
}


def _xs(curve: dict, axis: str, stages: Sequence[dict], cost: dict) -> list[float]:
    if axis == "tokens":
        return [x / 1e6 for x in curve["tokens"]]
    if axis == "seconds":
        return list(curve["seconds"])
    return [calibrated_seconds(stages, cost, x) for x in curve["tokens"]]


def _switch_x(curve: dict, axis: str, stages: Sequence[dict], cost: dict, tokens: float) -> float | None:
    if axis == "tokens":
        return tokens / 1e6
    if axis == "seconds":
        return seconds_at(curve, tokens)
    return calibrated_seconds(stages, cost, tokens)


def draw(ax, records: Sequence[dict], axis: str, color: dict[str, str], *, target: float | None = None,
         cost: dict | None = None, ylabel: str = "validation loss", label_of=None) -> None:
    """One panel: each record's median curve (seeds faint), its stage switches dotted, the target dashed."""
    cost = cost or {}
    for r in records:
        c = r["curve"]
        ys = [y if y is not None else float("nan") for y in c["val_loss"]]
        label = label_of(r) if label_of else r["name"]
        ax.plot(_xs(c, axis, r["stages"], cost), ys, "-o", ms=3, color=color[r["name"]], label=label)
        for sc in r.get("seed_curves", []) if len(r.get("seed_curves", [])) > 1 else []:
            sy = [y if y is not None else float("nan") for y in sc["val_loss"]]
            ax.plot(_xs(sc, axis, r["stages"], cost), sy, "-", lw=0.6, alpha=0.35, color=color[r["name"]])
        for st in r["stages"][1:]:
            x = _switch_x(c, axis, r["stages"], cost, st["start_tokens"])
            if x is not None:
                ax.axvline(x, ls=":", lw=0.9, color=color[r["name"]], alpha=0.8)
    finals = [y for r in records for c in [r["curve"], *r.get("seed_curves", [])] for y in c["val_loss"]
              if y is not None]
    if target is not None:
        ax.axhline(target, ls="--", lw=0.8, color="black", label=f"target {target:.3f}")
    if finals:
        lo, hi = min(finals), max(finals)
        top = (target if target is not None else min(r["curve"]["val_loss"][-1] or hi for r in records)) + 1.2
        ax.set_ylim(lo - 0.05 * (hi - lo) - 0.05, min(hi, top) + 0.05)
    ax.set_xlabel(AXES[axis])
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_curves(records: Sequence[dict], path: str | Path, title: str, *, target: float | None = None,
                cost: dict | None = None, ylabel: str = "validation loss", calibrated: bool = False,
                label_of=None) -> Path:
    """Validation loss against tokens and against measured (and, with ``calibrated``, calibrated) training
    seconds, one panel each; the dotted lines are each arm's stage switches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = ["tokens", "seconds"] + (["calibrated"] if calibrated else [])
    fig, axes = plt.subplots(1, len(axes_names), figsize=(6.5 * len(axes_names), 4.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {r["name"]: colors[i % len(colors)] for i, r in enumerate(records)}
    for ax, axis in zip(axes[0], axes_names, strict=True):
        draw(ax, records, axis, color, target=target, cost=cost, ylabel=ylabel, label_of=label_of)
    several = any(len(r.get("seed_curves", [])) > 1 for r in records)
    fig.suptitle(title + "\ndotted: each arm's stage switches" + ("; faint: single seeds" if several else ""),
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
