"""File modes and durability: what gradus writes is readable like any file the user creates (0644 under
umask 022), and a folder's new entries survive a crash once it says so.

Some writers (``tempfile.mkstemp``, safetensors) create files 0600, which leaves weights and tokenizers
unreadable to the group and the other users a shared machine's umask means to let in. An atomic save
(written aside, renamed) is durable only once the folder holding the new name is flushed too
(:func:`fsync_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back: ``os`` has no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_readable(path: str | Path) -> None:
    """Give ``path`` the mode a plain ``open(path, "w")`` would have: 0666 less the umask."""
    os.chmod(path, 0o666 & ~current_umask())


def fsync_dir(path: str | Path) -> None:
    """Flush folder ``path`` (its entries: a file created or renamed in it) to disk. Best effort: a file
    system or platform that cannot open or fsync a folder is left as it is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
