"""The config schema: every section and field a YAML config may hold, with its type, bounds and description.

Layer 0: imports nothing from gradus but ``units`` and ``errors``. Every field carries a description (shown
by ``gradus schedule`` and in error messages). The sections live in :mod:`gradus.config.schema_data`
(``model``, ``data``), :mod:`gradus.config.schema_curriculum` (``curriculum``) and
:mod:`gradus.config.schema_run` (``optim``, ``train``, ``logging``); this module composes them into
:class:`GradusConfig` and names every section class, so the whole schema is imported from here.

Rules on one field or one section are pydantic types and validators beside the fields (those between the
fields of one stage are :func:`gradus.config.schema_curriculum.stage_problems`); rules that relate several
sections are :mod:`gradus.config.cross_section`, which :class:`GradusConfig`'s validator runs. The dependency goes
one way: the sections, then the rules, then this module; none of them imports :mod:`gradus.config.checks`
(which reports every problem of a config at once).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from gradus.config.cross_section import cross_check
from gradus.config.fields import Strict
from gradus.config.schema_curriculum import (
    AdaptiveBatchConfig,
    AdaptiveConfig,
    AdaptiveLengthConfig,
    BatchRampConfig,
    CurriculumConfig,
    MixWeight,
    StageConfig,
    VerifyConfig,
)
from gradus.config.schema_data import (
    DataConfig,
    ModelConfig,
    PackingConfig,
    SourceConfig,
    TokenizerConfig,
    ValidationConfig,
)
from gradus.config.schema_run import (
    LoggingConfig,
    OptimConfig,
    TrainConfig,
)

__all__ = [
    "AdaptiveBatchConfig", "AdaptiveConfig", "AdaptiveLengthConfig", "BatchRampConfig", "CurriculumConfig",
    "DataConfig", "GradusConfig", "LoggingConfig", "MixWeight", "ModelConfig", "OptimConfig",
    "PackingConfig", "SourceConfig", "StageConfig", "TokenizerConfig", "TrainConfig", "ValidationConfig",
    "VerifyConfig",
]


class GradusConfig(Strict):
    """A whole run: model, data, curriculum, optimizer, training loop and logging."""

    name: str | None = Field(None, description="Run label.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model.")
    data: DataConfig = Field(..., description="Data.")
    curriculum: CurriculumConfig = Field(..., description="Curriculum.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training loop.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging.")

    @model_validator(mode="after")
    def _cross_check(self) -> GradusConfig:
        problems = cross_check(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self
