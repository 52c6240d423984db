"""``manytask train``, ``bench`` and ``report``."""

from __future__ import annotations

import argparse

from .flags import add_config_flags, add_links_flag, config_from_args

# Keys a bench grid sets per cell, so they are not flags of `manytask bench`.
GRID_KEYS = ("balancer", "balancer_params", "arch", "seed", "run_dir", "resume", "progress",
             "resume_if_exists", "overwrite")


def add_train_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``train``, ``bench`` and ``report`` on ``sub``."""
    from ..balancers.registry import BALANCERS
    from ..models import ARCHITECTURES

    train = sub.add_parser("train", help="train a multi-task model and print per-task metrics",
                           description="Train as a config file and flags say; every name and "
                           "parameter is checked before any data is read.")
    train.add_argument("--config", help="a YAML file of TrainConfig keys; flags override it")
    add_config_flags(train)
    train.set_defaults(func=run_train)

    bench = sub.add_parser("bench", help="run a resumable grid of methods x architectures x seeds")
    bench.add_argument("--config", help="a YAML file of TrainConfig keys for every cell")
    bench.add_argument("--methods", nargs="+", default=["equal", "mgda", "pcgrad", "cagrad"],
                       metavar="BALANCER",
                       help=f"training methods of the grid ({', '.join(BALANCERS.names())}; "
                       "default: equal mgda pcgrad cagrad)")
    bench.add_argument("--archs", nargs="+", default=["hard_sharing"], metavar="ARCH",
                       help=f"architectures of the grid ({', '.join(ARCHITECTURES.names())}; "
                       "default: hard_sharing)")
    bench.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                       help="seeds of the grid (default: 0 1 2)")
    bench.add_argument("--single-task", action=argparse.BooleanOptionalAction, default=True,
                       help="also train single-task baselines (needed for delta-m)")
    bench.add_argument("--run-dir", required=True, help="where cells, tables and plots go")
    bench.add_argument("--baseline-steps", choices=["same", "epochs"], default="same",
                       help="single-task baselines run the joint run's number of optimizer "
                            "steps (same) or its number of epochs")
    add_config_flags(bench, GRID_KEYS)
    bench.set_defaults(func=run_bench)

    rep = sub.add_parser("report", help="plots, tables and an HTML page from bench runs")
    rep.add_argument("run_dirs", nargs="+",
                     help="run directories of `manytask bench`, or one of `manytask train`")
    rep.add_argument("--out", help="output directory (default: the first run directory)")
    rep.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="SETTING",
        help="settings (e.g. epochs lr) allowed to differ between the runs; rows are labelled "
        "with them. Runs differing in any other setting, or in tasks, are refused",
    )
    rep.add_argument("--overwrite", action="store_true",
                     help="replace files of --out that no report wrote (refused by default)")
    add_links_flag(rep, "follow cell folders and results that link outside their run "
                   "directory (refused by default)")
    rep.set_defaults(func=run_report)


def run_train(args: argparse.Namespace) -> int:
    from ..run import format_results, train_from_config
    from ..training.distributed import is_main_process

    cfg = config_from_args(args)
    results = train_from_config(cfg)  # validates every name before any data is read
    if is_main_process():  # under torchrun, one table, not one per process
        print(format_results(results))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..evaluation.bench import grid, run_grid
    from ..evaluation.report import report
    from ..run import task_names, validate_config

    base = config_from_args(args, GRID_KEYS)
    validate_config(base)  # every name of the grid is checked by run_grid before its first cell
    tasks = list(task_names(base))
    cells = grid(args.methods, args.archs, args.seeds, tasks, single_task=args.single_task)
    run_dir = Path(args.run_dir)
    run_grid(base, cells, run_dir, baseline_steps=args.baseline_steps)
    made = report([run_dir], allow_outside_links=base.allow_outside_links)
    print(made["summary"].read_text())
    print(f"report: {made['html']}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..evaluation.report import report

    dirs = [Path(d) for d in args.run_dirs]
    if len(dirs) == 1 and not (dirs[0] / "bench.yaml").exists() and (
            dirs[0] / "metrics.csv").is_file():  # one training run, not a bench
        from ..evaluation.run_report import run_report as one_run

        made = one_run(dirs[0], Path(args.out) if args.out else None, overwrite=args.overwrite)
    else:
        made = report(dirs, Path(args.out) if args.out else None, args.compare,
                      overwrite=args.overwrite, allow_outside_links=args.allow_outside_links)
    for name, path in made.items():
        print(f"{name}: {path}")
    return 0
