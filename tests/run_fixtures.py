"""Tiny runs on disk for the export / generate / eval / report tests, built without training.

A run directory is written exactly as the trainer lays it out (``checkpoints/step_N/`` with weights saved
by safetensors' ``save_model`` and no shape metadata, ``meta.json``, ``config.yaml``; ``tokenizer.json``
beside them), with a random-init model and a BPE trained in milliseconds on inline text, so the tests
need no corpora and no network.
"""

from __future__ import annotations

import json
from pathlib import Path

TEXT = (
    "The quick brown fox jumps over the lazy dog. Curriculum learning starts with short sequences and "
    "grows them. def add(a, b):\n    return a + b\n12 + 30 = 42. A model that leaves gradus can be "
    "loaded by transformers, sampled from and evaluated on any text. "
)


def tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE (EOS ``<|endoftext|>``) trained on :data:`TEXT`, as a gradus Tokenizer."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from gradus.data.tokenizer import Tokenizer

    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([TEXT] * 4, trainer)
    return Tokenizer(backend, eos_id=backend.token_to_id("<|endoftext|>"), kind="trained", name_or_path="test-bpe")


def tiny_model(tokenizer, seed: int = 0, **shape):
    """A random-init GPT over ``tokenizer``'s vocabulary (2 layers × 32 unless ``shape`` says otherwise)."""
    import torch

    from gradus.model import GPT
    from gradus.sizes import ModelShape

    fields = {"n_layers": 2, "d_model": 32, "n_heads": 4, "vocab_size": tokenizer.vocab_size, "max_seq_len": 64}
    fields.update(shape)
    torch.manual_seed(seed)
    model = GPT(ModelShape(**fields)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # gains of 1 would hide a norm mapped to the wrong place
                p.uniform_(0.5, 1.5)
            else:  # weights larger than GPT-2's init: sharp attention and logits that show any mix-up
                p.normal_(0.0, 0.25)
    return model


def run_config(stages: list[dict] | None = None, **model) -> dict:
    """A valid config (offline builtin sources) as plain data."""
    return {
        "name": "tiny",
        "model": {"preset": None, "n_layers": 2, "d_model": 32, "n_heads": 4, "max_seq_len": 64, **model},
        "data": {
            "sources": [{"name": "prose", "builtin": "python-docs"}, {"name": "math", "builtin": "arithmetic"}],
            "tokenizer": {"name_or_path": None, "train_vocab_size": 320},
            "validation": {"fraction": 0.2, "max_documents": 20, "tokens": 512},
        },
        "curriculum": {"stages": stages or [
            {"name": "s16", "tokens": 1024, "seq_len": 16, "tokens_per_batch": 256},
            {"name": "s32", "tokens": 1024, "seq_len": 32, "tokens_per_batch": 256},
        ]},
        "train": {"device": "cpu"},
        "logging": {"tensorboard": False},
    }


def write_run(root: Path, model, tokenizer, *, steps=(10,), stage: int = 1, best: bool = False,
              config: dict | None = None, shape_extra: dict | None = None) -> Path:
    """Lay out a run directory at ``root`` holding ``model`` as every checkpoint in ``steps``."""
    from safetensors.torch import save_model

    from gradus.config import dump_yaml, from_dict

    cfg_yaml = dump_yaml(from_dict(config or run_config()))
    root.mkdir(parents=True, exist_ok=True)
    tokenizer.save(root)
    (root / "config.yaml").write_text(cfg_yaml)
    for step in steps:
        ck = root / "checkpoints" / f"step_{step:08d}"
        ck.mkdir(parents=True)
        save_model(model, str(ck / "model.safetensors"))
        (ck / "config.yaml").write_text(cfg_yaml)
        (ck / "meta.json").write_text(json.dumps({
            "step": step, "tokens": step * 256, "stage": stage, "best_val_loss": None,
            "tokenizer": tokenizer.identity(),
            "model_shape": {**model.shape.to_dict(), **(shape_extra or {})},
        }))
    if best:
        import shutil

        shutil.copytree(root / "checkpoints" / f"step_{steps[0]:08d}", root / "checkpoints" / "best")
    return root
