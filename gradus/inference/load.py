"""Load a trained model from what a run leaves on disk: a run directory, one checkpoint, or an exported
Hugging Face directory.

Only the files are read (``model.safetensors``, ``meta.json``, ``config.yaml``, the run's
``tokenizer.json``), never trainer internals, so anything that keeps that layout loads:

* ``RUN/`` (holds ``checkpoints/``): its newest ``step_*`` checkpoint, or ``best`` / ``step_N`` / ``N``
  with ``which``;
* ``RUN/checkpoints/step_00000600/`` or ``RUN/checkpoints/best/``: that checkpoint;
* a directory written by ``gradus export --hf`` (or any plain Llama model with a ``tokenizer.json``).

The shape comes from the weights file's metadata when it has one, else ``meta.json``'s ``model_shape``,
else the run's config; the RoPE interpolation factor is the one of the stage the checkpoint was saved in
(a long-context stage changes it during the run, and the weights were trained with it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradus.errors import CheckpointError, ConfigError, first_line
from gradus.train.storage.run_dir import BEST, EMA_WEIGHTS, MODEL, CheckpointFiles, RunDir, step_of

EMA_FILES = (EMA_WEIGHTS, "model_ema.safetensors")
"""Names an averaged (EMA) copy of the weights may have inside a checkpoint folder."""



@dataclass
class LoadedModel:
    """A model ready for inference and what it came from."""

    model: Any
    """The :class:`gradus.model.GPT`, in eval mode."""
    tokenizer: Any
    """The run's :class:`gradus.data.Tokenizer`."""
    source: Path
    """The checkpoint folder (or exported directory) the weights were read from."""
    meta: dict = field(default_factory=dict)
    """The checkpoint's ``meta.json`` (step, tokens, stage ...); empty for an exported directory."""
    config: Any = None
    """The run's :class:`gradus.config.GradusConfig`, when the checkpoint has its ``config.yaml``."""

    def describe(self) -> str:
        """One line: where the weights come from, step and tokens when known, and the shape."""
        at = ""
        if "step" in self.meta:
            at = f" (step {self.meta['step']:,}, {int(self.meta.get('tokens', 0)):,} tokens)"
        return f"{self.source}{at}: {self.model.shape.describe()}"


# ------------------------------------------------------------------------------------- locating
def is_checkpoint(path: Path) -> bool:
    """True for a checkpoint folder (``meta.json`` and ``model.safetensors``, or the ``shards/`` of a
    sharded one: :mod:`gradus.train.storage.sharded_checkpoint`)."""
    files = CheckpointFiles(path)
    return files.meta.is_file() and (files.model.is_file() or (files.shards / ".metadata").is_file())


def is_hf_dir(path: Path) -> bool:
    """True for a Hugging Face model directory (``config.json`` and safetensors weights: the file name a
    checkpoint's weights have too)."""
    return (path / "config.json").is_file() and (
        (path / MODEL).is_file() or (path / f"{MODEL}.index.json").is_file()
    )


def resolve_checkpoint(path: str | Path, which: str | None = None) -> Path:
    """The checkpoint folder ``path`` names: itself when it is one, else the run's newest ``step_*``
    checkpoint (or ``which``: ``best``, ``latest``, ``step_N`` or ``N``). Anything else is a one-line
    :class:`ConfigError` saying what was expected."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such directory; give a run directory (runs/NAME) or a checkpoint folder")
    if is_checkpoint(p):
        if which not in (None, "latest"):
            raise ConfigError(f"--checkpoint {which}: {p} is already one checkpoint; give the run directory instead")
        return p
    run = RunDir(p)
    ckpts = run.checkpoints
    if not ckpts.is_dir() and (run.config.is_file() or run.metrics.is_file()):
        raise ConfigError(f"{p}: the run has no checkpoint yet (it stopped before its first save); train it further "
                          "(gradus train --out with the same config) or give another run")
    if not ckpts.is_dir():
        raise ConfigError(
            f"{p}: not a gradus run or checkpoint (no checkpoints/ folder, no meta.json + model.safetensors); "
            f"give runs/NAME or runs/NAME/checkpoints/step_N"
        )
    steps = sorted((s, c) for c in ckpts.iterdir() if (s := step_of(c.name)) is not None and is_checkpoint(c))
    if which in (None, "latest"):
        if not steps:
            raise ConfigError(f"{p}: the run has no complete checkpoint yet; train it further or pick best")
        return steps[-1][1]
    if which == BEST:
        if not is_checkpoint(ckpts / BEST):
            raise ConfigError(f"{p}: the run has no best checkpoint (written at an evaluation); use --checkpoint latest")
        return ckpts / BEST
    m = re.fullmatch(r"(?:step_)?(\d+)", which)
    found = dict(steps)
    if m and int(m.group(1)) in found:
        return found[int(m.group(1))]
    have = ", ".join(str(s) for s, _ in steps) or "none"
    raise ConfigError(f"--checkpoint {which}: {p} has no such checkpoint (steps: {have}; or best, latest)")


# -------------------------------------------------------------------------------------- loading
def load_model(path: str | Path, which: str | None = None, *, ema: bool = False, device: str = "cpu") -> LoadedModel:
    """Load a run, a checkpoint or an exported Hugging Face directory (see the module docstring)."""
    from gradus.model.device import pick_device

    device = str(pick_device(device, "--device", "--device cpu"))  # before reading gigabytes of weights
    p = Path(path)
    if is_hf_dir(p) and not is_checkpoint(p):
        if ema:
            raise ConfigError(f"--ema: {p} is an exported model; it holds one set of weights")
        if which is not None:
            raise ConfigError(f"--checkpoint {which}: {p} is an exported model, one set of weights; drop --checkpoint "
                              "(or give the run it was exported from)")
        from gradus.export.hf import load_hf

        model, tokenizer = load_hf(p, device=device)
        return LoadedModel(model=model.eval(), tokenizer=tokenizer, source=p)
    ckpt = resolve_checkpoint(p, which)
    return load_checkpoint(ckpt, ema=ema, device=device)


def load_checkpoint(ckpt: Path, *, ema: bool = False, device: str = "cpu") -> LoadedModel:
    """A checkpoint folder's weights in a GPT of its shape, with the run's tokenizer."""
    from safetensors.torch import load_model as load_weights

    from gradus.model.gpt import GPT

    meta = _read_json(CheckpointFiles(ckpt).meta)
    cfg = _read_config(ckpt)
    weights = CheckpointFiles(ckpt).model
    if not weights.is_file() and not ema:  # a sharded checkpoint (FSDP): its shards made one file, once
        from gradus.train.storage.sharded_checkpoint import consolidate

        weights = consolidate(ckpt)
    if ema:
        found = [ckpt / n for n in EMA_FILES if (ckpt / n).is_file()]
        if not found:
            raise ConfigError(f"--ema: {ckpt} holds no averaged weights ({' or '.join(EMA_FILES)}); drop --ema")
        weights = found[0]
    tokenizer = load_run_tokenizer(ckpt, meta, cfg)
    shape = _shape_of(weights, meta, cfg, tokenizer)
    model = GPT(shape)
    try:
        missing, unexpected = load_weights(model, str(weights), strict=False)
    except Exception as err:  # a truncated or foreign file: safetensors raises several types
        first = first_line(err)
        raise CheckpointError(f"{weights}: cannot be read into {shape.describe()} ({first})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: does not match the shape in meta.json (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    return LoadedModel(model=model.to(device).eval(), tokenizer=tokenizer, source=ckpt, meta=meta, config=cfg)


def raw_shape_fields(ckpt: Path) -> dict[str, Any]:
    """The shape fields a checkpoint records, as stored (unknown fields kept, for the export checks)."""
    from gradus.model.gpt import SHAPE_KEY

    try:
        from safetensors import safe_open

        with safe_open(str(CheckpointFiles(ckpt).model), framework="pt") as f:
            stored = (f.metadata() or {}).get(SHAPE_KEY)
        if stored:
            return dict(json.loads(stored))
    except Exception:  # noqa: BLE001 - unreadable weights are reported by the loader itself
        pass
    return dict(_read_json(CheckpointFiles(ckpt).meta).get("model_shape") or {})


def _shape_of(weights: Path, meta: dict, cfg, tokenizer):
    """The model shape: weights metadata, else meta.json, else the config; RoPE factor of the saved stage."""
    from gradus.model.gpt import read_shape
    from gradus.sizes import ModelShape, resolve_shape

    try:
        shape = read_shape(weights)
    except CheckpointError:
        stored = meta.get("model_shape")
        if isinstance(stored, dict):
            shape = ModelShape.from_dict(stored)
        elif cfg is not None:
            shape = resolve_shape(cfg.model, tokenizer.vocab_size)
        else:
            raise CheckpointError(f"{weights.parent}: no model shape (neither in meta.json nor a config.yaml)") from None
    # The factor the checkpoint records it was trained at; a checkpoint written before it did: its stage's, from
    # the run's config (None when that cannot be planned: the stored shape's then).
    recorded = meta.get("rope_scaling")
    scaling = float(recorded) if isinstance(recorded, int | float) else _stage_rope_scaling(meta, cfg)
    if scaling is not None and scaling != shape.rope_scaling:
        shape = shape.with_(rope_scaling=scaling)
    return shape


def _stage_rope_scaling(meta: dict, cfg) -> float | None:
    """The RoPE interpolation factor of the stage a checkpoint was saved in (None when unknown)."""
    if cfg is None or not isinstance(meta.get("stage"), int):
        return None
    try:
        from gradus.curriculum import resolve_schedule

        stages = resolve_schedule(cfg).stages
        return float(stages[meta["stage"]].rope_scaling) if 0 <= meta["stage"] < len(stages) else None
    except Exception:  # noqa: BLE001 - a config this gradus cannot plan any more: keep the stored factor
        return None


def load_run_tokenizer(ckpt: Path, meta: dict, cfg):
    """The tokenizer a checkpoint was trained with: the run's ``tokenizer.json`` (beside ``checkpoints/``
    or in the checkpoint itself), checked against the identity in ``meta.json``."""
    from tokenizers import Tokenizer as HFTokenizer

    from gradus.data.tokenizer import Tokenizer

    ident = meta.get("tokenizer") or {}
    files = CheckpointFiles(ckpt)
    candidates = [files.tokenizer, files.run.tokenizer]  # in the checkpoint itself, else the run's
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        if cfg is None:
            raise ConfigError(f"{ckpt}: no tokenizer.json in the checkpoint or its run directory")
        from gradus.data import load_tokenizer

        tok = load_tokenizer(cfg.data)
    else:
        backend = HFTokenizer.from_file(str(found))
        eos = ident.get("eos_id")
        if eos is None:
            from gradus.data.tokenizer import find_eos_id

            eos = find_eos_id(backend, cfg.data.tokenizer.eos_token if cfg else None, str(found))
        tok = Tokenizer(backend, eos_id=int(eos), kind=ident.get("kind", "file"),
                        name_or_path=ident.get("name_or_path", str(found)))
        # The chat template the run's chat sources rendered with: recorded beside its tokenizer.json (since
        # 0.3), else (an older run) read again from where its tokenizer came from.
        from gradus.data.chat import find_chat_template

        tok.chat_template = find_chat_template(str(found))
        if tok.chat_template is None and cfg is not None:
            tok.chat_template = find_chat_template(cfg.data.tokenizer.name_or_path)
    chats = [s for s in cfg.data.sources if s.kind == "chat"] if cfg is not None else []
    if chats and all(s.chat_template == "builtin" for s in chats):
        # Its chat records were rendered with the built-in template whatever the tokenizer carries: serve that one
        # (the export writes the built-in template where the tokenizer has none).
        tok.chat_template = None
    if ident.get("sha256") and ident["sha256"] != tok.identity()["sha256"]:
        raise CheckpointError(
            f"{found or 'the configured tokenizer'} is not the tokenizer {ckpt} was trained with "
            f"(sha256 {ident['sha256'][:12]} expected); restore the run's tokenizer.json"
        )
    return tok


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path.parent}: not a checkpoint ({path.name} missing)") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None


def _read_config(ckpt: Path):
    """The run's config (the checkpoint's copy, else the run's), or None when neither is readable."""
    from gradus.config import load_config

    for candidate in (CheckpointFiles(ckpt).config, CheckpointFiles(ckpt).run.config):
        if candidate.is_file():
            try:
                return load_config(candidate)
            except Exception:  # noqa: BLE001 - an old config this gradus rejects: the weights still load
                continue
    return None
