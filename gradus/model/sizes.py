"""Model shapes without torch: moved to :mod:`gradus.sizes` (layer 1, so that ``gradus.plan`` reads them
without importing its sibling ``gradus.model``). This module keeps the old import path working."""

from __future__ import annotations

from gradus.sizes import (
    GPT2_VOCAB_SIZE,
    SIZE_PRESETS,
    ModelShape,
    default_ffn_hidden,
    preset_fields,
    resolve_shape,
    shape_for_params,
)

__all__ = [
    "GPT2_VOCAB_SIZE", "SIZE_PRESETS", "ModelShape", "default_ffn_hidden", "preset_fields", "resolve_shape",
    "shape_for_params",
]
