"""Fault injection for tests and benchmarks: ``GRADUS_FAULTS`` names steps at which the loss is NaN, Inf
or multiplied, and points inside a checkpoint save that fail, so the guard and the checkpoint code are
exercised through their real paths (no patching of private methods).

Syntax: comma-separated ``KIND@WHERE[xFACTOR][#TIMES]``:

* ``nan@5``, ``inf@7``: the loss of step 5 (7) is NaN (Inf) every time that step runs (a batch that is
  bad at any LR); ``nan@5#1`` only the first time.
* ``spike@9x100``: the loss of step 9 is multiplied by 100 (its gradients too).
* ``sigint@6``: the process sends itself SIGINT as step 6 runs, as Ctrl-C would (the run stops after it,
  checkpointed and resumable).
* ``save_fail@after_model``: the save raises ``OSError(ENOSPC)`` at that point (``before_model``,
  ``after_model``, ``after_optimizer``, ``after_state``, ``before_rename``); ``save_error@POINT`` raises a
  RuntimeError, as ``torch.save`` does on a full disk; ``kill@POINT`` sends the process SIGKILL there.

Unset (the normal case) every hook is a no-op costing one dict lookup.
"""

from __future__ import annotations

import errno
import math
import os
import re
import signal
from dataclasses import dataclass, field

from gradus.errors import ConfigError

ENV = "GRADUS_FAULTS"
LOSS_KINDS = {"nan": math.nan, "inf": math.inf, "spike": None, "sigint": 1.0}
SAVE_KINDS = ("save_fail", "save_error", "kill")
SAVE_POINTS = ("before_model", "after_model", "after_optimizer", "after_state", "before_rename")
_ITEM = re.compile(r"^(?P<kind>[a-z_]+)@(?P<where>\d+|[a-z_]+)(?:x(?P<factor>[0-9.eE+-]+))?(?:#(?P<times>\d+))?$")


@dataclass
class Fault:
    """One injected fault: ``kind`` at ``where`` (a step number or a save point)."""

    kind: str
    where: int | str
    factor: float = 1.0
    times: int | None = None
    """How many times it fires (None: every time)."""
    fired: int = 0

    def fire(self) -> bool:
        """Whether it fires now (and count it)."""
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


@dataclass
class Faults:
    """The parsed ``GRADUS_FAULTS``: loss faults by step, save faults by point."""

    by_step: dict[int, Fault] = field(default_factory=dict)
    by_point: dict[str, Fault] = field(default_factory=dict)

    def loss_multiplier(self, step: int) -> float:
        """What the loss of ``step`` is multiplied by: 1, NaN, Inf or a spike factor (a ``sigint`` fault
        sends the signal here and leaves the loss alone)."""
        fault = self.by_step.get(step)
        if fault is None or not fault.fire():
            return 1.0
        if fault.kind == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
        value = LOSS_KINDS[fault.kind]
        return fault.factor if value is None else value

    def at(self, point: str) -> None:
        """Called by the checkpoint save at ``point``; fails there when a fault names it."""
        fault = self.by_point.get(point)
        if fault is None or not fault.fire():
            return
        if fault.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault.kind == "save_error":
            raise RuntimeError(f"[enforce fail at inline_container.cc] . unexpected pos (injected at {point})")
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {point})")


def parse(text: str | None) -> Faults:
    """Parse a ``GRADUS_FAULTS`` value; a malformed item is a one-line ConfigError."""
    faults = Faults()
    for item in (text or "").replace(" ", "").split(","):
        if not item:
            continue
        m = _ITEM.match(item)
        kind = m.group("kind") if m else ""
        if m is None or kind not in (*LOSS_KINDS, *SAVE_KINDS):
            raise ConfigError(f"{ENV}: cannot read {item!r}; write e.g. nan@5,inf@7#1,spike@9x100,save_fail@after_model")
        times = int(m.group("times")) if m.group("times") else None
        if kind in LOSS_KINDS:
            if not m.group("where").isdigit():
                raise ConfigError(f"{ENV}: {item!r}: a loss fault names a step number, e.g. {kind}@5")
            factor = float(m.group("factor") or 100.0)
            faults.by_step[int(m.group("where"))] = Fault(kind, int(m.group("where")), factor, times)
        else:
            if m.group("where") not in SAVE_POINTS:
                raise ConfigError(f"{ENV}: {item!r}: the save point must be one of {', '.join(SAVE_POINTS)}")
            faults.by_point[m.group("where")] = Fault(kind, m.group("where"), 1.0, times)
    return faults


_ACTIVE: Faults | None = None
_ACTIVE_TEXT: str | None = None


def active() -> Faults:
    """The faults named by the environment now (re-parsed when the variable changes)."""
    global _ACTIVE, _ACTIVE_TEXT
    text = os.environ.get(ENV)
    if _ACTIVE is None or text != _ACTIVE_TEXT:
        _ACTIVE, _ACTIVE_TEXT = parse(text), text
    return _ACTIVE


def reset() -> None:
    """Forget the parsed faults and their counts (tests call it between runs)."""
    global _ACTIVE, _ACTIVE_TEXT
    _ACTIVE, _ACTIVE_TEXT = None, None
