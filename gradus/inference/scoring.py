"""Scoring a model on any text source: loss, perplexity and next-token accuracy at any sequence length.

A source is named on the command line in one of these forms (each becomes the same
:class:`gradus.config.SourceConfig` a training config would hold, so every reader training has works):

* ``NAME``: a source of the run's own config; only its held-out documents are read, exactly the ones
  training validated on;
* ``builtin:python-docs`` (or ``python-stdlib``, ``arithmetic``): an offline corpus;
* ``hf:DATASET[@SPLIT]``: a Hugging Face dataset, streamed;
* a file, folder or glob (JSONL, JSON.GZ, Parquet, text);
* an inline YAML mapping with any source fields, e.g. ``{path: x.jsonl, template: '{q}\\n{a}'}``.

Documents are tokenised, joined with EOS (as training packs them) and cut into non-overlapping windows
of ``seq_len`` + 1 tokens; the score is the token-weighted mean over all windows
(:func:`gradus.train.evaluate.evaluate`, the same function validation uses during training).
"""

from __future__ import annotations

import contextlib
import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradus.errors import ConfigError, DataError

SPEC_FORMS = "a source name of the run, builtin:NAME, hf:DATASET[@SPLIT], a file/folder/glob, or a YAML mapping {path: ...}"


@dataclass(frozen=True)
class EvalSource:
    """A source to score and how to read it."""

    config: Any
    """The :class:`gradus.config.SourceConfig`."""
    role: str
    """``validation`` (held-out documents of a run's source) or ``all``."""
    holdout: float
    """The run's held-out fraction for ``validation``; 0 otherwise."""
    label: str
    """What it is, for the report."""


def source_from_spec(spec: str, run_config=None) -> EvalSource:
    """Turn a command-line source spec (see the module docstring) into an :class:`EvalSource`."""
    import yaml
    from pydantic import ValidationError

    from gradus.config import SourceConfig

    def build(fields: dict[str, Any]) -> Any:
        try:
            return SourceConfig.model_validate(fields)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "source"
            raise ConfigError(f"--data {spec}: {where}: {first.get('msg')}") from None

    spec = spec.strip()
    if not spec:
        raise ConfigError(f"--data is empty; give {SPEC_FORMS}")
    if run_config is not None:
        by_name = {s.name: s for s in run_config.data.sources}
        if spec in by_name:
            frac = run_config.data.validation.fraction
            if frac <= 0 and not by_name[spec].validation_split:
                raise ConfigError(
                    f"--data {spec}: the run held out none of this source's documents (data.validation.fraction 0, "
                    f"no validation_split), so all were trained on; give other files, or a YAML mapping of the source"
                )
            return EvalSource(by_name[spec], "validation", frac, f"held-out documents of the run's source {spec!r}")
    if spec.startswith("{"):
        try:
            fields = yaml.safe_load(spec)
        except yaml.YAMLError as err:
            raise ConfigError(f"--data {spec}: not a valid YAML mapping ({str(err).splitlines()[0]})") from None
        if not isinstance(fields, dict):
            raise ConfigError(f"--data {spec}: give a YAML mapping of source fields")
        fields.setdefault("name", "eval")
        return EvalSource(build(fields), "all", 0.0, f"source {fields}")
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        return EvalSource(build({"name": name or "builtin", "builtin": name}), "all", 0.0, f"builtin corpus {name}")
    if spec.startswith("hf:"):
        dataset, _, split = spec[3:].partition("@")
        fields = {"name": "eval", "dataset": dataset, **({"split": split} if split else {})}
        return EvalSource(build(fields), "all", 0.0, f"Hugging Face dataset {dataset} ({split or 'train'})")
    path = Path(spec).expanduser()
    if path.exists() or glob.glob(str(path)):
        return EvalSource(build({"name": path.stem or "eval", "path": spec}), "all", 0.0, f"files {spec}")
    known = ""
    if run_config is not None:
        known = f" (the run's sources: {', '.join(s.name for s in run_config.data.sources)})"
    raise ConfigError(f"--data {spec}: no such source, file or glob{known}; give {SPEC_FORMS}")


def source_tokens(src: EvalSource, tokenizer, max_tokens: int) -> tuple[np.ndarray, int]:
    """Up to ``max_tokens`` + 1 tokens of the source's documents, each followed by EOS, and the number
    of documents read. A source without documents is a one-line DataError."""
    from gradus.data.chat import strip_marks
    from gradus.data.sources import open_reader

    reader = open_reader(src.config, role=src.role, holdout=src.holdout, retries=1)
    arrays: list[np.ndarray] = []
    have = docs = 0
    try:
        for piece in reader.scan(None):
            if piece.end_of_pass:
                break
            docs += int(piece.first)
            # A chat source's record is scored whole, as plain text (its span marks removed).
            text = strip_marks(piece.text) if reader.chat is not None else piece.text  # type: ignore[arg-type]
            ids = tokenizer.encode_arrays([text], [piece.last])[0]
            arrays.append(ids)
            have += len(ids)
            if have > max_tokens:
                break
    except DataError as err:
        if "is empty" in err.problems[0] or "no documents" in err.problems[0]:
            raise DataError(f"--data: {src.label} has no documents; nothing to evaluate") from None
        raise
    if not docs:
        raise DataError(f"--data: {src.label} has no documents; nothing to evaluate")
    return np.concatenate(arrays)[: max_tokens + 1], docs


@dataclass
class _Windows:
    inputs: np.ndarray
    labels: np.ndarray


def with_context(model, seq_len: int):
    """``model`` itself, or a copy whose RoPE table reaches ``seq_len`` when that is beyond its
    ``max_seq_len`` (the weights do not depend on the table; positions beyond it are extrapolation)."""
    if seq_len <= model.shape.max_seq_len:
        return model
    from gradus.model.gpt import GPT

    longer = GPT(model.shape.with_(max_seq_len=seq_len))
    longer.load_state_dict(model.state_dict())
    return longer.to(next(model.parameters()).device).eval()


def score(model, tokens: np.ndarray, seq_len: int, batch_size: int = 8) -> dict[str, float]:
    """Loss, ppl, accuracy and tokens over the non-overlapping ``seq_len`` windows of ``tokens``."""
    from gradus.data.validation import windows
    from gradus.train.evaluate import evaluate

    if seq_len < 1:
        raise ConfigError(f"--seq-len={seq_len}: must be at least 1")
    count = (len(tokens) - 1) // seq_len
    if count < 1:
        raise DataError(
            f"--seq-len {seq_len}: the source gives only {len(tokens)} tokens, fewer than one window of "
            f"{seq_len + 1}; lower --seq-len or use a larger source"
        )
    inputs, labels = windows(tokens, seq_len, count)
    batches = [_Windows(inputs[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, count, batch_size)]
    net = with_context(model, seq_len)
    device = next(net.parameters()).device
    result = evaluate(net, batches, device, contextlib.nullcontext)
    result["windows"] = count
    result["seq_len"] = seq_len
    return result
