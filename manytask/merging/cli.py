"""``manytask merge CONFIG.yaml OUTPUT_DIR``: the command-line front of :func:`merge`."""

from __future__ import annotations

import argparse
import sys


def add_merge_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``merge`` subcommand to ``subparsers``; its handler is ``func=run_merge_command``."""
    parser = subparsers.add_parser(
        "merge",
        help="merge fine-tuned checkpoints of one base model (TIES, DARE, SLERP, ...)",
        description="Merge checkpoints as a YAML file says (see manytask.merging.config). "
        "Everything is validated before any tensor is read; the output folder appears "
        "only when complete.",
    )
    parser.add_argument("config", help="merge configuration (YAML)")
    parser.add_argument("output_dir", help="folder to write the merged model to")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--like", choices=("mergekit", "paper"), default=None,
                        help="read the configuration with mergekit's meanings (its "
                        "convention) or the papers'; default: the file's convention key")
    parser.add_argument("--random-seed", type=int, default=None, metavar="N",
                        help="seed of the random methods (DARE, DELLA)")
    parser.set_defaults(func=run_merge_command)
    return parser


def run_merge_command(args: argparse.Namespace) -> int:
    """Run a merge; return 0 on success, 2 for a configuration or input error."""
    from .allocator import reuse_freed_memory
    from .api import merge

    reuse_freed_memory()  # a process of its own: the process-wide setting is ours to make

    def progress(i: int, n: int, name: str) -> None:
        print(f"\r[{i + 1}/{n}] {name[:60]:<60}", end="", file=sys.stderr, flush=True)

    try:
        report = merge(args.config, args.output_dir, progress=None if args.quiet else progress,
                       like=args.like, random_seed=args.random_seed)
    except (ValueError, TypeError, FileNotFoundError) as err:
        if not args.quiet:
            print(file=sys.stderr)
        print(f"manytask merge: error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(file=sys.stderr)
        print(
            f"merged {report.tensors} tensors ({report.total_bytes / 1e9:.2f} GB) into "
            f"{report.output_dir} in {report.seconds:.1f} s",
            file=sys.stderr,
        )
    return 0
