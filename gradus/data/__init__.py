"""The streaming data pipeline: sources → tokenizer → per-stage mix → packing → batches (layer 2).

What the trainer uses::

    tok = load_tokenizer(cfg.data, run_dir)                  # fixed for the run; tok.identity() goes in checkpoints
    schedule = resolve_schedule(cfg)                         # gradus.curriculum: frozen, pure
    pipe = DataPipeline(cfg.data, tok, schedule, seed=cfg.train.seed, rank=0, world_size=1)
    batch = pipe.next_batch(state_at(schedule, step, tokens))    # Batch: inputs, labels [rows, seq_len]
    pipe.state_dict() / pipe.load_state_dict(d)               # exact resume
    pipe.validation_batches(seq_len, tokens, batch_size)      # held-out documents only
    pipe.metrics(); pipe.close()

Modules: ``sources`` (which reader a source opens), ``reader`` (pieces, cursors and the rules every
reader shares), ``local_files`` (JSONL/JSON/Parquet/text files), ``hf_stream`` (Hugging Face streaming with
retries), ``builtin`` (offline corpora), ``tokenizer``, ``workers`` (tokenising processes), ``mixture``
(feeds, shuffle buffer, mixer), ``packing``, ``validation``, ``pipeline``. Nothing here imports the model or the trainer, and torch is not needed (numpy arrays out).
"""

from gradus.data.pipeline import Batch, DataPipeline
from gradus.data.tokenizer import Tokenizer, check_identity, load_tokenizer, train_tokenizer

__all__ = ["Batch", "DataPipeline", "Tokenizer", "check_identity", "load_tokenizer", "train_tokenizer"]
