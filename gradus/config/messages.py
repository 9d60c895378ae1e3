"""A pydantic ``ValidationError`` as one line per problem: ``<field.path>=<value>: <what is wrong>; <fix>``,
with a did-you-mean for unknown keys. Used by :mod:`gradus.config.checks` (which adds the cross-field
problems) and, through it, by :mod:`gradus.config.io` (which puts the file and line in front).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, ValidationError

from gradus.config.schema import GradusConfig


# ------------------------------------------------------------------------- one line per problem
def _unwrap(annotation: Any) -> Any:
    """The model class inside Optional[...], list[...], dict[..., X], Annotated[...]."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (list, tuple):
        return _unwrap(typing.get_args(annotation)[0])
    if origin is dict:
        return _unwrap(typing.get_args(annotation)[1])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                found = _unwrap(arg)
                if isinstance(found, type) and issubclass(found, BaseModel):
                    return found
        return None
    return annotation


def _parent_model(loc: tuple) -> type[BaseModel] | None:
    """The config class that owns the last key of an error location."""
    cls: Any = GradusConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return None
        cls = _unwrap(cls.model_fields[part].annotation)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def field_path(loc: tuple) -> str:
    """A field's path as written in messages and ``--set``: ``curriculum.stages[2].seq_len``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_names(cls: type[BaseModel]) -> list[str]:
    """Keys a section accepts: field names and their aliases (``lr_scale``)."""
    names: list[str] = []
    for name, info in cls.model_fields.items():
        names.append(name)
        if isinstance(info.validation_alias, AliasChoices):
            names += [c for c in info.validation_alias.choices if isinstance(c, str) and c != name]
    return names


_SECTIONS = ("curriculum.", "model.", "data.", "train.", "optim.", "logging.")


def under_path(path: str, sub: str) -> str:
    """Put a validator's problem line under the path of the object it checked."""
    if sub.startswith(_SECTIONS):  # cross-section lines carry their own full path
        return sub
    if sub.startswith("."):  # a field of the checked object: ".mix.code=-1: ..."
        return f"{path}{sub}" if path else sub[1:]
    return f"{path or '(config)'}: {sub}"


def format_validation_error(err: ValidationError) -> list[str]:
    """One human line per pydantic error: field path, value, and how to fix it."""
    errors = err.errors()
    unknown: dict[tuple, list[str]] = {}
    for e in errors:
        if e["type"] == "extra_forbidden":
            unknown.setdefault(tuple(e["loc"][:-1]), []).append(str(e["loc"][-1]))
    lines = []
    for e in errors:
        loc = tuple(e["loc"])
        path = field_path(loc)
        kind = e["type"]
        if kind == "extra_forbidden":
            parent = _parent_model(loc)
            key = str(loc[-1])
            hint = ""
            if parent is not None:
                known = _field_names(parent)
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            lines.append(f"{path}: unknown key {key!r}{hint}")
        elif kind == "missing":
            # `curriculm:` gives an unknown key *and* a missing `curriculum`; the did-you-mean says both.
            siblings = unknown.get(loc[:-1], [])
            if any(difflib.get_close_matches(k, [str(loc[-1])], n=1) for k in siblings):
                continue
            parent = _parent_model(loc)
            info = parent.model_fields.get(str(loc[-1])) if parent is not None else None
            what = f" ({info.description.rstrip('.')})" if info is not None and info.description else ""
            lines.append(f"{path}: required field is missing{what}; add it")
        elif kind in ("value_error", "assertion_error"):
            msg = str(e.get("ctx", {}).get("error", e["msg"]))
            value = e.get("input")
            for sub in msg.split("\n"):
                if isinstance(value, Mapping) or not loc:  # a model's own check
                    lines.append(under_path(path, sub))
                else:  # a field's parser, e.g. a token count: show the value it got
                    lines.append(f"{path}={_short(value)}: {sub}")
        else:
            value = e.get("input")
            msg = e["msg"].replace("Input should be", "must be")
            lines.append(f"{path or '(config)'}={_short(value)}: {msg[:1].lower()}{msg[1:]}")
    return lines


