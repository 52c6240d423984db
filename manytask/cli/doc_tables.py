"""Write ``docs/methods.md``: the method tables, generated from the registries.

    python -m manytask.cli.doc_tables            # rewrite docs/methods.md
    python -m manytask.cli.doc_tables --check    # exit 1 if it is out of date

A test runs the check, so the tables never drift from the code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..registry import Param, Registry
from .listing import registries

COMMAND = "python -m manytask.cli.doc_tables"
SECTIONS = (  # (listing command, title, what the user writes)
    ("balancers", "Training methods (balancers)",
     "`--balancer NAME --balancer-param KEY=VALUE`, or `balancer:` / `balancer_params:`"),
    ("architectures", "Architectures",
     "`--arch NAME --arch-param KEY=VALUE`, or `arch:` / `arch_params:`"),
    ("merge-methods", "Merge methods",
     "`merge_method:` and `parameters:` (global) / `models[].parameters:` (per model) "
     "of a `manytask merge` configuration"),
    ("samplers", "Task samplers", "`manytask.data.make_sampler(NAME, sizes, **params)`"),
    ("group-searches", "Group searches", "`manytask group --method NAME`"),
    ("data-sets", "Data sets", "`--data NAME` or `data:`"),
)


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def params_cell(params: Mapping[str, Param]) -> str:
    if not params:
        return "none"
    return "<br>".join(
        cell(f"`{name}`: {p.describe()}" + (f"; {p.doc}" if p.doc else ""))
        for name, p in params.items()
    )


def table(registry: Registry[Any]) -> str:
    kinds = any(isinstance(getattr(e.target, "requires", None), str) for e in registry)
    per_model = any(getattr(e.target, "model_params", None) for e in registry)
    columns = ["name", *(["needs"] if kinds else []), "what it is", "parameters",
               *(["per-model parameters"] if per_model else [])]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for e in registry:
        row = [f"`{e.name}`"]
        if kinds:
            requires = getattr(e.target, "requires", "")
            row.append(requires if isinstance(requires, str) else "gramian, then losses")
        row += [cell(e.summary), params_cell(e.params)]
        if per_model:
            row.append(params_cell(getattr(e.target, "model_params", {})))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def render() -> str:
    """The whole page."""
    found = registries()
    parts = [
        "# Methods, architectures and other things chosen by name\n",
        f"Generated from the registries by `{COMMAND}`; do not edit by hand (a test fails "
        "when this page is out of date). `manytask <listing> NAME` prints one entry, e.g. "
        "`manytask balancers cagrad`.\n",
    ]
    for command, title, how in SECTIONS:
        registry = found[command][0]()
        parts.append(f"## {title}\n\n{len(registry)} entries; chosen with {how}; listed by "
                     f"`manytask {command}`.\n\n{table(registry)}")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/methods.md", help="the page to write")
    parser.add_argument("--check", action="store_true",
                        help="only compare: exit 1 if the page is missing or out of date")
    args = parser.parse_args(argv)
    out = Path(args.out)
    text = render()
    if args.check:
        current = out.read_text() if out.is_file() else None
        if current != text:
            print(f"{out} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)  # atomic: a reader sees the old page or the new one
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
