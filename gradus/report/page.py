"""``gradus report``: PNGs and one self-contained HTML page (pictures inlined as base64) describing a run.

The page reads top to bottom as the run went: a summary (what was trained, how long, the final losses),
the stage table, then the pictures, each with a sentence saying what to look for.
"""

from __future__ import annotations

import base64
import html
import math
import shutil
from pathlib import Path
from typing import Any

from gradus.errors import ConfigError
from gradus.report import plots
from gradus.report.history import History, read_history, smooth, stage_summary
from gradus.train.storage.run_dir import RunDir

CHARTS = (
    ("loss_tokens.png", "Loss vs tokens",
     "Training loss (faint: each logged step; bold: the mean over each logging window, smoothed) and validation loss at the fixed reference "
     "length, against tokens trained. Shaded bands are the curriculum's stages; a jump at a band edge is "
     "the new sequence length or mix, not a fault."),
    ("loss_time.png", "Loss vs time",
     "The same curves against training time as the trainer counts it: a stage's width here is what it "
     "cost, so a stage that trains slowly looks wider here than above."),
    ("schedule.png", "Schedule",
     "Learning rate, sequence length and batch size at every logged step."),
    ("throughput.png", "Throughput per stage",
     "Median tokens per second in each stage (the median ignores each stage's first, slower steps)."),
    ("val_lengths.png", "Validation at stage length vs reference length",
     "At its own length each stage is scored on contexts like the ones it trains on; at the reference "
     "length the model must also handle positions it has not trained on yet. The gap is that cost; it "
     "closes once a stage reaches the reference length."),
    ("val_sources.png", "Validation per source",
     "Validation loss on each source's held-out documents."),
    ("noise_scale.png", "Gradient noise scale",
     "B_simple = tr(Σ)/|G|², measured each step from the micro-batches' and the whole step's gradients and "
     "smoothed (restarting at each stage), in tokens beside the tokens per step: where it sits above the "
     "batch, a larger batch would have reached the same loss in fewer steps (McCandlish et al. 2018). Drawn "
     "for runs with two or more micro-batches per step or two or more processes."),
)


def _num(value: Any, digits: int = 4) -> str:
    if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}" if isinstance(value, float) and not float(value).is_integer() else f"{value:,.0f}"


def write_pngs(h: History, out: Path, weight: float) -> list[Path]:
    """Draw every chart the history has data for into ``out``; returns the files written."""
    rows = stage_summary(h)
    written = [plots.loss_chart(h, out / "loss_tokens.png", "tokens", weight)]
    if any("time/train_seconds" in r for r in h.steps):
        written.append(plots.loss_chart(h, out / "loss_time.png", "seconds", weight))
    written.append(plots.schedule_chart(h, out / "schedule.png"))
    if any(r["tokens_per_sec"] for r in rows):
        written.append(plots.throughput_chart(rows, out / "throughput.png"))
    if any("val/stage_loss" in r for r in h.evals):
        written.append(plots.lengths_chart(h, out / "val_lengths.png"))
    if h.source_names():
        written.append(plots.sources_chart(h, out / "val_sources.png"))
    if any("gns/b_simple" in r for r in h.steps):
        written.append(plots.noise_scale_chart(h, out / "noise_scale.png"))
    return written


def summary(h: History, weight: float) -> dict[str, Any]:
    """The numbers the page opens with."""
    from gradus.units import format_count, format_duration

    last = h.steps[-1] if h.steps else {}
    _, losses = h.series("loss_avg") if any("loss_avg" in r for r in h.steps) else h.series("loss")
    evals = [r for r in h.evals if isinstance(r.get("val/loss"), (int, float))]
    best = min(evals, key=lambda r: r["val/loss"]) if evals else None
    seconds = last.get("time/train_seconds")
    planned = _planned_tokens(h.run_dir)
    tokens = format_count(last.get("tokens", 0))
    if planned:
        tokens += f" of {format_count(planned)} planned ({100 * last.get('tokens', 0) / planned:.0f}%)"
    return {
        "steps": f"{last.get('step', 0):,}",
        "tokens": tokens,
        "training time": format_duration(seconds) if isinstance(seconds, (int, float)) else "–",
        "stages": str(len(h.stages)),
        "final train loss (smoothed)": _num(smooth(losses, weight)[-1]) if losses else "–",
        "final validation loss": (f"{_num(evals[-1]['val/loss'])} at {evals[-1].get('val/seq_len', '?')} tokens "
                                  f"(step {evals[-1]['step']:,})") if evals else "none recorded",
        "best validation loss": f"{_num(best['val/loss'])} at step {best['step']:,}" if best else "–",
        **_adaptive_summary(h),
    }


def _adaptive_summary(h: History) -> dict[str, str]:
    """An adaptive run's decisions in one line: what was accepted where, how many rejected, the branch tokens."""
    from gradus.units import format_count

    decisions = h.decisions()
    if not decisions:
        return {}
    accepted = [d for d in decisions if d.get("verdict") == "accepted"]
    rejected = sum(d.get("verdict") == "rejected" for d in decisions)
    said = [(f"batch → {(d.get('proposal') or {}).get('tokens_per_step', 0):,} tokens/step" if d["kind"] == "batch"
             else f"length → {(d.get('proposal') or {}).get('seq_len')}") + f" at {format_count(d['tokens'])} tokens"
            for d in accepted]
    branch = max((d.get("branch_tokens_total", 0) for d in decisions), default=0)
    return {"adaptive decisions": f"{len(accepted)} accepted ({'; '.join(said) or 'none'}), {rejected} rejected by "
                                  f"their branch test; {format_count(branch)} tokens trained in branches"}


def _planned_tokens(run_dir: Path) -> int | None:
    """The curriculum's total tokens from the run's config.yaml (None when it cannot be read)."""
    try:
        from gradus.config import load_config
        from gradus.curriculum import resolve_schedule

        return int(sum(s.tokens for s in resolve_schedule(load_config(RunDir(run_dir).config)).stages))
    except Exception:  # noqa: BLE001 - only a nicety on the page
        return None


def render_html(h: History, pngs: list[Path], weight: float) -> str:
    """The self-contained page."""
    from gradus.units import format_count, format_duration

    esc = html.escape
    facts = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in summary(h, weight).items())
    rows = stage_summary(h)
    stage_rows = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in (
            r["stage"] + 1, esc(r["name"]), _num(r["seq_len"]), _num(r["batch_size"]), f"{r['steps']:,}",
            format_count(r["tokens"]), format_duration(r["seconds"]) if r["seconds"] else "–",
            _num(r["tokens_per_sec"], 0), _num(r["train_loss"]), _num(r["val_stage_loss"]), _num(r["val_loss"]),
        )) + "</tr>"
        for r in rows
    )
    have = {p.name: p for p in pngs}
    figures = []
    for name, title, caption in CHARTS:
        if name not in have:
            if name == "val_sources.png":
                figures.append(f"<h2>{esc(title)}</h2><p class=note>No per-source validation losses in "
                               f"metrics.jsonl for this run.</p>")
            continue
        data = base64.b64encode(have[name].read_bytes()).decode("ascii")
        figures.append(f"<h2>{esc(title)}</h2><p>{esc(caption)}</p>"
                       f"<img alt=\"{esc(title)}\" src=\"data:image/png;base64,{data}\">")
    others = [e for e in h.events if e.get("event") != "stage"]
    event_list = "".join(f"<li>{esc(_event_text(e))}</li>" for e in others[:50])
    events_html = f"<h2>Events</h2><ul>{event_list}</ul>" if event_list else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gradus report — {esc(h.name)}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 960px; margin: 2em auto; color: #222; padding: 0 1em; }}
h1 {{ margin-bottom: .2em; }} h2 {{ margin-top: 1.6em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: .6em 0; }} th, td {{ padding: .25em .7em; text-align: right; }}
table.facts th {{ text-align: left; font-weight: 600; }} table.facts td {{ text-align: left; }}
table.stages tr:nth-child(even) {{ background: #f4f6fa; }} table.stages th {{ border-bottom: 1px solid #999; }}
img {{ max-width: 100%; border: 1px solid #eee; }} .note, .src {{ color: #666; }}
</style></head><body>
<h1>gradus report — {esc(h.name)}</h1>
<p class=src>{esc(str(h.run_dir))}</p>
<table class=facts>{facts}</table>
<h2>Stages</h2>
<table class=stages><tr><th>#</th><th>name</th><th>seq_len</th><th>batch</th><th>steps</th><th>tokens</th>
<th>time</th><th>tokens/s</th><th>train loss</th><th>val @ stage len</th><th>val @ ref len</th></tr>
{stage_rows}</table>
<p class=note>Train loss: the last logged value in the stage (the mean over its logging window when recorded). Validation: the last evaluation inside the stage,
at the stage's own sequence length and at the fixed reference length.</p>
{''.join(figures)}
{events_html}
</body></html>
"""


def _event_text(e: dict[str, Any]) -> str:
    """One event of the page's list: an adaptive decision as the console said it, others by kind."""
    if e.get("event") == "adaptive":
        from gradus.train.console import decision_line  # torch-free: the console's own wording

        return decision_line(e)
    return (f"step {e.get('step', '?')}: {e.get('event')}"
            + (f" — {e.get('checkpoint')}" if e.get("checkpoint") else ""))


def write_report(run_dir: str | Path, out: str | Path | None = None, weight: float = 0.6) -> Path:
    """Write the PNGs and ``report.html`` into ``out`` (default ``RUN/report``); returns the page's path."""
    h = read_history(run_dir)
    smooth([], weight)  # validates the weight before anything is written
    plots.pyplot()  # matplotlib missing: one line saying how to get it, before any folder exists
    target = Path(out) if out else Path(run_dir) / "report"
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        where = f"--out {target}" if out else str(target)
        raise ConfigError(f"{where}: cannot make the folder ({err.strerror}); give a folder to write into") from None
    try:
        pngs = write_pngs(h, target, weight)
        page = target / "report.html"
        page.write_text(render_html(h, pngs, weight), encoding="utf-8")
    except BaseException:
        if created:  # a folder this call made holds only what the failure left: no empty or half report
            shutil.rmtree(target, ignore_errors=True)
        raise
    return page
