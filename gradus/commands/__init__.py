"""One module per ``gradus`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

Command modules import torch only inside ``run`` so that ``gradus schedule``/``plan`` start fast and work
without a GPU stack. ``gradus.cli`` is the only place that reads ``sys.argv``.
"""
