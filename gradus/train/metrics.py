"""Metrics: ``metrics.jsonl`` always, TensorBoard events when tensorboard is installed, console lines.

Keys follow DESIGN.md: ``step``, ``tokens``, ``loss``, ``lr``, ``grad_norm``, ``tokens_per_sec``,
``curriculum/current_seq_len``, ``curriculum/current_batch_size``, ``curriculum/examples_per_step``,
``curriculum/tokens_per_step``, ``curriculum/stage`` ... and ``val/...`` for evaluations.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


def console_line(step: int, loss: float, tokens_per_sec: float, lr: float, stage: int, num_stages: int,
                 tokens: int, target: int | None) -> str:
    """The plans' progress line, e.g.
    ``Step 1000: Loss=4.5421, PPL=93.84, Tokens/sec=85432, LR=6.00e-04 | Stage 3/10 (30,000,000/1,000,000,000 tokens, 3.0%)``."""
    ppl = math.exp(loss) if loss < 50 else float("inf")
    tail = f"{tokens:,}"
    if target:
        tail += f"/{target:,} tokens, {100.0 * tokens / target:.1f}%"
    else:
        tail += " tokens"
    return (
        f"Step {step}: Loss={loss:.4f}, PPL={ppl:.2f}, Tokens/sec={tokens_per_sec:.0f}, LR={lr:.2e} "
        f"| Stage {stage + 1}/{num_stages} ({tail})"
    )


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and mirrors scalars to TensorBoard. Only rank 0 writes."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        self.tensorboard_error: str | None = None
        if not enabled:
            return
        self._file = open(self.path, "a", encoding="utf-8")  # append: a resumed run keeps what was written
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception as exc:  # tensorboard not installed: jsonl is enough
                self.tensorboard_error = f"{type(exc).__name__}: {exc}"
            else:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        """One record: a JSON line, and every numeric value as a TensorBoard scalar at ``record['step']``."""
        if not self.enabled or self._file is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean, sort_keys=False) + "\n")
        self._file.flush()
        if self._tb is not None and "step" in record:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    if math.isfinite(value):
                        self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close files."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (for tests and benchmarks)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def losses_by_step(path: str | Path) -> dict[int, float]:
    """Training loss per step from a metrics.jsonl; after a resume the later record of a step wins."""
    out: dict[int, float] = {}
    for rec in read_metrics(path):
        if "loss" in rec and rec.get("event") is None and "step" in rec:
            out[int(rec["step"])] = rec["loss"]
    return out


class Console:
    """Console output that cooperates with an optional tqdm progress bar (stderr, TTY only)."""

    def __init__(self, *, enabled: bool, progress_bar: bool, total_tokens: int | None):
        self.enabled = enabled
        self.bar = None
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
        """Move the bar."""
        if self.bar is not None:
            if tokens_done is not None and self.bar.n == 0 and tokens_done:
                self.bar.update(tokens_done)
            self.bar.update(tokens)

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
