"""Errors meant for people: one line each, naming the file, field or value and how to fix it.

The CLI catches :class:`GradusError`, prints ``gradus: error: <message>`` (one line per problem) and exits
with :attr:`GradusError.exit_code`; no traceback unless ``--debug``.
"""

from __future__ import annotations


class GradusError(Exception):
    """A problem the user can fix. ``problems`` holds one line per problem (all reported at once).
    ``silent``: exit with the code but print nothing, because another process of the same torchrun launch
    says it (:meth:`gradus.train.runtime.Runtime.raise_together`). ``agreed``: every rank raised it at the same
    point (after agreeing over ranks), so they can leave the process group together (a rank that tears its
    gloo threads down while another still talks to it can make that one abort before it prints)."""

    exit_code: int = 1

    def __init__(self, *problems: str, silent: bool = False, agreed: bool = False):
        self.problems = [p for p in problems if p] or ["unknown error"]
        self.silent = silent  # print nothing: another process of the same launch says it
        self.agreed = agreed  # raised on every rank together: they may wait for each other before leaving
        super().__init__("\n".join(self.problems))


class ConfigError(GradusError):
    """Bad input: a config file, a field value, a preset name, a command-line flag. Exit code 2."""

    exit_code = 2


class DataError(GradusError):
    """A data source that cannot be read, is empty, or holds malformed records."""

    exit_code = 2


class CheckpointError(GradusError):
    """A missing, corrupt or incompatible checkpoint, or one that could not be written. Exit code 2 (the
    user fixes it: a file, the disk, ``--out``)."""

    exit_code = 2


class DivergedError(GradusError):
    """Training diverged: the guard gave up (non-finite losses past its rollbacks). Exit code 3."""

    exit_code = 3


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, shortened to 160 characters (library errors can span
    pages), or its type's name when it has no message: what a one-line error quotes of its cause."""
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
