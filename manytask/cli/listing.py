"""The listings: ``manytask balancers``, ``architectures``, ``merge-methods``, ``data-sets``,
``samplers`` and ``group-searches``, each generated from its registry."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from ..registry import Param, Registry


def registries() -> dict[str, tuple[Callable[[], Registry[Any]], str]]:
    """``{command: (registry loader, help)}``; loaders import lazily (merging, grouping)."""

    def balancers() -> Registry[Any]:
        from ..balancers.registry import BALANCERS

        return BALANCERS

    def architectures() -> Registry[Any]:
        from ..models import ARCHITECTURES

        return ARCHITECTURES

    def merge_methods() -> Registry[Any]:
        from ..merging.methods import METHODS

        return METHODS

    def data_sets() -> Registry[Any]:
        from ..run import DATASETS

        return DATASETS

    def samplers() -> Registry[Any]:
        from ..data.sampling import SAMPLERS

        return SAMPLERS

    def searches() -> Registry[Any]:
        from ..grouping.search import SEARCHES

        return SEARCHES

    return {
        "balancers": (balancers, "list the training methods and their parameters"),
        "architectures": (architectures, "list the architectures and their parameters"),
        "merge-methods": (merge_methods, "list the merge methods and their parameters"),
        "data-sets": (data_sets, "list the data sets `--data` accepts"),
        "samplers": (samplers, "list the task samplers and their parameters"),
        "group-searches": (searches, "list the group searches of `manytask group --method`"),
    }


def add_listing_commands(sub: argparse._SubParsersAction) -> None:
    for command, (load, help_text) in registries().items():
        parser = sub.add_parser(command, help=help_text, description=help_text)
        parser.add_argument("name", nargs="?",
                            help="describe this entry in full (default: list them all)")
        parser.set_defaults(func=run_listing, registry=load)


def run_listing(args: argparse.Namespace) -> int:
    registry: Registry[Any] = args.registry()
    if args.name is not None:
        print(registry.describe(args.name))
        return 0
    width = max(len(n) for n in registry.names())
    for entry in registry.entries():
        kind = getattr(entry.target, "requires", None)
        kind = f"[{kind}] " if isinstance(kind, str) else ""
        summary = entry.summary  # in full in `manytask <listing> NAME` and docs/methods.md
        if len(summary) > 100:
            summary = summary[:99] + "…"
        print(f"{entry.name:{width}s}  {kind}{summary}")
        per_model = getattr(entry.target, "model_params", None)  # merge methods
        for label, params in (("", entry.params), ("per model: ", per_model or {})):
            if params:
                print(f"{'':{width}s}    {label}{defaults(params)}")
    return 0


def defaults(params: Mapping[str, Param]) -> str:
    return ", ".join(f"{k}={'<required>' if p.required else repr(p.default)}"
                     for k, p in params.items())
