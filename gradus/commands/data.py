"""`gradus data` (not built yet)."""

from __future__ import annotations

import argparse

from gradus.errors import GradusError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of this command."""


def run(args: argparse.Namespace) -> int:
    """Run the command."""
    raise GradusError("gradus data is not built yet")
