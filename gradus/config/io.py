"""Configs as YAML: load a file (with the line of every key, for messages), apply ``--set`` overrides, dump.

Every problem of a loaded config is reported at once as ``<file>: line N: <field.path>=<value>: <what is
wrong and how to fix it>`` (``<file> (--set): ...`` when a ``--set`` override made the value); the lines
themselves come from :mod:`gradus.config.checks`.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from gradus.config.checks import field_path, validate
from gradus.config.schema import GradusConfig
from gradus.errors import ConfigError

_INDEX = re.compile(r"^(.*?)\[(\d+)\]$")


def _split_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for raw in key.split("."):
        indices = []
        while (m := _INDEX.match(raw)) is not None:
            raw, idx = m.group(1), int(m.group(2))
            indices.insert(0, idx)
        if raw:
            parts.append(int(raw) if raw.isdigit() else raw)
        parts.extend(indices)
    return parts


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` / ``curriculum.stages[2].seq_len=128`` overrides; values are parsed as YAML."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.max_steps=100")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"--set {item!r}: the key before '=' is empty; write e.g. --set train.max_steps=100")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parts = _split_key(key.strip())
        node: Any = data
        for j, part in enumerate(parts[:-1]):
            nxt = parts[j + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    size = len(node) if isinstance(node, list) else 0
                    raise ConfigError(f"--set {key}: index [{part}] out of range (the list has {size} items)")
                node = node[part]
            else:
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {key}: {part!r} is not inside a mapping")
                if node.get(part) is None:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
        last = parts[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise ConfigError(f"--set {key}: index [{last}] out of range")
            node[last] = value
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: cannot set {last!r} on a non-mapping")
            node[last] = value
    return data


_LEADING_PATH = re.compile(r"^[A-Za-z_][\w\-]*(?:\[\d+\]|\.[^\s=:.\[]+)*")


class _YamlIndex:
    """Line numbers of every key and list item of a YAML text, and its duplicated keys."""

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        self.duplicates: list[tuple[tuple, int, int]] = []
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            root = None
        if root is not None:
            self._walk(root, (), 0)

    def _walk(self, node: yaml.Node, path: tuple, depth: int) -> None:
        if depth > 64:  # anchors can nest deeply; line numbers there are not worth a recursion error
            return
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key, line = key_node.value, key_node.start_mark.line + 1
                if key in seen and key != "<<":
                    self.duplicates.append((path + (key,), seen[key], line))
                seen[key] = line
                self.lines[path + (key,)] = line
                self._walk(value_node, path + (key,), depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[path + (i,)] = item.start_mark.line + 1
                self._walk(item, path + (i,), depth + 1)

    def line_of(self, parts: tuple) -> int | None:
        """Line of the deepest key of ``parts`` present in the file."""
        for n in range(len(parts), 0, -1):
            if parts[:n] in self.lines:
                return self.lines[parts[:n]]
        return None


def _place(problems: list[str], origin: str, index: _YamlIndex | None, set_keys: list[str]) -> list[str]:
    """Prefix each problem with where it comes from: the file and line, or the --set that made it."""
    set_paths = [tuple(_split_key(k)) for k in set_keys]
    out = []
    for line in problems:
        m = _LEADING_PATH.match(line)
        parts = tuple(_split_key(m.group(0))) if m else ()
        if parts and any(parts[: len(sp)] == sp for sp in set_paths):
            out.append(f"{origin} (--set): {line}")
            continue
        number = index.line_of(parts) if index is not None and parts else None
        out.append(f"{origin}: line {number}: {line}" if number else f"{origin}: {line}")
    return out


def _read_yaml(path: str | Path) -> tuple[dict, _YamlIndex]:
    p = Path(path)
    if not p.is_file():
        what = "is a directory, not a config file" if p.is_dir() else "config file not found"
        raise ConfigError(f"{p}: {what}; check the path (or use --preset NAME)")
    try:
        text = p.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}:{where} malformed YAML: {problem}; fix the syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text; save the config as UTF-8 YAML") from None
    if data is None:
        raise ConfigError(f"{p}: the file is empty; a config needs data: and curriculum: sections")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top (model:, data:, curriculum:, ...)")
    return data, _YamlIndex(text)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or malformed YAML is a one-line ConfigError with the line."""
    return _read_yaml(path)[0]


def from_dict(data: dict, origin: str = "config") -> GradusConfig:
    """Validate a mapping; all problems are raised together as one ConfigError."""
    cfg, problems = validate(data)
    if cfg is None:
        raise ConfigError(*[f"{origin}: {line}" for line in problems])
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None, origin: str | None = None) -> GradusConfig:
    """Load a YAML file, apply ``--set`` overrides, validate.

    Every problem is reported at once as ``<origin>: line N: <field.path>=<value>: <why; how to fix>``
    (``<origin> (--set): ...`` when an override made the value). ``origin`` defaults to the path.
    """
    data, index = _read_yaml(path)
    overrides = overrides or []
    data = apply_overrides(data, overrides)
    origin = origin or str(path)
    problems = [
        f"{field_path(where)}: duplicate key (lines {first} and {second}); YAML keeps only the last, delete one"
        for where, first, second in index.duplicates
    ]
    cfg, invalid = validate(data)
    problems += invalid
    if problems or cfg is None:
        set_keys = [item.split("=", 1)[0].strip() for item in overrides]
        raise ConfigError(*_place(problems, origin, index, set_keys))
    return cfg


def _plain(value: Any) -> Any:
    """Plain data of a config object: optional fields that are unset (None by default) are left out, but a
    None that overrides a default (``early_stopping_patience: null``) is kept, so the dump reloads equal."""
    if isinstance(value, BaseModel):
        out = {}
        for name, info in type(value).model_fields.items():
            item = getattr(value, name)
            if item is None and info.default is None:
                continue
            out[name] = _plain(item)
        return out
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return to_jsonable_python(value)


def to_dict(cfg: GradusConfig) -> dict:
    """Plain data (field names, not aliases; unset optional fields left out) that reloads to ``cfg``."""
    return _plain(cfg)


def dump_yaml(cfg: GradusConfig) -> str:
    """The resolved config as YAML (what a run directory's config.yaml holds); reloads to ``cfg``."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: GradusConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(dump_yaml(cfg), encoding="utf-8")
