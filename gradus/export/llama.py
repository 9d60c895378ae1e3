"""gradus GPT <-> Hugging Face Llama layout: the config fields and the tensor names, both ways.

Pure mapping, no file I/O. The two architectures are the same network, part by part:

=============================  ===========================================  ==============================
gradus (:mod:`gradus.model.gpt`)  Llama (``LlamaForCausalLM``)                  why they agree
=============================  ===========================================  ==============================
``tok_emb``                    ``model.embed_tokens``
``blocks.i.attn_norm``         ``model.layers.i.input_layernorm``            RMSNorm, same eps, gain only
``blocks.i.attn.{q,k,v,o}_proj``  ``model.layers.i.self_attn.{q,k,v,o}_proj``   no biases; GQA repeats kv head
                                                                             h // (H/K) in both
``blocks.i.mlp_norm``          ``model.layers.i.post_attention_layernorm``
``blocks.i.mlp.{gate,up,down}``   ``model.layers.i.mlp.{gate,up,down}_proj``  down(silu(gate(x)) · up(x))
``norm``                       ``model.norm``
``lm_head``                    ``lm_head`` (left out when tied)              ``tie_word_embeddings``
=============================  ===========================================  ==============================

RoPE needs no permutation: gradus rotates the two *halves* of each head (``_rotate_half``, angles
concatenated ``[a, a]``), which is exactly Llama's ``rotate_half`` layout; Meta's original checkpoints
rotate interleaved pairs and need the q/k row permutation the HF conversion script applies, gradus's do
not. gradus's position interpolation (positions divided by ``rope_scaling``) is Llama's ``linear`` RoPE
scaling with ``factor = rope_scaling``.
"""

from __future__ import annotations

import re
from typing import Any

from gradus.errors import ConfigError
from gradus.sizes import ModelShape

LLAMA_ARCHITECTURE = "LlamaForCausalLM"
"""The ``architectures`` entry of an exported ``config.json``."""

_BLOCK_PARTS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
_TOP = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight"}
_GPT_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF_BLOCK = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_HF_PARTS = {v: k for k, v in _BLOCK_PARTS.items()}
_HF_TOP = {v: k for k, v in _TOP.items()}


def llama_name(gpt_name: str) -> str | None:
    """The Llama tensor name of a gradus GPT tensor name, or None when it has no place in the layout."""
    if gpt_name in _TOP:
        return _TOP[gpt_name]
    m = _GPT_BLOCK.match(gpt_name)
    if m and m.group(2) in _BLOCK_PARTS:
        return f"model.layers.{m.group(1)}.{_BLOCK_PARTS[m.group(2)]}"
    return None


def gpt_name(llama: str) -> str | None:
    """The gradus GPT tensor name of a Llama tensor name, or None when gradus has no such tensor."""
    if llama in _HF_TOP:
        return _HF_TOP[llama]
    m = _HF_BLOCK.match(llama)
    if m and m.group(2) in _HF_PARTS:
        return f"blocks.{m.group(1)}.{_HF_PARTS[m.group(2)]}"
    return None


def export_problems(shape_fields: dict[str, Any], tensor_names: list[str]) -> list[str]:
    """Why a model cannot be written in the Llama layout (empty when it can): a shape field Llama has no
    equivalent for (a model from a newer gradus, say) or a tensor with no place in the layout."""
    known = set(ModelShape.__dataclass_fields__)
    problems = [
        f"model shape field {k}={v!r} has no equivalent in the Llama layout; export supports only "
        f"{', '.join(sorted(known))}"
        for k, v in shape_fields.items() if k not in known
    ]
    stray = [n for n in tensor_names if llama_name(n) is None]
    if stray:
        problems.append(
            f"tensor {stray[0]!r}{f' (and {len(stray) - 1} more)' if len(stray) > 1 else ''} has no place in "
            f"the Llama layout; this model cannot be exported as LlamaForCausalLM"
        )
    return problems


def llama_config(shape: ModelShape, *, eos_id: int, dtype: str = "float32") -> dict[str, Any]:
    """The ``config.json`` of a ``LlamaForCausalLM`` with the same forward pass as ``GPT(shape)``.

    RoPE is written both ways transformers has read it: ``rope_parameters`` (transformers 5) and
    ``rope_theta`` + ``rope_scaling`` (transformers 4), so either version loads the same model."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": shape.rope_theta}
    legacy_scaling = None
    if shape.rope_scaling != 1.0:
        rope = {"rope_type": "linear", "factor": shape.rope_scaling, "rope_theta": shape.rope_theta}
        legacy_scaling = {"rope_type": "linear", "type": "linear", "factor": shape.rope_scaling}
    return {
        "architectures": [LLAMA_ARCHITECTURE],
        "model_type": "llama",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.d_model,
        "intermediate_size": shape.ffn_hidden,
        "num_hidden_layers": shape.n_layers,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": shape.n_kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_seq_len,
        "rms_norm_eps": shape.norm_eps,
        "rope_theta": shape.rope_theta,
        "rope_scaling": legacy_scaling,
        "rope_parameters": rope,
        "tie_word_embeddings": shape.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        # gradus has no BOS: documents are separated by EOS, so EOS doubles as the start token.
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": dtype,
    }


def shape_from_llama_config(cfg: dict[str, Any], where: str) -> ModelShape:
    """The gradus :class:`ModelShape` of a Llama ``config.json`` (the inverse of :func:`llama_config`);
    a config gradus's GPT cannot express is a one-line :class:`ConfigError` naming the field."""
    def bad(field: str, value: Any, why: str) -> ConfigError:
        return ConfigError(f"{where}: {field}={value!r}: {why}; gradus can start only from a plain Llama model")

    model_type = cfg.get("model_type")
    if model_type != "llama":
        raise bad("model_type", model_type, "not a Llama model")
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise bad("hidden_act", act, "gradus's MLP is SwiGLU")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise bad(flag, cfg[flag], "gradus has no biases")
    if cfg.get("pretraining_tp", 1) not in (1, None):
        raise bad("pretraining_tp", cfg["pretraining_tp"], "only 1 is supported")
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or d // heads
    if head_dim * heads != d:
        raise bad("head_dim", head_dim, f"gradus needs head_dim × num_attention_heads = hidden_size ({d})")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "linear"):
        raise bad("rope type", kind, "gradus supports plain RoPE and linear position interpolation only")
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    return ModelShape(
        n_layers=cfg["num_hidden_layers"],
        d_model=d,
        n_heads=heads,
        n_kv_heads=cfg.get("num_key_value_heads") or heads,
        ffn_hidden=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        max_seq_len=cfg.get("max_position_embeddings", 2048),
        rope_theta=float(theta),
        rope_scaling=float(rope.get("factor", 1.0)) if kind == "linear" else 1.0,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
    )
