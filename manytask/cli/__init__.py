"""All command-line code: the parser, the subcommands and the generated help and docs."""

from .flags import add_config_flags, config_from_args
from .main import build_parser, main

__all__ = ["add_config_flags", "build_parser", "config_from_args", "main"]
