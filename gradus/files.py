"""File modes: what gradus writes is readable like any file the user creates (0644 under umask 022).

Some writers (``tempfile.mkstemp``, safetensors) create files 0600, which leaves weights and tokenizers
unreadable to the group and the other users a shared machine's umask means to let in.
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
