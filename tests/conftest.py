"""Shared test setup: never reach the network; corpora come from ../shared/data beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must never reach the network: make every Hugging Face library fail fast instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The team's corpora (WikiText-2, GSM8K, Python code, tinyshakespeare, web sample, GPT-2 tokenizer)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: tests read corpora from ../shared/data beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(shared_data: Path) -> Path:
    """Folder with GPT-2's vocab.json and merges.txt."""
    return shared_data / "gpt2-tokenizer"
