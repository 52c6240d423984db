"""The command line: ``manytask train``, ``manytask balancers``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Sequence
from typing import Any

import yaml

from .config import ConfigError, TrainConfig, config_from_mapping, load_config


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per :class:`TrainConfig` field; unset flags leave the config alone."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default = getattr(TrainConfig(), f.name)
        help_text = f"(default: {default})"
        if f.name == "balancer_params":
            parser.add_argument(
                "--balancer-param",
                dest=f.name,
                action="append",
                metavar="KEY=VALUE",
                help="a balancer hyper-parameter, repeatable (value read as YAML)",
            )
        elif hint is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif "list[int]" in str(hint):
            parser.add_argument(flag, dest=f.name, nargs="+", type=int, help=help_text)
        elif "list[str]" in str(hint):
            parser.add_argument(flag, dest=f.name, nargs="+", help=help_text)
        elif hint is int:
            parser.add_argument(flag, dest=f.name, type=int, help=help_text)
        elif hint is float:
            parser.add_argument(flag, dest=f.name, type=float, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=str, help=help_text)


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    values = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if f.name == "balancer_params":
            params = {}
            for item in value:
                key, sep, raw = item.partition("=")
                if not sep or not key:
                    raise ConfigError(f"--balancer-param expects KEY=VALUE, got {item!r}")
                params[key] = yaml.safe_load(raw)
            value = params
        values[f.name] = value
    return values


def _config(args: argparse.Namespace) -> TrainConfig:
    flags = _flag_values(args)
    if args.config:
        return load_config(args.config, flags)
    return config_from_mapping(flags, source="command line")


def _cmd_train(args: argparse.Namespace) -> int:
    from .run import format_results, train_from_config

    cfg = _config(args)
    results = train_from_config(cfg)
    print(format_results(results))
    return 0


def _cmd_balancers(args: argparse.Namespace) -> int:
    from .balancers import registry

    for name in registry.available():
        cls = registry.get(name)
        params = ", ".join(f"{k}={v!r}" for k, v in registry.parameters(name).items())
        print(f"{name:14s} {cls.requires:8s} {cls.__name__}({params})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manytask", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a multi-task model and print per-task metrics")
    train.add_argument("--config", help="a YAML file of TrainConfig keys; flags override it")
    _add_config_flags(train)
    train.set_defaults(func=_cmd_train)
    bal = sub.add_parser("balancers", help="list the training methods and their parameters")
    bal.set_defaults(func=_cmd_balancers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (ConfigError, ValueError) as err:
        print(f"manytask {args.command}: error: {err}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
