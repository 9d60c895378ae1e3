"""``Curriculum``: a thin compatibility shim over the pure schedule, for callers not yet switched.

TEMPORARY: every method delegates to :mod:`gradus.curriculum.state`; it holds no state of its own
beyond the config and the frozen :class:`Schedule`. Remove it once ``gradus/train`` (trainer, LR finder)
and ``benchmarks/`` call :func:`resolve_schedule` and the module-level functions directly.
"""

from __future__ import annotations

from gradus.config import GradusConfig
from gradus.curriculum import state as _state
from gradus.curriculum.resolve import resolve_schedule
from gradus.curriculum.schedule import Schedule, StagePlan
from gradus.curriculum.state import StageState


class Curriculum:
    """The old object API (``Curriculum(cfg).state_at(step, tokens)`` ...), delegating to the pure one."""

    def __init__(self, cfg: GradusConfig):
        self.cfg = cfg
        self.schedule: Schedule = resolve_schedule(cfg)
        """The frozen schedule every method reads; pass this to ``DataPipeline``."""

    @property
    def stages(self) -> tuple[StagePlan, ...]:
        """:attr:`Schedule.stages`."""
        return self.schedule.stages

    @property
    def warnings(self) -> list[str]:
        """:attr:`Schedule.warnings` (a fresh list)."""
        return list(self.schedule.warnings)

    @property
    def max_steps(self) -> int | None:
        """:attr:`Schedule.max_steps`."""
        return self.schedule.max_steps

    @property
    def token_based(self) -> bool:
        """:attr:`Schedule.token_based`."""
        return self.schedule.token_based

    @property
    def target_tokens(self) -> int | None:
        """:attr:`Schedule.target_tokens`."""
        return self.schedule.target_tokens

    @property
    def total_steps(self) -> int:
        """:attr:`Schedule.total_steps`."""
        return self.schedule.total_steps

    @property
    def total_tokens(self) -> int:
        """:attr:`Schedule.total_tokens`."""
        return self.schedule.total_tokens

    def global_warmup_steps(self) -> int:
        """:attr:`Schedule.global_warmup_steps`."""
        return self.schedule.global_warmup_steps

    def stage_index_at(self, step: int, tokens: int) -> int:
        """:func:`gradus.curriculum.stage_index_at`."""
        return _state.stage_index_at(self.schedule, step, tokens)

    def stages_index_by_step(self, step: int) -> int:
        """:func:`gradus.curriculum.stage_of_step` (the old, confusable name)."""
        return _state.stage_of_step(self.schedule, step)

    def lr_at(self, step: int, stage_index: int | None = None) -> float:
        """:func:`gradus.curriculum.lr_at`."""
        return _state.lr_at(self.schedule, step, stage_index)

    def state_at(self, step: int, tokens: int) -> StageState:
        """:func:`gradus.curriculum.state_at`."""
        return _state.state_at(self.schedule, step, tokens)

    def to_json(self) -> dict:
        """:meth:`Schedule.to_json`."""
        return self.schedule.to_json()
