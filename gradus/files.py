"""File modes and durability: what gradus writes is readable like any file the user creates (0644 under
umask 022), and a folder's new entries survive a crash once it says so.

Some writers (``tempfile.mkstemp``, safetensors) create files 0600, which leaves weights and tokenizers
unreadable to the group and the other users a shared machine's umask means to let in. An atomic save
(written aside, renamed) is durable only once the folder holding the new name is flushed too
(:func:`fsync_dir`). A file a command writes at the user's word (``--write FILE``) never replaces one that is
there (:func:`check_new_file`, checked before the work, and :func:`write_new_file`).
"""

from __future__ import annotations

import os
from pathlib import Path

from gradus.errors import ConfigError


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


def check_new_file(value: str | Path, flag: str) -> Path:
    """The path ``flag value`` names, checked before any work is done: a file gradus may create there.

    Nothing a user wrote is overwritten: an existing file (or a folder) at that path is refused with a
    one-line :class:`~gradus.errors.ConfigError` naming the flag and the fix, as is a folder part that is
    a file. A missing folder is fine (:func:`write_new_file` creates it)."""
    path = Path(value)
    try:
        if path.is_dir():
            raise ConfigError(f"{flag} {path}: that is a folder; give a file name, e.g. {path / 'mine.yaml'}")
        if path.exists():
            raise ConfigError(f"{flag} {path}: the file exists; give a new path or remove it first "
                              "(nothing is overwritten)")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
                break
    except OSError as err:  # a folder on the way that this user may not read
        raise ConfigError(f"{flag} {path}: cannot check it ({err.strerror}); choose another path") from None
    return path


def write_new_file(path: str | Path, text: str, flag: str) -> Path:
    """Create ``path`` (and its missing folders) holding ``text``; refuse, as :func:`check_new_file` does,
    when something appeared there meanwhile, and turn an OS error into one line naming ``flag``."""
    path = check_new_file(path, flag)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as f:  # "x": never replace a file made since the check
            f.write(text)
    except FileExistsError:
        raise ConfigError(f"{flag} {path}: the file exists; give a new path or remove it first "
                          "(nothing is overwritten)") from None
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot write it ({err.strerror}); choose another path") from None
    return path
