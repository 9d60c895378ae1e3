"""This process's resident memory: one reading (:func:`resident_bytes`) and a sampler over a block
(:class:`RssSampler`), where CPU training has no allocator statistics.

Pure Python, no torch, and nothing else of gradus: the runtime's host-memory budget, the throughput
measurement of ``gradus plan --measure`` and the benchmarks all read memory here, so none of them has to
import another for it (``train.runtime`` reading it from ``train.measure`` closed an import circle
build → runtime → measure → build).
"""

from __future__ import annotations

import os
import threading
import time


def resident_bytes() -> int:
    """This process's resident set size in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class RssSampler:
    """Resident memory of this process while a block runs (CPU has no allocator statistics): samples
    /proc/self/statm every ``period`` seconds. Process-wide, so it is an upper bound for the model's share.

    ``peak`` is the highest sample; with ``keep=True`` every sample is kept, timestamped, so the peak of
    any stretch of the block can be read off afterwards (:meth:`peak_between`)."""

    def __init__(self, period: float = 0.002, keep: bool = False) -> None:
        self.peak = 0
        self.period = period
        self.samples: list[tuple[float, int]] = []
        self._keep = keep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def rss(self) -> int:
        """Current resident set size in bytes (0 where /proc is missing)."""
        return resident_bytes()

    def _sample(self) -> None:
        value = self.rss()
        self.peak = max(self.peak, value)
        if self._keep:
            self.samples.append((time.perf_counter(), value))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period)

    def peak_between(self, t0: float, t1: float) -> int:
        """Highest kept sample in [t0, t1] (the one nearest to ``t1`` when none falls inside)."""
        inside = [r for t, r in self.samples if t0 <= t <= t1]
        if inside:
            return max(inside)
        return min(self.samples, key=lambda s: abs(s[0] - t1))[1] if self.samples else 0

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
