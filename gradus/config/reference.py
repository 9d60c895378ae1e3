"""The configuration reference, generated from the schema: every key a config may hold, its type, default and
description, as one Markdown page (``docs/config.md``; ``tests/test_config_reference.py`` fails when the page
and the schema disagree, and says how to regenerate it).

The descriptions on the pydantic fields are the one place a key is documented; this page only lays them out,
section by section, with dotted keys (``curriculum.stages[].seq_len``) as a user writes them in YAML.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

HEADER = """# Configuration reference

Generated from the schema's field descriptions (`gradus/config/schema*.py`) by
`python -m gradus.config.reference > docs/config.md`; a test keeps it current. A config is YAML; every key
below is optional unless its default says *required*. Counts of tokens accept `10M`, `2k`, `1.5B`.
"""


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (itself, inside Optional, a list or a dict's values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _is_list(annotation: object) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(annotation))
    return origin is list


def _type_text(annotation: object) -> str:
    """A short readable type: ``int | None``, ``'cosine' | 'linear'``, ``list[StageConfig]``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", "`") for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_text(a) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _type_text(typing.get_args(annotation)[0])
    if origin is not None:
        args = ", ".join(_type_text(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(field) -> str:
    if field.is_required():
        return "*required*"
    if field.default_factory is not None:
        return "(section)" if _models_in(field.annotation) else "`" + repr(field.default_factory()) + "`"
    if field.default is PydanticUndefined:
        return ""
    return f"`{field.default!r}`" if field.default is not None else "`None`"


def sections(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """(dotted prefix, model) for the model and every model nested in it, depth first, each once."""
    yield prefix, model
    for name, field in model.model_fields.items():
        for sub in _models_in(field.annotation):
            key = f"{prefix}{name}{'[]' if _is_list(field.annotation) else ''}"
            yield from sections(sub, key + ".")


def reference() -> str:
    """The whole page (Markdown)."""
    from gradus.config.schema import GradusConfig

    out = [HEADER]
    seen: set[tuple[str, type]] = set()
    for prefix, model in sections(GradusConfig):
        if (prefix, model) in seen:
            continue
        seen.add((prefix, model))
        title = prefix.rstrip(".") or "top level"
        doc = " ".join((model.__doc__ or "").split())
        out.append(f"## `{title}`\n\n{doc}\n\n| key | type | default | description |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            desc = " ".join((field.description or "").split()).replace("|", "\\|")
            out.append(f"| `{prefix}{name}` | {_type_text(field.annotation)} | {_default_text(field)} | {desc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(reference(), end="")
