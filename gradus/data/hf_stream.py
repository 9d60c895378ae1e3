"""A Hugging Face dataset streamed from the hub, with retries that keep the position.

Why hub datasets go through ``datasets`` (streaming, ``split_dataset_by_node`` sharding, its
``state_dict`` for positions — checked by a test rather than trusted) while local files do not: a hub
corpus is usually too large to download whole before a run, and the library already streams and shards
it. What it does not do is survive a dropped connection mid-run, so :class:`HFReader` retries network
faults with exponential backoff from the last position, and turns every other fault (a missing dataset, a
bad config, offline without a local copy) into one line naming the dataset.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

from gradus.config import SourceConfig
from gradus.data.reader import Cursor, RawRecord, Reader, Shard, one_line
from gradus.errors import DataError

log = logging.getLogger("gradus.data")

HF_STATE_EVERY = 64
"""A Hugging Face source saves the library's ``state_dict`` every this many rows (and counts the rest)."""


def load_hf_dataset(cfg: SourceConfig, split: str):
    """``datasets.load_dataset(..., streaming=True)`` for a hub source (a seam tests replace)."""
    import datasets

    return datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=split, streaming=True)


def _offline() -> bool:
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def _is_network_error(exc: BaseException) -> bool:
    """A fault worth retrying: connection, timeout, server hiccup; not a missing dataset or bad config."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if type(exc).__name__ in ("DatasetNotFoundError", "DataFilesNotFoundError", "EmptyDatasetError"):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    module = type(exc).__module__ or ""
    return module.split(".")[0] in ("aiohttp", "requests", "urllib3", "httpx", "httpcore", "fsspec", "huggingface_hub")


class HFReader(Reader):
    """A Hugging Face dataset, streamed. Sharded by ``split_dataset_by_node``; positions use the
    library's ``state_dict`` every :data:`HF_STATE_EVERY` rows plus a row count; network faults are
    retried with exponential backoff from the last position."""

    shard_by_index = False

    def __init__(self, cfg: SourceConfig, shard: Shard = Shard(), role: str = "train", holdout: float = 0.0,
                 split: str | None = None, retries: int = 5, backoff: float = 2.0):
        super().__init__(cfg, shard, role, holdout)
        self.split = split or cfg.split
        self.retries = retries
        self.backoff = backoff

    def describe(self) -> str:
        """The dataset id, config and split."""
        conf = f", config {self.cfg.dataset_config!r}" if self.cfg.dataset_config else ""
        return f"Hugging Face dataset {self.cfg.dataset!r}{conf}, split {self.split!r}"

    def _open(self):
        try:
            ds = load_hf_dataset(self.cfg, self.split)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated into one line naming the dataset
            if isinstance(exc, ConnectionError) and (_offline() or "offline" in str(exc).lower()):
                raise DataError(
                    f"source {self.name!r}: {self.describe()} is not available offline "
                    f"(HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set) and there is no local copy; go online, "
                    f"or download it and point the source's path at the files"
                ) from None
            if _is_network_error(exc):
                raise
            raise DataError(f"source {self.name!r}: cannot open {self.describe()}: {one_line(exc)}") from None
        if self.shard.count > 1:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(ds, rank=self.shard.index, world_size=self.shard.count)
        return ds

    def _records(self, cursor: Cursor) -> Iterator[RawRecord]:
        n = cursor.get("n", 0)
        ds_state = cursor.get("ds_state")
        ds_n = cursor.get("ds_n", 0)
        failures = 0
        while True:
            try:
                ds = self._open()
                if ds_state is not None:
                    ds.load_state_dict(ds_state)
                it = iter(ds)
                for _ in range(n - ds_n):  # rows after the saved library state were counted, not saved
                    next(it)
                for row in it:
                    n += 1
                    failures = 0
                    if n - ds_n >= HF_STATE_EVERY:
                        ds_state, ds_n = ds.state_dict(), n
                    yield RawRecord(n - 1, {"n": n, "ds_state": ds_state, "ds_n": ds_n}, row,
                               f"{self.cfg.dataset} ({self.split}) row {n - 1}")
                return
            except StopIteration:
                return
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - network faults are retried, the rest reported
                if not _is_network_error(exc):
                    raise DataError(f"source {self.name!r}: reading {self.describe()}: {one_line(exc)}") from None
                failures += 1
                if failures > self.retries:
                    after = f" after {self.retries} retries" if self.retries else ""
                    raise DataError(
                        f"source {self.name!r}: {self.describe()} unreachable{after} ({one_line(exc)}); "
                        f"check the network or the dataset id"
                    ) from None
                delay = self.backoff * 2 ** (failures - 1)
                log.warning("source %s: %s; retry %d/%d in %.1fs from row %d", self.name, one_line(exc),
                            failures, self.retries, delay, n)
                time.sleep(delay)
