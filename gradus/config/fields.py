"""Building blocks of the config schema: the strict base every section derives from, the count types that
accept ``10M`` / ``2k``, and the model size presets (the one list of them).

Layer 0: imports nothing from gradus but ``units``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

from gradus.units import parse_count


def given(section: Mapping, key: str) -> bool:
    """Whether a raw config ``section`` sets ``key`` (present and not null): what the rules between fields ask."""
    return section.get(key) is not None


def _count(value: Any) -> int:
    return parse_count(value)


TokenCount = Annotated[int, BeforeValidator(_count)]
"""An int that also accepts ``10M``, ``1.5B``, ``32_768`` in YAML and on the command line."""


def _step_count(value: Any) -> int:
    return parse_count(value, "step count")


StepCount = Annotated[int, BeforeValidator(_step_count)]
"""A step number that also accepts ``2k``, ``40_000``."""


def _document_count(value: Any) -> int:
    return parse_count(value, "document count")


DocumentCount = Annotated[int, BeforeValidator(_document_count)]
"""A number of documents that also accepts ``237_758``, ``240k``."""

SIZE_PRESETS: dict[str, dict[str, int]] = {
    # CPU tests and the offline demo: ~0.2M non-embedding parameters (the embedding adds V·64).
    "tiny": {"n_layers": 4, "d_model": 64, "n_heads": 4},
    # CPU benchmarks (BENCHMARKS.md's first measurement: 4 layers × 128): ~0.8M non-embedding.
    "small": {"n_layers": 4, "d_model": 128, "n_heads": 4},
    # GPT-2 small's shape with SwiGLU (8/3·768 = 2048): 85M non-embedding, 124M total at vocab 50257.
    "124M": {"n_layers": 12, "d_model": 768, "n_heads": 12, "ffn_hidden": 2048},
    # 16 × 1024 with a 3·d SwiGLU: 218M non-embedding, 270M total at vocab 50257.
    "270M": {"n_layers": 16, "d_model": 1024, "n_heads": 16, "ffn_hidden": 3072},
    # Llama-3.2-1B's body (16 × 2048, 32 heads, 8 kv heads, SwiGLU 8192): N = 0.97B non-embedding.
    "1B": {"n_layers": 16, "d_model": 2048, "n_heads": 32, "n_kv_heads": 8, "ffn_hidden": 8192},
}
"""Model size presets by name: the :class:`ModelConfig` shape fields each one sets. The one list of presets:
the config checks ``model.preset`` against it (:func:`gradus.config.cross_section.cross_check`) and
:func:`gradus.sizes.resolve_shape` fills shapes from it.
Names are approximate parameter counts at the GPT-2 vocabulary (50,257); ``vocab_size``, ``max_seq_len``
and the RoPE/dropout settings come from the config."""

MODEL_PRESETS = tuple(SIZE_PRESETS)
"""Names of the model size presets, in the table's order."""


class Strict(BaseModel):
    """Base for every section: unknown keys are errors (with a did-you-mean), values are validated."""

    # allow_inf_nan=False: `--set optim.base_lr=.inf` is one line naming the field, not a traceback later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True, allow_inf_nan=False)
