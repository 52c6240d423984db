"""``manytask merge CONFIG.yaml OUTPUT_DIR``: the command-line front of
:func:`manytask.merging.merge`."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO


def add_merge_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``merge`` subcommand to ``subparsers``; its handler is ``func=run_merge_command``."""
    from ..merging.methods import METHODS
    from .flags import add_links_flag

    parser = subparsers.add_parser(
        "merge",
        help="merge fine-tuned checkpoints of one base model (TIES, DARE, SLERP, ...)",
        description="Merge checkpoints as a YAML file says (see manytask.merging.config). "
        "Everything is validated before any tensor is read; the output folder appears "
        f"only when complete. Methods: {', '.join(METHODS.names())} (`manytask merge-methods`).",
    )
    parser.add_argument("config", help="merge configuration (YAML)")
    parser.add_argument("output_dir", help="folder to write the merged model to")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--like", choices=("mergekit", "paper"), default=None,
                        help="read the configuration with mergekit's meanings (its "
                        "convention) or the papers'; default: the file's convention key")
    parser.add_argument("--random-seed", type=int, default=None, metavar="N",
                        help="seed of the random methods (DARE, DELLA)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT_DIR even if it holds files manytask did not write (they are lost)",
    )
    add_links_flag(parser)
    parser.set_defaults(func=run_merge_command)
    return parser


class Progress:
    """``[i/n] tensor`` lines: rewritten in place on a terminal, one line per tensor (no
    carriage returns) when written to a file or a pipe."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.open = False  # a rewritten line is on screen, not yet ended

    def __call__(self, i: int, n: int, name: str) -> None:
        if self.live:
            print(f"\r[{i + 1}/{n}] {name[:60]:<60}", end="", file=self.stream, flush=True)
            self.open = True
        else:
            print(f"[{i + 1}/{n}] {name}", file=self.stream, flush=True)

    def end(self) -> None:
        if self.open:
            print(file=self.stream)
            self.open = False


def run_merge_command(args: argparse.Namespace) -> int:
    """Run a merge; return 0 on success, 2 for a configuration or input error."""
    from ..merging.allocator import reuse_freed_memory
    from ..merging.api import merge

    reuse_freed_memory()  # a process of its own: the process-wide setting is ours to make
    progress = Progress(sys.stderr)
    try:
        report = merge(
            args.config,
            args.output_dir,
            progress=None if args.quiet else progress,
            overwrite=args.overwrite,
            allow_outside_links=args.allow_outside_links,
            like=args.like,
            random_seed=args.random_seed,
        )
    except (ValueError, TypeError, FileNotFoundError) as err:
        progress.end()
        message = " ".join(str(err).split())
        print(f"manytask merge: error: {message}", file=sys.stderr)
        return 2
    progress.end()
    for note in report.notes:
        print(f"manytask merge: {note}", file=sys.stderr)
    if not args.quiet:
        print(
            f"merged {report.tensors} tensors ({report.total_bytes / 1e9:.2f} GB) into "
            f"{report.output_dir} in {report.seconds:.1f} s",
            file=sys.stderr,
        )
    return 0
