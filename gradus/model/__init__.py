"""The model: a GPT-style decoder (:mod:`gradus.model.gpt`) and its shapes (:mod:`gradus.sizes`, re-exported).

The shapes are pure Python; ``GPT`` (and torch with it) is imported only when first used, so the planner
and ``gradus schedule`` can read shapes without torch: ``from gradus.model import ModelShape`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradus.sizes import SIZE_PRESETS, ModelShape, resolve_shape, shape_for_params

if TYPE_CHECKING:
    from gradus.model.gpt import GPT, param_groups

__all__ = ["GPT", "ModelShape", "SIZE_PRESETS", "param_groups", "resolve_shape", "shape_for_params"]


def __getattr__(name: str) -> Any:
    # Lazy: importing torch costs seconds and is not needed to plan or print shapes.
    if name in ("GPT", "param_groups"):
        from gradus.model import gpt

        return getattr(gpt, name)
    raise AttributeError(f"module 'gradus.model' has no attribute {name!r}")
