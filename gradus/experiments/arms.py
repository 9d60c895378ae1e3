"""Arms of a sweep: ``--vary KEY=V1,V2`` (absolute or relative ``0.5x`` values) and the lesson's named
ablations, each arm a list of ``key=value`` overrides on the user's config.

Pure Python (no torch): every arm is checked here, before anything trains, and a bad ``--vary`` is one
:class:`~gradus.errors.ConfigError` line naming the key, the value and the fix.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import yaml
from pydantic import BaseModel

from gradus.config import GradusConfig, apply_overrides, from_dict
from gradus.errors import ConfigError

ABLATIONS = ("lr", "seq-vs-batch", "mix", "depth-width")
"""The lesson's four cheap, decisive ablations (``--ablation NAME``)."""

MIX_SHIFT = 0.15
"""``mix`` ablation: each source's share is moved up and down by this fraction of itself (the lesson's ±10-20%)."""

PARAM_TOLERANCE = 0.02
"""``depth-width`` ablation: the largest relative difference in non-embedding parameters allowed."""

_RELATIVE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*[xX×]\s*$")
_PART = re.compile(r"^([^\[\]]*)((?:\[(?:\d+|\*)\])*)$")


@dataclass(frozen=True)
class Arm:
    """One way to train: a label, the overrides that make it from the base config, and notes for the table."""

    name: str
    """Short label shown in tables, plots and run-directory names, e.g. ``base_lr=0.5x``."""
    overrides: tuple[str, ...] = ()
    """``key=value`` overrides (values as JSON, which YAML reads) applied to the base config."""
    description: str = ""
    """What the arm changes, in words."""
    note: str = ""
    """Extra facts for the table, e.g. a depth-width shape's parameter count and how far it is off."""
    reference: bool = False
    """The base setting itself (every value 1x, or the compare baseline)."""
    config: dict | None = field(default=None, compare=False)
    """A whole replacement config mapping instead of overrides (the compare baseline from a file)."""

    @property
    def slug(self) -> str:
        """The arm's name made safe for a directory name."""
        return re.sub(r"[^A-Za-z0-9._=+-]+", "_", self.name).strip("_") or "arm"


# ---------------------------------------------------------------------------------------- key paths
def split_key(key: str) -> list[str | int]:
    """``curriculum.stages[2].seq_len`` -> ``['curriculum', 'stages', 2, 'seq_len']``; ``[*]`` stays ``'*'``."""
    parts: list[str | int] = []
    for raw in key.strip().split("."):
        m = _PART.match(raw)
        if m is None or (not m.group(1) and not m.group(2)):
            raise ConfigError(f"--vary {key}: cannot read the key; write it like optim.base_lr or "
                              "curriculum.stages[0].seq_len")
        if m.group(1):
            parts.append(m.group(1))
        for idx in re.findall(r"\[(\d+|\*)\]", m.group(2)):
            parts.append("*" if idx == "*" else int(idx))
    return parts


def join_key(parts: Sequence[str | int]) -> str:
    """Inverse of :func:`split_key`."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) or p == "*" else ("." if out else "") + p
    return out


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    return annotation


def check_key(key: str, base: dict) -> list[list[str | int]]:
    """The concrete paths a key names (``[*]`` expanded over the base config's list), after checking that
    every part exists in the config schema; an unknown part is a ConfigError with a did-you-mean."""
    parts = split_key(key)
    paths: list[list[str | int]] = [[]]
    kind: Any = GradusConfig
    for i, part in enumerate(parts):
        origin = typing.get_origin(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            if not isinstance(part, str) or part == "*":
                raise ConfigError(f"--vary {key}: {join_key(parts[:i]) or 'the config'} is a section, not a list")
            if part not in kind.model_fields:
                known = list(kind.model_fields)
                close = difflib.get_close_matches(part, known, n=1)
                hint = f"did you mean {join_key([*parts[:i], close[0]])!r}?" if close else f"known: {', '.join(known)}"
                where = join_key(parts[:i]) or "the config"
                raise ConfigError(f"--vary {key}: unknown key {part!r} in {where}; {hint}")
            kind = _unwrap(kind.model_fields[part].annotation)
            paths = [p + [part] for p in paths]
        elif origin is list:
            if isinstance(part, str) and part != "*":
                raise ConfigError(f"--vary {key}: {join_key(parts[:i])} is a list; index it, e.g. "
                                  f"{join_key(parts[:i])}[0] or [*] for every item")
            new = []
            for p in paths:
                items = _get(base, p)
                size = len(items) if isinstance(items, list) else 0
                if part == "*":
                    new += [p + [j] for j in range(size)]
                elif part >= size:
                    raise ConfigError(f"--vary {key}: index [{part}] is out of range; {join_key(p)} has {size} items")
                else:
                    new.append(p + [part])
            paths = new
            kind = _unwrap(typing.get_args(kind)[0])
        elif origin is dict:
            paths = [p + [part] for p in paths]
            kind = _unwrap(typing.get_args(kind)[1])
        else:
            raise ConfigError(f"--vary {key}: {join_key(parts[:i])} is a value, it has no {part!r} inside")
    if isinstance(kind, type) and issubclass(kind, BaseModel) or typing.get_origin(kind) in (list, dict):
        raise ConfigError(f"--vary {key}: names a whole section; vary one of its values, e.g. {key}.<field>")
    return paths


def _get(data: Any, path: Sequence[str | int]) -> Any:
    for p in path:
        if isinstance(p, int):
            data = data[p] if isinstance(data, list) and p < len(data) else None
        else:
            data = data.get(p) if isinstance(data, dict) else None
    return data


# --------------------------------------------------------------------------------------------- values
def split_values(text: str) -> list[str]:
    """Comma-separated values, commas inside ``[]`` / ``{}`` kept (a mix can be a value)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [v for v in out if v]


def relative_factor(text: str) -> float | None:
    """``0.5x`` -> 0.5; None when the value is not relative."""
    m = _RELATIVE.match(text)
    return float(m.group(1)) if m else None


def base_value(base: dict, path: Sequence[str | int]) -> Any:
    """The value a key has in the resolved base config; a shape field a size preset fills counts too."""
    value = _get(base, path)
    if value is None and len(path) == 2 and path[0] == "model":
        from gradus.sizes import preset_fields  # pure shape arithmetic, no torch

        preset = _get(base, ["model", "preset"])
        if isinstance(preset, str):
            with_preset = preset_fields(preset)
            value = with_preset.get(str(path[1]))
            if value is None and path[1] == "ffn_hidden" and "d_model" in with_preset:
                from gradus.sizes import default_ffn_hidden

                value = default_ffn_hidden(_get(base, ["model", "d_model"]) or with_preset["d_model"])
    return value


def resolve_value(key: str, text: str, base: dict, path: Sequence[str | int]) -> Any:
    """One ``--vary`` value for one concrete path: relative values scale the base value (an int key stays
    an int), absolute ones are read as YAML."""
    factor = relative_factor(text)
    if factor is None:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; it is a number here
            try:
                return float(value)
            except ValueError:
                return value
        return value
    current = base_value(base, path)
    if isinstance(current, bool) or not isinstance(current, int | float):
        what = "has no value" if current is None else f"is {current!r}, not a number"
        raise ConfigError(f"--vary {key}={text}: a relative value needs a numeric key, but {join_key(path)} "
                          f"{what}; give absolute values instead")
    scaled = current * factor
    return max(1, round(scaled)) if isinstance(current, int) else float(f"{scaled:.6g}")


def parse_vary(spec: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2`` -> (key, [V1, V2])."""
    key, sep, values = spec.partition("=")
    if not sep or not key.strip() or not split_values(values):
        raise ConfigError(f"--vary {spec!r}: expected KEY=V1,V2,... e.g. --vary optim.base_lr=0.5x,1x,1.5x")
    return key.strip(), split_values(values)


def vary_arms(base: dict, specs: Sequence[str]) -> list[Arm]:
    """The arms of ``--vary`` specs on a resolved base config: every combination of their values."""
    axes = []
    for spec in specs:
        key, values = parse_vary(spec)
        paths = check_key(key, base)
        label = str(split_key(key)[-1])
        options = []
        for text in values:
            assignments = [(path, resolve_value(key, text, base, path)) for path in paths]
            same = all(value == base_value(base, path) for path, value in assignments)
            options.append((f"{label}={text}", assignments, relative_factor(text) == 1.0 or same))
        axes.append(options)
    arms = []
    for combo in itertools.product(*axes):
        name = " ".join(label for label, _, _ in combo)
        overrides = tuple(f"{join_key(path)}={json.dumps(value)}" for _, assign, _ in combo for path, value in assign)
        desc = ", ".join(f"{join_key(p)}={v}" for _, assign, _ in combo for p, v in assign)
        arms.append(Arm(name, overrides, desc, reference=all(ref for _, _, ref in combo)))
    return arms


def check_arm_count(arms: Sequence[Arm]) -> None:
    """A comparison needs two arms or more, with distinct names."""
    if len(arms) < 2:
        raise ConfigError(f"{len(arms)} arm(s) to run; a sweep compares two or more: give --vary KEY=V1,V2 with "
                          "at least two values, or --ablation NAME")
    names = [a.name for a in arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"arm {dup[0]!r} is given twice; drop the repeated value")


def arm_config(base: dict, arm: Arm, origin: str) -> dict:
    """The arm's raw config mapping (validated): the base with the arm's overrides applied. A value that
    fails validation is one ConfigError line per problem naming the arm."""
    data = arm.config if arm.config is not None else apply_overrides(base, list(arm.overrides))
    try:
        from_dict(data, origin=origin)
    except ConfigError as err:
        raise ConfigError(*[f"arm {arm.name!r}: {line}" for line in err.problems]) from None
    return data


# ------------------------------------------------------------------------------------------ ablations
def ablation_arms(name: str, base: dict, vocab_size: int | None = None) -> list[Arm]:
    """The arms of a named ablation on a resolved base config (``lr``, ``seq-vs-batch``, ``mix``,
    ``depth-width``)."""
    if name not in ABLATIONS:
        close = difflib.get_close_matches(name, ABLATIONS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"--ablation {name}: unknown ablation; {hint}known: {', '.join(ABLATIONS)}")
    stages = base["curriculum"]["stages"]
    if name == "lr":
        # The peak LR comes from optim.base_lr unless stages give absolute peaks; scale whichever sets it.
        key = "curriculum.stages[*].peak_lr" if any(st.get("peak_lr") for st in stages) else "optim.base_lr"
        return vary_arms(base, [f"{key}=0.5x,1x,1.5x"])
    if name == "seq-vs-batch":
        return _seq_vs_batch(base)
    if name == "mix":
        return _mix_arms(base)
    return depth_width_arms(base, vocab_size)


def _stage_tps(stage: dict) -> int:
    from gradus.curriculum import derive_batch

    if stage.get("batch_size"):
        return int(stage["batch_size"]) * int(stage["seq_len"])
    return derive_batch(int(stage["tokens_per_batch"]), int(stage["seq_len"]), int(stage.get("batch_multiple", 8))) \
        * int(stage["seq_len"])


def _seq_vs_batch(base: dict) -> list[Arm]:
    # Fixed compute = the same tokens: every arm trains the same budget; what changes is how a step's tokens
    # are cut (shorter sequences, more of them) or how many tokens a step takes (more or fewer steps).
    stages = base["curriculum"]["stages"]
    max_len = int(base["model"].get("max_seq_len", 2048))

    def shaped(label: str, desc: str, seq_factor: float, tps_factor: float) -> Arm:
        out = []
        for i, st in enumerate(stages):
            seq = max(1, int(st["seq_len"] * seq_factor))
            tps = max(seq, int(_stage_tps(st) * tps_factor))
            out += [f"curriculum.stages[{i}].seq_len={seq}", f"curriculum.stages[{i}].batch_size=null",
                    f"curriculum.stages[{i}].tokens_per_batch={tps}"]
        return Arm(label, tuple(out), desc, reference=seq_factor == tps_factor == 1)

    arms = [shaped("as configured", "every stage as configured", 1, 1),
            shaped("seq_len 0.5x", "every stage at half the sequence length, same tokens per step (2x the rows)",
                   0.5, 1)]
    if all(st["seq_len"] * 2 <= max_len for st in stages):
        arms.append(shaped("seq_len 2x", "every stage at twice the sequence length, same tokens per step", 2, 1))
    arms += [shaped("tokens/step 0.5x", "every stage at half the tokens per step (twice the steps)", 1, 0.5),
             shaped("tokens/step 2x", "every stage at twice the tokens per step (half the steps)", 1, 2)]
    return arms


def _mix_arms(base: dict) -> list[Arm]:
    stages = base["curriculum"]["stages"]
    sources = [s["name"] for s in base["data"]["sources"]]
    if len(sources) < 2:
        raise ConfigError("--ablation mix: the config has one data source; a mix ablation needs two or more")
    mixes, previous = [], {s: 1.0 / len(sources) for s in sources}
    for st in stages:  # each stage's effective mix, as the curriculum resolves it (inherited or uniform)
        mix = st.get("mix") or previous
        total = sum(mix.values())
        mix = {s: mix.get(s, 0.0) / total for s in sources}
        mixes.append(mix)
        previous = mix
    arms = [Arm("mix as configured", (), "every stage's mix as configured", reference=True)]
    for source in sources:
        if not any(m[source] > 0 for m in mixes):
            continue
        for sign in (+1, -1):
            overrides = []
            for i, mix in enumerate(mixes):
                share = min(1.0, mix[source] * (1 + sign * MIX_SHIFT))
                rest = 1.0 - mix[source]
                new = {s: (share if s == source else (w * (1 - share) / rest if rest > 0 else 0.0))
                       for s, w in mix.items()}
                overrides.append(f"curriculum.stages[{i}].mix={json.dumps({k: round(v, 4) for k, v in new.items()})}")
            pct = f"{'+' if sign > 0 else '-'}{MIX_SHIFT:.0%}"
            arms.append(Arm(f"{source} {pct}", tuple(overrides),
                            f"{source}'s share of every stage {pct} of itself, the others scaled to fill the rest"))
    return arms


def _fit_ffn(n_target: int, layers: int, d: int, kv_dim: int) -> int:
    """SwiGLU width that brings ``layers`` blocks of width ``d`` nearest to ``n_target`` non-embedding
    parameters (a multiple of 8, at least 8)."""
    per_layer = (n_target - d) / layers
    f = (per_layer - 2 * d * d - 2 * d * kv_dim - 2 * d) / (3 * d)
    return max(8, 8 * round(f / 8))


def depth_width_arms(base: dict, vocab_size: int | None = None) -> list[Arm]:
    """Deeper-narrower and shallower-wider shapes with the base's non-embedding parameter count (within
    :data:`PARAM_TOLERANCE`): half and twice the layers, the width scaled by √2 to the nearest multiple of
    the head width, and the SwiGLU width fitted to close the rest of the gap."""
    from gradus.config import ModelConfig
    from gradus.sizes import GPT2_VOCAB_SIZE, ModelShape, resolve_shape

    model = ModelConfig.model_validate(base["model"])
    vocab = vocab_size or base["data"].get("tokenizer", {}).get("train_vocab_size") or GPT2_VOCAB_SIZE
    shape = resolve_shape(model, vocab)
    n0 = shape.params_non_embedding
    head = shape.head_dim
    group = shape.n_heads // (shape.n_kv_heads or shape.n_heads)
    arms = [Arm(f"{shape.n_layers}x{shape.d_model}", (), "the configured shape",
                note=f"N={n0:,} non-embedding", reference=True)]
    for layers in (shape.n_layers * 2, shape.n_layers // 2):
        if layers < 1 or layers == shape.n_layers:
            continue
        ideal = shape.d_model * math.sqrt(shape.n_layers / layers)
        best = None
        for heads in range(max(1, group), 4 * shape.n_heads + 1, max(1, group)):
            d = heads * head
            if abs(math.log(d / ideal)) > math.log(1.6):
                continue
            kv = heads // group
            ffn = _fit_ffn(n0, layers, d, kv * head)
            try:
                cand = ModelShape(n_layers=layers, d_model=d, n_heads=heads, n_kv_heads=kv, ffn_hidden=ffn,
                                  vocab_size=vocab, max_seq_len=shape.max_seq_len)
            except ConfigError:
                continue
            off = cand.params_non_embedding / n0 - 1
            # Fewest parameters off first, then a SwiGLU width nearest the usual 8/3 d.
            score = (abs(off) > PARAM_TOLERANCE, abs(math.log(ffn / (8 * d / 3))), abs(off))
            if best is None or score < best[0]:
                best = (score, cand, off)
        if best is None:
            continue
        _, cand, off = best
        if abs(off) > PARAM_TOLERANCE:
            raise ConfigError(f"--ablation depth-width: no {layers}-layer shape within {PARAM_TOLERANCE:.0%} of "
                              f"N={n0:,}; set model.n_layers to a size that divides more evenly")
        overrides = (f"model.n_layers={layers}", f"model.d_model={cand.d_model}", f"model.n_heads={cand.n_heads}",
                     f"model.n_kv_heads={cand.n_kv_heads}", f"model.ffn_hidden={cand.ffn_hidden}")
        kind = "deeper, narrower" if layers > shape.n_layers else "shallower, wider"
        arms.append(Arm(f"{layers}x{cand.d_model}", overrides,
                        f"{kind}: {layers} layers × {cand.d_model}, {cand.n_heads} heads, SwiGLU {cand.ffn_hidden}",
                        note=f"N={cand.params_non_embedding:,} ({off:+.1%})"))
    return arms
