"""The validation split: held-out documents, never trained on, cut into windows of any length.

A document is held out when a hash of its text falls below ``validation.fraction``
(:func:`gradus.data.reader.is_heldout`); training readers skip exactly those documents, so no held-out
document is ever trained on. A source with ``validation_split`` (a split name for a hub dataset, a path or
glob for local files) uses that instead, and its training reader skips nothing.

The first ``validation.max_documents`` held-out documents of each source (in source order, whatever the
rank) are tokenised once; every call cuts the same tokens into windows, so evaluations are comparable.
"""

from __future__ import annotations

import logging

import numpy as np

from gradus.config import DataConfig
from gradus.data.chat import encode_marked, special_ids
from gradus.data.sources import open_reader

log = logging.getLogger("gradus.data")

MAX_TOKENS_PER_SOURCE = 1 << 22
"""Held-out tokens kept per source at most (a huge held-out document is cut there)."""


def heldout_tokens(cfg: DataConfig, tokenizer) -> dict[str, np.ndarray]:
    """Per text source: its held-out documents tokenised and joined (each followed by EOS); sources without
    held-out documents, and chat sources (:func:`heldout_records`), are left out."""
    out: dict[str, np.ndarray] = {}
    for src in cfg.sources:
        if src.kind == "chat":
            continue
        texts, eos = _heldout_texts(cfg, src, tokenizer)
        if texts:
            out[src.name] = np.concatenate(tokenizer.encode_arrays(texts, eos))[:MAX_TOKENS_PER_SOURCE]
    return out


def heldout_records(cfg: DataConfig, tokenizer) -> dict[str, list[np.ndarray]]:
    """Per chat source: its held-out records, tokenised with their train flags (one row each when
    evaluated, so the validation loss is the loss on assistant tokens, as in training)."""
    out: dict[str, list[np.ndarray]] = {}
    for src in cfg.sources:
        if src.kind != "chat":
            continue
        texts, _ = _heldout_texts(cfg, src, tokenizer)
        if texts:
            out[src.name] = encode_marked(tokenizer.backend, texts, tokenizer.eos_id, tokenizer.dtype,
                                          special_ids(tokenizer.backend))
    return out


def _heldout_texts(cfg: DataConfig, src, tokenizer) -> tuple[list[str], list[bool]]:
    """The first ``validation.max_documents`` held-out documents of a source (pieces and their ends)."""
    vcfg = cfg.validation
    if vcfg.fraction <= 0 and not src.validation_split:
        return [], []
    reader = open_reader(src, role="validation", holdout=vcfg.fraction, retries=cfg.retries,
                         backoff=cfg.retry_backoff, tokenizer=tokenizer)
    # Finding max_documents held-out documents takes about max_documents / fraction records; stop
    # looking after twice that (a streamed hub dataset is not read to its end for this).
    scan_limit = None if src.validation_split else int(2 * vcfg.max_documents / vcfg.fraction) + 1
    texts: list[str] = []
    eos: list[bool] = []
    docs = chars = 0
    for piece in reader.scan(None):
        if piece.end_of_pass:
            break
        if piece.first:
            if docs >= vcfg.max_documents:
                break
            docs += 1
        texts.append(piece.text)  # type: ignore[arg-type]
        eos.append(piece.last)
        chars += len(piece.text)  # type: ignore[arg-type]
        if chars > 8 * MAX_TOKENS_PER_SOURCE:
            break
        if scan_limit is not None and piece.cursor.get("seen", 0) >= scan_limit:
            break
    if not texts:
        # Said with the fix: a small source whose documents all hash into training would otherwise just be
        # missing from every evaluation.
        where = (f"its validation_split {src.validation_split} is empty" if src.validation_split else
                 f"none of the documents read hash below data.validation.fraction={vcfg.fraction:g} (a small "
                 "source); raise the fraction (e.g. 0.05) or give the source a validation_split")
        log.warning("source %s: no held-out documents, so it is left out of validation: %s", src.name, where)
    return texts, eos


def windows(tokens: np.ndarray, seq_len: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` non-overlapping windows of ``seq_len + 1`` tokens: (inputs, labels) int64."""
    idx = (np.arange(count) * seq_len)[:, None] + np.arange(seq_len + 1)[None, :]
    win = tokens[idx].astype(np.int64)
    return win[:, :-1], win[:, 1:]
