"""Every problem of a config as one line each, all reported at once.

The rules live with the schema (:mod:`gradus.config.schema`): each field's type and bounds, each section's
validators, the fields of one stage that exclude or need each other
(:func:`~gradus.config.schema_curriculum.stage_problems`) and the rules across sections
(:func:`~gradus.config.cross_section.cross_check`). pydantic skips a model's own validator once one of its fields
fails, so :func:`validate` runs those two again on the raw mapping and reports them with the field errors.
Each problem is one line ``<field.path>=<value>: <what is wrong>; <how to fix it>``;
:mod:`gradus.config.io` puts the file and line in front.

This module is the top of the checks: it imports the schema and its rules, and none of them imports it
(``tests/test_layers.py`` holds them to that). The rule functions are importable from here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from gradus.config.cross_section import cross_check, field_value  # noqa: F401 (re-exported)
from gradus.config.messages import field_path, format_validation_error, under_path  # noqa: F401 (re-exported)
from gradus.config.schema import GradusConfig
from gradus.config.schema_curriculum import stage_problems


def _all_problems(data: Any, err: ValidationError) -> list[str]:
    """The schema's errors plus the checks pydantic skipped because a field failed first."""
    lines = format_validation_error(err)
    if isinstance(data, Mapping):
        # The whole-config check ran on parsed values (8k read as 8000); it runs again below on the values as
        # written, so its parsed lines go, or one problem would be said twice in two spellings.
        parsed = {under_path("", sub) for e in err.errors() if not e["loc"] and e["type"] == "value_error"
                  for sub in str(e.get("ctx", {}).get("error", e["msg"])).split("\n")}
        lines = [line for line in lines if line not in parsed]
        # A stage's own validator runs only when all its fields are valid; check the others on raw data.
        failed = {e["loc"][2] for e in err.errors() if e["loc"][:2] == ("curriculum", "stages") and len(e["loc"]) > 3}
        curriculum = data.get("curriculum")
        stages = curriculum.get("stages") if isinstance(curriculum, Mapping) else None
        if isinstance(stages, list):
            for i, stage in enumerate(stages):
                if i in failed and isinstance(stage, Mapping):
                    lines += [under_path(f"curriculum.stages[{i}]", p) for p in stage_problems(stage)]
        # The whole-config check never ran (some section failed): run it on whatever is usable.
        lines += cross_check(data)
    return list(dict.fromkeys(lines))  # de-duplicated, in order


def validate(data: Any) -> tuple[GradusConfig | None, list[str]]:
    """A config mapping validated: ``(config, [])``, or ``(None, problems)`` with every problem, one line each."""
    try:
        return GradusConfig.model_validate(data), []
    except ValidationError as err:
        return None, _all_problems(data, err)


def config_problems(data: Any) -> list[str]:
    """Every problem of a config mapping, one line each (empty when it is valid)."""
    return validate(data)[1]
