"""Arguments shared by the commands that take a config: ``CONFIG | --preset NAME`` and ``--set k=v``."""

from __future__ import annotations

import argparse
from pathlib import Path

from gradus.config import GradusConfig, load_config
from gradus.errors import ConfigError
from gradus.presets import list_presets, preset_path


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Add the positional CONFIG, ``--config``, ``--preset`` and repeatable ``--set key=value``."""
    parser.add_argument("config", nargs="?", help="YAML config file")
    parser.add_argument("--config", dest="config_flag", metavar="FILE", help="YAML config file")
    parser.add_argument("--preset", help="a shipped preset by name (see gradus schedule --list)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.max_steps=100 --set curriculum.stages[0].seq_len=32",
    )
    parser.set_defaults(_config_required=required)


def config_source(args: argparse.Namespace, default_preset: str | None = None) -> str | None:
    """The path of the config the arguments name (a file or a preset), or None."""
    flag = getattr(args, "config_flag", None)
    if args.config and flag and args.config != flag:  # one would be silently ignored
        raise ConfigError(f"two config files given ({args.config} and --config {flag}); give one")
    path = args.config or flag
    if path and args.preset:
        raise ConfigError(f"give either a config file ({path}) or --preset {args.preset}, not both")
    if args.preset:
        return str(preset_path(args.preset))
    if path:
        return path
    if default_preset:
        return str(preset_path(default_preset))
    return None


def load_from_args(args: argparse.Namespace, default_preset: str | None = None) -> GradusConfig:
    """Load and validate the config the arguments name, with ``--set`` overrides applied.

    Problems name their origin: the file (with line numbers), or ``preset NAME`` for a shipped preset.
    """
    source = config_source(args, default_preset)
    if source is None:
        raise ConfigError(
            f"no config given; pass a YAML file or --preset NAME (presets: {', '.join(list_presets())})"
        )
    preset = args.preset or (None if (args.config or getattr(args, "config_flag", None)) else default_preset)
    origin = f"preset {Path(source).stem}" if preset else None
    return load_config(source, getattr(args, "overrides", None) or [], origin=origin)
