"""Write a gradus GPT as a Hugging Face ``transformers`` Llama directory, and read one back.

``export_hf(model, tokenizer, out)`` writes::

    out/config.json               LlamaForCausalLM config (see gradus.export.llama)
    out/generation_config.json    EOS as end and start token, greedy by default
    out/model.safetensors         Llama tensor names; a tied head stored once, as the embedding
    out/tokenizer.json            the run's tokenizer, unchanged
    out/tokenizer_config.json     PreTrainedTokenizerFast with its EOS (also used as BOS/pad/unk) and the
                                  chat template (the tokenizer's own, else gradus's built-in one)
    out/special_tokens_map.json
    out/gradus_export.json        where it came from: checkpoint, step, tokens, the gradus shape

Everything is written into a hidden sibling folder first and renamed into place, so a failed export
leaves nothing behind. Writing needs only ``safetensors`` and ``tokenizers``; loading the result needs
``transformers`` (the ``export`` extra). :func:`load_hf` is the inverse (``model.init_from``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from gradus.data.chat import BUILTIN_CHAT_JINJA, TOKENIZER_CONFIG
from gradus.errors import CheckpointError, ConfigError
from gradus.export.llama import export_problems, gpt_name, llama_config, llama_name, shape_from_llama_config

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""``--dtype`` choices and the torch dtype names written to config.json."""


def check_destination(out: Path, force: bool) -> None:
    """Refuse an existing non-empty ``out`` unless ``force`` (then it is replaced at the end)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--hf {out}: exists and is not a directory; choose another path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--hf {out}: directory exists and is not empty; pass --force to replace it or choose another")


def llama_state_dict(model) -> dict[str, Any]:
    """The model's tensors under their Llama names (contiguous CPU copies; a tied head left out)."""
    state = model.state_dict()
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight" and model.shape.tie_embeddings:
            continue  # the same tensor as the embedding; transformers re-ties it from tie_word_embeddings
        target = llama_name(name)
        assert target is not None, name  # export_problems has refused stray tensors already
        out[target] = tensor.detach().to("cpu").contiguous().clone()
    return out


ADDING_PROCESSORS = ("TemplateProcessing", "BertProcessing", "RobertaProcessing")
"""Post-processors that put special tokens around every encoding (a Llama-style ``<s> $A``)."""


def without_added_specials(tokenizer_json: str) -> str:
    """``tokenizer.json`` with any post-processor that adds special tokens replaced by one that adds none.

    gradus encodes without special tokens (documents end with EOS, nothing before them), and transformers
    applies the file's post-processor on every ``tokenizer(text)``, whatever ``add_bos_token`` says: a
    tokenizer that brought a BOS template would otherwise prefix every prompt with a token the model never saw.
    Processors that add nothing (GPT-2's ByteLevel offsets) are kept."""
    data = json.loads(tokenizer_json)
    plain = {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {}}

    def fixed(pp):
        if not isinstance(pp, dict):
            return pp
        if pp.get("type") in ADDING_PROCESSORS:
            return plain
        if pp.get("type") == "Sequence":
            return {**pp, "processors": [fixed(q) for q in pp.get("processors", [])]}
        return pp

    pp = data.get("post_processor")
    if fixed(pp) == pp:  # (the file as it was, byte for byte)
        return tokenizer_json
    data["post_processor"] = fixed(pp)
    return json.dumps(data, ensure_ascii=False)


def export_hf(
    model,
    tokenizer,
    out: str | Path,
    *,
    force: bool = False,
    dtype: str = "fp32",
    provenance: dict[str, Any] | None = None,
    shape_fields: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a :class:`gradus.model.GPT`) and ``tokenizer`` (a :class:`gradus.data.Tokenizer`)
    as a Llama directory at ``out`` (see the module docstring). ``shape_fields`` are the shape as stored
    in the checkpoint (unknown fields included) for the can-Llama-express-it check. Bad input is a
    one-line :class:`ConfigError` and nothing is written."""
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    names = list(model.state_dict())
    problems = export_problems(shape_fields if shape_fields is not None else model.shape.to_dict(), names)
    if problems:
        raise ConfigError(*problems)
    check_destination(out, force)

    torch_dtype = getattr(torch, DTYPES[dtype])
    tensors = {k: v.to(torch_dtype) for k, v in llama_state_dict(model).items()}
    shape = model.shape
    eos = tokenizer.eos_token
    config = llama_config(shape, eos_id=tokenizer.eos_id, dtype=DTYPES[dtype])
    files: dict[str, str] = {
        "config.json": json.dumps(config, indent=2) + "\n",
        "generation_config.json": json.dumps({
            "bos_token_id": tokenizer.eos_id, "eos_token_id": tokenizer.eos_id, "do_sample": False,
        }, indent=2) + "\n",
        "tokenizer.json": without_added_specials(tokenizer.to_json()),
        TOKENIZER_CONFIG: json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": eos, "eos_token": eos, "unk_token": eos, "pad_token": eos,
            "model_max_length": shape.max_seq_len,
            "add_bos_token": False, "add_eos_token": False,
            # Byte-level BPE decodes exactly; the default clean-up would change spaces before punctuation.
            "clean_up_tokenization_spaces": False,
            # The template chat records were trained with (stage D), for TRL and apply_chat_template.
            "chat_template": getattr(tokenizer, "chat_template", None) or BUILTIN_CHAT_JINJA,
        }, indent=2) + "\n",
        "special_tokens_map.json": json.dumps({
            "bos_token": eos, "eos_token": eos, "unk_token": eos, "pad_token": eos,
        }, indent=2) + "\n",
        "gradus_export.json": json.dumps({
            "gradus_shape": shape.to_dict(), **(provenance or {}),
        }, indent=2, default=str) + "\n",
    }

    parent = out.parent if str(out.parent) else Path(".")
    tmp = parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        # safetensors writes through a private temporary file (mode 0600); an export is meant to be
        # shared, so the weights get the same mode as the other files.
        os.chmod(tmp / "model.safetensors", (tmp / "config.json").stat().st_mode & 0o777)
        if out.exists():
            shutil.rmtree(out)  # --force, checked above
        os.replace(tmp, out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"--hf {out}: could not write the export ({err.strerror or err}); free disk space or choose another path") from None
    return out


# ------------------------------------------------------------------------------------- loading
def read_llama_tensors(directory: Path) -> dict[str, Any]:
    """Every tensor of a Hugging Face directory's safetensors weights (one file or an indexed set)."""
    from safetensors.torch import load_file

    single = directory / "model.safetensors"
    if single.is_file():
        files = [single]
    else:
        index = json.loads((directory / "model.safetensors.index.json").read_text(encoding="utf-8"))
        files = [directory / f for f in sorted(set(index["weight_map"].values()))]
    tensors: dict[str, Any] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except Exception as err:  # noqa: BLE001 - truncated or foreign files: one line for people
            raise CheckpointError(f"{f}: not a readable safetensors file ({type(err).__name__})") from None
    return tensors


def load_hf_weights(directory: str | Path, device: str = "cpu"):
    """A :class:`gradus.model.GPT` with the weights of a Llama directory (the inverse of
    :func:`export_hf`; what ``model.init_from`` loads). Weights of any float dtype become float32."""
    import torch

    from gradus.model.gpt import GPT

    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{directory}: not a Hugging Face model directory (config.json missing)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ConfigError(f"{cfg_path}: not valid JSON ({err})") from None
    shape = shape_from_llama_config(cfg, str(cfg_path))
    model = GPT(shape)
    state: dict[str, Any] = {}
    for name, tensor in read_llama_tensors(directory).items():
        target = gpt_name(name)
        if target is None:
            if name.endswith("rotary_emb.inv_freq"):
                continue  # derived from the config, saved by old transformers versions
            raise ConfigError(f"{directory}: tensor {name!r} has no place in a gradus GPT; only plain Llama models load")
        state[target] = tensor.to(torch.float32)
    if shape.tie_embeddings:
        state.setdefault("lm_head.weight", state.get("tok_emb.weight"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(f"{directory}: weights do not fit {shape.describe()}: {' '.join(first[:2])[:200]}") from None
    return model.to(device)


def load_hf(directory: str | Path, device: str = "cpu"):
    """``(GPT, Tokenizer)`` from a Llama directory with a ``tokenizer.json`` (EOS from its config)."""
    from tokenizers import Tokenizer as HFTokenizer

    from gradus.data.tokenizer import Tokenizer

    directory = Path(directory)
    model = load_hf_weights(directory, device)
    tok_path = directory / "tokenizer.json"
    if not tok_path.is_file():
        raise ConfigError(f"{directory}: no tokenizer.json; gradus reads fast (tokenizers) tokenizers only")
    cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    eos = cfg.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    backend = HFTokenizer.from_file(str(tok_path))
    if eos is None:
        raise ConfigError(f"{directory / 'config.json'}: no eos_token_id; gradus needs the end-of-document token")
    return model, Tokenizer(backend, eos_id=int(eos), kind="file", name_or_path=str(directory))


WEIGHT_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_hidden", "vocab_size", "tie_embeddings")
"""Shape fields that fix the weights: a run started from an exported model must agree on all of them
(context length, RoPE settings, dropout and eps may differ: they hold no weights)."""


def init_from(model, directory: str | Path) -> None:
    """Copy the weights of an exported (or any plain Llama) directory into ``model``, in place: the
    ``model.init_from`` hook for starting a run from an exported model. A weight-shape field that
    differs is a one-line ConfigError naming the ``model.`` fields to set."""
    loaded = load_hf_weights(directory, device="cpu")
    want, have = model.shape, loaded.shape
    diffs = [f"model.{f}={getattr(want, f)} but the directory's model has {getattr(have, f)}"
             for f in WEIGHT_FIELDS if getattr(want, f) != getattr(have, f)]
    if diffs:
        raise ConfigError(f"model.init_from={str(directory)!r}: " + "; ".join(diffs)
                          + "; set these model fields to match the exported model")
    model.load_state_dict(loaded.state_dict(), strict=True)  # non-persistent RoPE tables stay the model's own
