"""``gradus report RUN [--out DIR] [--smooth W]``.

Reads ``RUN/metrics.jsonl`` and writes PNGs plus one self-contained ``report.html`` (pictures inlined)
into ``RUN/report/`` or ``--out``: loss against tokens and time with the stages as bands, the LR /
sequence length / batch schedule, tokens/s per stage, validation at the stage's length against the
reference length, and per-source validation where the run recorded it. Needs matplotlib (``plot`` extra).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradus report``."""
    parser.add_argument("run", metavar="RUN", help="run directory (holds metrics.jsonl)")
    parser.add_argument("--out", metavar="DIR", help="where to write (default RUN/report)")
    parser.add_argument("--smooth", type=float, default=0.6, metavar="W",
                        help="train-loss smoothing in [0, 1), read like TensorBoard's weight but centred, so the "
                             "curve does not lag: half-width ≈ W/(1-W) points (default 0.6: 2 each side)")


def run(args: argparse.Namespace) -> int:
    """Write the pictures and the page; print where."""
    from gradus.report.page import write_report

    page = write_report(args.run, args.out, args.smooth)
    pngs = sorted(p.name for p in page.parent.glob("*.png"))
    print(f"wrote {page} ({page.stat().st_size // 1024} KB, self-contained) and {len(pngs)} pictures: {', '.join(pngs)}")
    return 0
