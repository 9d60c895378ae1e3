"""Where metrics go besides ``metrics.jsonl``: TensorBoard (said in one line when it is missing, never
silently dropped) and Weights & Biases (``logging.wandb``).

:func:`open_metrics` wraps the :class:`~gradus.train.metrics.MetricsWriter` in a :class:`Tracked` writer
that mirrors every step and evaluation record to a W&B run, and collects the lines the trainer prints
before training (:attr:`Tracked.notes`). Only rank 0 logs.
"""

from __future__ import annotations

import math
import secrets
from pathlib import Path
from typing import Any

from gradus.config import GradusConfig, WandbConfig
from gradus.errors import ConfigError
from gradus.train.metrics import MetricsWriter
from gradus.train.storage.run_dir import WANDB_ID, RunDir

WANDB_ID_FILE = WANDB_ID
"""The W&B run id's file name in the run directory (:attr:`RunDir.wandb_id`)."""


def tensorboard_note(writer: MetricsWriter, wanted: bool) -> str | None:
    """One line when TensorBoard was wanted (``logging.tensorboard``) but could not be imported."""
    if not wanted or writer.tensorboard_error is None or not writer.enabled:
        return None
    return (f"tensorboard: not written ({writer.tensorboard_error}); metrics.jsonl only. "
            "`pip install tensorboard` for TensorBoard logs, or set logging.tensorboard: false to silence this")


LOGIN_HINT = ("log in first (`wandb login`, or set WANDB_API_KEY), or use logging.wandb.mode: offline and "
              "`wandb sync` later")
"""What to do when W&B in mode online has no login (said whether gradus or wandb found it out)."""


def _check_login(wandb: Any, cfg: WandbConfig) -> None:
    """In mode online, a missing API key is a one-line ConfigError before the run starts. ``wandb.init`` would
    otherwise ask for one at a terminal (a Ctrl-C there stopped the start) or spend a minute and a half on
    network retries. Only wandb versions whose ``login`` takes ``prompt`` can be asked without prompting;
    with older ones, ``init``'s own failure is reported as before."""
    import inspect

    if cfg.mode != "online":
        return
    try:
        can_ask = "prompt" in inspect.signature(wandb.login).parameters
    except (AttributeError, TypeError, ValueError):
        return
    if can_ask and not wandb.login(prompt=False):
        raise ConfigError(f"logging.wandb: mode online needs a W&B login and none is configured; {LOGIN_HINT}")


def wandb_run(cfg: WandbConfig, full: GradusConfig, run_dir: Path) -> Any:
    """Start (or, for a resumed run, continue) the W&B run ``cfg`` describes; None in ``disabled`` mode.
    A missing ``wandb`` package is a one-line :class:`~gradus.errors.ConfigError`."""
    if cfg.mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        raise ConfigError(f"logging.wandb (mode {cfg.mode}) needs the wandb package: `pip install wandb`, "
                          "or remove logging.wandb / set logging.wandb.mode: disabled") from None
    _check_login(wandb, cfg)
    id_file = RunDir.of(run_dir).wandb_id
    run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else None
    if not run_id:
        run_id = secrets.token_hex(4)  # W&B ids: lowercase letters and digits
        id_file.write_text(run_id + "\n", encoding="utf-8")
    try:
        return wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or full.name or run_dir.name,
                          group=cfg.group, tags=list(cfg.tags) or None, mode=cfg.mode, dir=str(run_dir), id=run_id,
                          resume="allow", config=full.model_dump(mode="json"))
    except Exception as exc:  # noqa: BLE001 - wandb raises its own errors (no login, no network) as tracebacks
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = LOGIN_HINT if cfg.mode == "online" else "check logging.wandb, or set mode: disabled"
        raise ConfigError(f"logging.wandb: W&B could not start in mode {cfg.mode} ({why}); {hint}") from None


def wandb_scalars(record: dict[str, Any]) -> dict[str, float] | None:
    """The finite numbers of a step or evaluation record, for W&B; None for event records (stage,
    guard, resume), which are not time series."""
    if record.get("event") is not None or "step" not in record:
        return None
    return {k: v for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


class Tracked:
    """A :class:`~gradus.train.metrics.MetricsWriter` that also logs to W&B. Everything else (``path``,
    ``enabled`` ...) is the writer's."""

    def __init__(self, writer: MetricsWriter, wandb: Any = None, notes: list[str] | None = None):
        self.writer = writer
        self.wandb = wandb
        self.notes = notes or []
        """Lines for the console before training: a missing TensorBoard, where W&B writes."""

    def write(self, record: dict[str, Any]) -> None:
        """Write ``record`` to metrics.jsonl (and TensorBoard); its numbers to W&B at ``record['step']``."""
        self.writer.write(record)
        scalars = wandb_scalars(record) if self.wandb is not None else None
        if scalars:
            self.wandb.log(scalars, step=int(record["step"]))

    def close(self) -> None:
        """Close the writer and finish the W&B run."""
        self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


def open_metrics(cfg: GradusConfig, run_dir: Path | RunDir, is_main: bool, resume_step: int | None = None) -> Tracked:
    """The run's metrics writer: metrics.jsonl, TensorBoard when installed, W&B when configured (rank 0).

    ``resume_step`` is passed to :class:`MetricsWriter`: records after it are dropped (they are redone)."""
    folder = RunDir.of(run_dir)
    writer = MetricsWriter(folder, tensorboard=cfg.logging.tensorboard, enabled=is_main, resume_step=resume_step)
    notes = [n for n in [tensorboard_note(writer, cfg.logging.tensorboard)] if n]
    run = None
    if is_main and cfg.logging.wandb is not None:
        try:
            run = wandb_run(cfg.logging.wandb, cfg, folder.path)
        except BaseException:
            writer.close()
            raise
        if run is not None:
            where = (f"offline, under {folder.wandb}; send it with `wandb sync`" if cfg.logging.wandb.mode == "offline"
                     else f"online, {getattr(run, 'url', None) or cfg.logging.wandb.project}")
            notes.append(f"wandb: logging to project {cfg.logging.wandb.project!r} ({where})")
    return Tracked(writer, run, notes)
