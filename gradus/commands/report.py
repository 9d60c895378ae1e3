"""``gradus report RUN`` (work in progress)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradus report``."""
    parser.add_argument("run", metavar="RUN")


def run(args: argparse.Namespace) -> int:
    """Write the report."""
    return 0
