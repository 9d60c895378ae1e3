"""Stopping on a signal: SIGTERM or SIGINT asks the run to stop after the current step, with a checkpoint.

The handlers only record the request (:attr:`StopRequest.reason`); the loop asks :meth:`StopRequest.agreed`
after every step, so a run is never cut off inside a step or a checkpoint write.
"""

from __future__ import annotations

import signal

from gradus.train.runtime import Runtime


class StopRequest:
    """A stop asked for by a signal (or by the code: set :attr:`reason`), and the handlers that record it."""

    def __init__(self) -> None:
        self.reason: str | None = None
        """Why the run is to stop (the run's final reason); None while nobody asked."""
        self._previous: dict = {}

    def install(self) -> None:
        """Handle SIGTERM and SIGINT by recording a stop; the previous handlers are kept for :meth:`restore`."""
        def handler(signum, _frame):
            self.reason = f"stopped by {signal.Signals(signum).name}; checkpoint saved"

        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
            pass

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced."""
        for sig, h in self._previous.items():
            signal.signal(sig, h)
        self._previous = {}

    def agreed(self, rt: Runtime) -> bool:
        """Whether to stop after this step. Under DDP a signal can reach one rank a step before another:
        every rank asks all the others, every step, so all stop at the same step (a rank that stopped alone
        would wait in the checkpoint's all-gather while the others waited in the next step's all-reduce)."""
        if not rt.distributed:
            return self.reason is not None
        stop = rt.any_over_ranks(self.reason is not None)
        if stop and self.reason is None:
            self.reason = "stopped: another rank was signalled; checkpoint saved"
        return stop
