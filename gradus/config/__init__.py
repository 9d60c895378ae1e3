"""Typed, validated configuration: YAML in, objects out, and back.

Layer 0: imports nothing from gradus but ``units`` and ``errors``. Three jobs, each in its own modules:

- :mod:`gradus.config.schema` (:class:`GradusConfig`, composed of the sections and fields of
  :mod:`~gradus.config.schema_data`, :mod:`~gradus.config.schema_curriculum` and
  :mod:`~gradus.config.schema_run`: types, bounds, descriptions), over :mod:`gradus.config.fields` (the
  strict base, count types, the model presets), with :mod:`gradus.config.cross_section` (the rules across
  sections, which its validator runs);
- :mod:`gradus.config.checks`: every problem as one line (all reported at once);
- :mod:`gradus.config.io`: YAML with line numbers, ``--set`` overrides, dump.

Callers import from here (``from gradus.config import GradusConfig, load_config``).
"""

from __future__ import annotations

from gradus.config.checks import (
    config_problems,
    cross_check,
    field_path,
    field_value,
    format_validation_error,
    stage_problems,
    validate,
)
from gradus.config.fields import MODEL_PRESETS, SIZE_PRESETS, StepCount, Strict, TokenCount
from gradus.config.io import (
    apply_overrides,
    dump_yaml,
    from_dict,
    load_config,
    read_yaml,
    save_config,
    to_dict,
)
from gradus.config.schema import (
    CurriculumConfig,
    DataConfig,
    GradusConfig,
    MixWeight,
    ModelConfig,
    PackingConfig,
    SourceConfig,
    StageConfig,
    TokenizerConfig,
    ValidationConfig,
)
from gradus.config.schema_run import (
    EmaConfig,
    Fp8Config,
    GuardConfig,
    LoggingConfig,
    OptimConfig,
    PasskeyConfig,
    TrainConfig,
    WandbConfig,
)

__all__ = [
    "MODEL_PRESETS", "SIZE_PRESETS", "CurriculumConfig", "DataConfig", "EmaConfig", "Fp8Config", "GradusConfig", "GuardConfig",
    "LoggingConfig", "MixWeight", "ModelConfig", "OptimConfig", "PackingConfig", "PasskeyConfig", "SourceConfig", "StageConfig",
    "StepCount", "Strict", "TokenCount", "TokenizerConfig", "TrainConfig", "ValidationConfig", "WandbConfig",
    "apply_overrides", "config_problems", "cross_check", "dump_yaml", "field_path", "field_value",
    "format_validation_error", "from_dict", "load_config", "read_yaml", "save_config", "stage_problems",
    "to_dict", "validate",
]
