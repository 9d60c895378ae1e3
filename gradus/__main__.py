"""``python -m gradus``: the same as the ``gradus`` command (for environments whose scripts folder is not on PATH)."""

from gradus.cli import entry

if __name__ == "__main__":
    entry()
