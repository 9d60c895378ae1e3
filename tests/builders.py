"""The tests' tiny configs over a corpora folder laid out like ../shared/data (the ``offline_data`` fixture),
in one place (tests import it as ``builders``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# Three token-budget stages 16 -> 32 -> 64 at 256 tokens per step: 6 + 5 + 5 steps.
TINY_STAGES = [
    {"name": "s16", "tokens": 6 * 256, "seq_len": 16, "tokens_per_batch": 256, "mix": {"wiki": 0.8, "math": 0.2}},
    {"name": "s32", "tokens": 5 * 256, "seq_len": 32, "tokens_per_batch": 256, "mix": {"wiki": 0.5, "math": 0.5}},
    {"name": "s64", "tokens": 5 * 256, "seq_len": 64, "tokens_per_batch": 256, "mix": {"wiki": 0.3, "math": 0.7}},
]

TINY_BPE = {"name_or_path": None, "train_vocab_size": 512, "train_max_documents": 200}
"""A 512-token byte-level BPE trained on the two sources (cached after the first test trains it)."""


def tiny_config(shared: Path, tokenizer: str | None = None, stages: list[dict] | None = None) -> dict:
    """A tiny GPT on ``shared``'s WikiText-2 + GSM8K as plain data, so tests can tweak it before validating.

    ``tokenizer``: a tokenizer.json path, or None to train :data:`TINY_BPE`."""
    return {
        "model": {"preset": "tiny", "max_seq_len": 64},
        "data": {
            "sources": [
                {"name": "wiki", "path": str(shared / "wikitext-2" / "train.jsonl")},
                {"name": "math", "path": str(shared / "gsm8k" / "train.jsonl"), "template": "{question}\n{answer}"},
            ],
            "tokenizer": {"name_or_path": tokenizer} if tokenizer else dict(TINY_BPE),
            "shuffle_buffer": 8,
            "validation": {"tokens": 1024, "max_documents": 20},
        },
        "curriculum": {"stages": [dict(s) for s in (stages or TINY_STAGES)], "schedule": "per_stage"},
        "optim": {"base_lr": 3e-3},
        # One torch thread: tiny models gain nothing from two, and on a busy 2-core box two threads stall.
        "train": {"seed": 3, "device": "cpu", "threads": 1},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def load_benchmark(name: str, folder: str = "") -> ModuleType:
    """``benchmarks/<name>.py`` (``benchmarks/<folder>/<name>.py``) as a module (the folder is not a package),
    registered in ``sys.modules`` under ``name``: dataclasses look their module up by name, and a script that
    imports a sibling (``import curriculum_speedup``) then gets the same module. Each script puts its own folder
    (the GPU scripts: benchmarks/, for ``common``) on ``sys.path``."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
