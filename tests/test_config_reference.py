"""docs/config.md is the schema's own reference: regenerated from the field descriptions, it must be what is
committed, and every field of every section is on it."""

from __future__ import annotations

from pathlib import Path

from gradus.config.reference import reference, sections
from gradus.config.schema import GradusConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_docs_config_md_is_current():
    assert DOC.read_text(encoding="utf-8") == reference(), (
        "docs/config.md differs from the schema: regenerate it with "
        "`python -m gradus.config.reference > docs/config.md`")


def test_every_key_of_every_section_is_documented_with_a_description():
    text = reference()
    for prefix, model in sections(GradusConfig):
        for name, field in model.model_fields.items():
            assert f"| `{prefix}{name}` |" in text
            assert field.description, f"{prefix}{name} has no description in the schema"
    assert "| `curriculum.stages[].seq_len` |" in text
