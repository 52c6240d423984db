"""``manytask predict`` and ``manytask evaluate``: a trained run on a data file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def add_predict_commands(sub: Any) -> None:
    from .flags import add_links_flag

    pred = sub.add_parser("predict", help="per-task predictions of a `data: files` run on a file")
    pred.add_argument("--run-dir", required=True, help="the run folder of manytask train")
    pred.add_argument("--data", required=True, help="a csv/tsv/jsonl/parquet file")
    pred.add_argument("--out", required=True, help="where predictions go (.csv/.parquet/.jsonl)")
    pred.add_argument("--overwrite", action="store_true",
                      help="replace --out if it exists (never the --data file)")
    add_links_flag(pred, "follow files of --run-dir that link outside it (refused by default)")
    pred.set_defaults(func=run_predict)
    ev = sub.add_parser("evaluate", help="per-task metrics of a `data: files` run on a file")
    ev.add_argument("--run-dir", required=True, help="the run folder of manytask train")
    ev.add_argument("--data", required=True, help="a csv/tsv/jsonl/parquet file with labels")
    ev.add_argument("--out", help="metrics JSON (default: RUN_DIR/evaluate-<stem>.json)")
    ev.add_argument("--overwrite", action="store_true",
                    help="replace --out if it exists (the default output is always replaced)")
    add_links_flag(ev, "follow files of --run-dir that link outside it (refused by default)")
    ev.set_defaults(func=run_evaluate)


def print_problems(problems: Sequence[Any], limit: int = 20) -> None:
    """Rows left out (file, row, column), at most ``limit`` lines and a count."""
    for problem in problems[:limit]:
        print(f"left out: {problem}", file=sys.stderr)
    if len(problems) > limit:
        print(f"left out: ... and {len(problems) - limit} more row problem(s)", file=sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    from ..predict import predict, remove_leftovers

    for note in remove_leftovers(args.out):
        print(f"manytask predict: {note}", file=sys.stderr)
    problems = predict(args.run_dir, args.data, args.out, overwrite=args.overwrite,
                       allow_outside_links=args.allow_outside_links)
    print_problems(problems)
    print(f"predictions: {args.out}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..predict import evaluate, remove_leftovers

    if args.out:
        for note in remove_leftovers(args.out):
            print(f"manytask evaluate: {note}", file=sys.stderr)
    results, problems, path = evaluate(args.run_dir, args.data, args.out,
                                       overwrite=args.overwrite,
                                       allow_outside_links=args.allow_outside_links)
    print_problems(problems)
    for task, row in results.items():
        print(f"{task}: " + "  ".join(f"{m}={v:.4f}" for m, v in row.items()))
    print(f"metrics: {path}")
    return 0
