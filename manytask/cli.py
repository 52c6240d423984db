"""The command line: ``manytask train``, ``bench``, ``report``, ``merge``, ``affinity``,
``group``, ``balancers`` and ``architectures``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

import yaml

from .config import ConfigError, TrainConfig, config_from_mapping, load_config

# dict-valued config keys, given on the command line as repeated --<what>-param KEY=VALUE
_PARAM_FLAGS = {"balancer_params": "balancer", "arch_params": "arch"}


def add_config_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per :class:`TrainConfig` field; unset flags leave the config alone."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = _strip_none(hints[f.name])
        default = getattr(TrainConfig(), f.name)
        help_text = f"(default: {default})"
        if f.name in _PARAM_FLAGS:
            what = _PARAM_FLAGS[f.name]
            parser.add_argument(
                f"--{what}-param",
                dest=f.name,
                action="append",
                metavar="KEY=VALUE",
                help=f"a {what} hyper-parameter, repeatable (value read as YAML)",
            )
        elif hint is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif typing.get_origin(hint) is list:
            (inner,) = typing.get_args(hint)
            parser.add_argument(flag, dest=f.name, nargs="+", type=inner, help=help_text)
        elif hint in (int, float):
            parser.add_argument(flag, dest=f.name, type=hint, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=str, help=help_text)


def _strip_none(hint: Any) -> Any:
    """``int | None`` -> ``int``: a flag cannot say None, it is simply not given."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _flag_values(args: argparse.Namespace, skip: Sequence[str] = ()) -> dict[str, Any]:
    values = {}
    for f in dataclasses.fields(TrainConfig):
        value = None if f.name in skip else getattr(args, f.name, None)
        if value is None:
            continue
        if f.name in _PARAM_FLAGS:
            params = {}
            for item in value:
                key, sep, raw = item.partition("=")
                if not sep or not key:
                    raise ConfigError(
                        f"--{_PARAM_FLAGS[f.name]}-param expects KEY=VALUE, got {item!r}"
                    )
                params[key] = yaml.safe_load(raw)
            value = params
        values[f.name] = value
    return values


def config_from_args(args: argparse.Namespace, skip: Sequence[str] = ()) -> TrainConfig:
    flags = _flag_values(args, skip)
    if args.config:
        return load_config(args.config, flags)
    return config_from_mapping(flags, source="command line")


def _cmd_train(args: argparse.Namespace) -> int:
    from .run import format_results, train_from_config
    from .training.distributed import is_main_process

    cfg = config_from_args(args)
    results = train_from_config(cfg)
    if is_main_process():  # under torchrun, one table, not one per process
        print(format_results(results))
    return 0


# Keys a bench grid sets per cell, so they are not flags of `manytask bench`.
_GRID_KEYS = ("balancer", "balancer_params", "arch", "seed", "run_dir", "resume", "progress")


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluation.bench import grid, run_grid
    from .evaluation.report import report
    from .run import task_names

    base = config_from_args(args, _GRID_KEYS)
    tasks = list(task_names(base))
    cells = grid(args.methods, args.archs, args.seeds, tasks, single_task=args.single_task)
    run_dir = Path(args.run_dir)
    run_grid(base, cells, run_dir, baseline_steps=args.baseline_steps)
    made = report([run_dir])
    print(made["summary"].read_text())
    print(f"report: {made['html']}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluation.report import report

    dirs = [Path(d) for d in args.run_dirs]
    if len(dirs) == 1 and not (dirs[0] / "bench.yaml").exists() and (
            dirs[0] / "metrics.csv").is_file():  # one training run, not a bench
        from .evaluation.run_report import run_report

        made = run_report(dirs[0], Path(args.out) if args.out else None)
    else:
        made = report(dirs, Path(args.out) if args.out else None)
    for name, path in made.items():
        print(f"{name}: {path}")
    return 0


def _cmd_balancers(args: argparse.Namespace) -> int:
    from .balancers import registry

    for name in registry.available():
        cls = registry.get(name)
        params = ", ".join(f"{k}={v!r}" for k, v in registry.parameters(name).items())
        print(f"{name:14s} {cls.requires:8s} {cls.__name__}({params})")
    return 0


def _cmd_architectures(args: argparse.Namespace) -> int:
    import inspect

    from .models import ARCHITECTURES

    print(f"{'hard_sharing':16s} HardSharing(hidden=... from the config's `hidden`)")
    for name in sorted(ARCHITECTURES):
        build = ARCHITECTURES[name]
        params = [
            f"{p.name}={p.default!r}"
            for p in inspect.signature(build).parameters.values()
            if p.default is not inspect.Parameter.empty
            and p.name not in ("in_features", "input_layer")
        ]
        print(f"{name:16s} {getattr(build, '__name__', name)}({', '.join(params)})")
    return 0


def _print_problems(problems: Sequence[Any], limit: int = 20) -> None:
    for problem in problems[:limit]:
        print(f"left out: {problem}", file=sys.stderr)
    if len(problems) > limit:
        print(f"left out: ... and {len(problems) - limit} more row problem(s)", file=sys.stderr)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict

    problems = predict(args.run_dir, args.data, args.out)
    _print_problems(problems)
    print(f"predictions: {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .predict import evaluate

    results, problems, path = evaluate(args.run_dir, args.data, args.out)
    _print_problems(problems)
    for task, row in results.items():
        print(f"{task}: " + "  ".join(f"{m}={v:.4f}" for m, v in row.items()))
    print(f"metrics: {path}")
    return 0


def _add_predict_commands(sub: Any) -> None:
    pred = sub.add_parser("predict", help="per-task predictions of a data: files run on a file")
    pred.add_argument("--run-dir", required=True, help="the run folder of manytask train")
    pred.add_argument("--data", required=True, help="a csv/tsv/jsonl/parquet file")
    pred.add_argument("--out", required=True, help="where predictions go (.csv/.parquet/.jsonl)")
    pred.set_defaults(func=_cmd_predict)
    ev = sub.add_parser("evaluate", help="per-task metrics of a data: files run on a file")
    ev.add_argument("--run-dir", required=True, help="the run folder of manytask train")
    ev.add_argument("--data", required=True, help="a csv/tsv/jsonl/parquet file with labels")
    ev.add_argument("--out", help="metrics JSON (default: RUN_DIR/evaluate-<stem>.json)")
    ev.set_defaults(func=_cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manytask", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a multi-task model and print per-task metrics")
    train.add_argument("--config", help="a YAML file of TrainConfig keys; flags override it")
    add_config_flags(train)
    train.set_defaults(func=_cmd_train)
    bench = sub.add_parser("bench", help="run a resumable grid of methods x architectures x seeds")
    bench.add_argument("--config", help="a YAML file of TrainConfig keys for every cell")
    bench.add_argument("--methods", nargs="+", default=["equal", "mgda", "pcgrad", "cagrad"])
    bench.add_argument("--archs", nargs="+", default=["hard_sharing"])
    bench.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    bench.add_argument(
        "--single-task",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train single-task baselines (needed for delta-m)",
    )
    bench.add_argument("--run-dir", required=True, help="where cells, tables and plots go")
    bench.add_argument("--baseline-steps", choices=["same", "epochs"], default="same",
                       help="single-task baselines run the joint run's number of optimizer "
                            "steps (same) or its number of epochs")
    add_config_flags(bench, _GRID_KEYS)
    bench.set_defaults(func=_cmd_bench)
    rep = sub.add_parser("report", help="plots, tables and an HTML page from bench runs")
    rep.add_argument("run_dirs", nargs="+")
    rep.add_argument("--out", help="output directory (default: the first run directory)")
    rep.set_defaults(func=_cmd_report)
    _add_predict_commands(sub)
    from .merging.cli import add_merge_command

    add_merge_command(sub)
    from .grouping.cli import add_affinity_commands

    add_affinity_commands(sub)
    bal = sub.add_parser("balancers", help="list the training methods and their parameters")
    bal.set_defaults(func=_cmd_balancers)
    arch = sub.add_parser("architectures", help="list the architectures and their parameters")
    arch.set_defaults(func=_cmd_architectures)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    # FloatingPointError: a non-finite loss or gradient; OSError: e.g. a run_dir not writable
    except (ConfigError, ValueError, FloatingPointError, OSError) as err:
        print(f"manytask {args.command}: error: {err}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
