"""The run's storage: what a run keeps on disk and how it gets there safely.

``run_dir`` spells every name in a run directory and a checkpoint folder and owns the folder's lock and
``status.json``; ``checkpoint`` writes and reads a checkpoint atomically (written aside, renamed) with the
compatibility signature and the ``{name: part}`` save/restore loop; ``sharded_checkpoint`` does the same for
FSDP, every rank writing its own shard. None of them imports the trainer. Import the modules themselves
(``from gradus.train.storage.run_dir import RunDir``): this file re-exports nothing, so importing one of them
loads only what it needs.
"""
