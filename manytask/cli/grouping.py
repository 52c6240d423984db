"""``manytask affinity`` and ``manytask group``: measure task affinities, then choose groups.

    manytask affinity --config configs/multidigits.yaml --tasks left right sum larger \\
        --epochs 2 --run-dir runs/affinity
    manytask group runs/affinity --budget 2

``affinity`` builds the data set and model exactly as ``manytask train`` does (every train
flag applies), runs :func:`~manytask.grouping.driver.measure_affinity` and writes
``affinity.json``, ``affinity.csv`` and ``affinity.png`` into ``--run-dir``; ``--pairwise``
also trains every pair and every task alone for the direct transfer matrix and the rank
correlation of each cheap measure with it. ``group`` reads a matrix (a run directory, an
``affinity.json`` or a CSV matrix) and writes ``groups.json``, ``groups.md``, ``groups.png``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..grouping.markdown import groups_markdown
from ..grouping.matrix import AffinityMatrix, read_matrices, write_matrices
from ..grouping.search import SEARCHES, score_grouping, search_groups
from .flags import add_config_flags, config_from_args

_UNUSED_KEYS = (
    "resume",
    "tensorboard",
    "log_format",
    "log_every",
    "cosine_every",
    "skip_nonfinite",
    "flat_rho",
    "head_grad",
    "shard",  # one process measures (a config file asking for fsdp is refused)
)
_KIND_ORDER = ("lookahead", "cosine", "cosine_feature", "datamap", "transfer")


def add_affinity_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``affinity`` and ``group`` on ``subparsers`` (handlers set as ``func``)."""
    aff = subparsers.add_parser(
        "affinity",
        help="measure how tasks help or hurt each other in one joint run",
        description="Gradient cosine, lookahead affinity (Fifty et al., 2021) and data-map "
        "similarity (STG-MTL) from one joint run; --pairwise adds the direct transfer.",
    )
    aff.add_argument("--config", help="a YAML file of TrainConfig keys; flags override it")
    aff.add_argument("--every", type=int, default=5, help="measure every N steps (default: 5)")
    aff.add_argument(
        "--datamaps",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record data maps on the validation split (default: on)",
    )
    aff.add_argument(
        "--lookahead-lr",
        type=float,
        help="step size of the lookahead (default: --lr, as Fifty et al.)",
    )
    aff.add_argument(
        "--pairwise",
        action="store_true",
        help="also train every task alone and every pair (K(K+1)/2 trainings "
        "per seed) for the direct transfer matrix",
    )
    aff.add_argument("--pairwise-seeds", type=int, nargs="+", default=[0],
                     help="seeds of the --pairwise trainings (default: 0)")
    # the joint run writes no Trainer logs or checkpoints: those flags would do nothing
    add_config_flags(aff, _UNUSED_KEYS)
    aff.set_defaults(func=run_affinity_command)

    grp = subparsers.add_parser(
        "group",
        help="choose task groups under a budget of models from an affinity matrix",
        description="Search groupings of at most --budget models (Fifty et al., 2021 score).",
    )
    grp.add_argument(
        "matrix", help="a run directory of `manytask affinity`, its affinity.json, or a CSV matrix"
    )
    grp.add_argument("--budget", type=int, required=True, help="at most this many models")
    grp.add_argument("--kind", help="which matrix of affinity.json (default: lookahead)")
    grp.add_argument("--overlap", action="store_true", help="a task may belong to several groups")
    grp.add_argument(
        "--overlap-tasks",
        nargs="+",
        metavar="TASK",
        help="only these tasks may belong to several groups",
    )
    grp.add_argument("--method", choices=["auto", *SEARCHES.names()], default="auto",
                     help="search method (default: auto, exhaustive while cheap, then branch "
                     "and bound, then beam)")
    grp.add_argument("--beam-width", type=int, default=64,
                     help="candidates kept per step of beam search (default: 64)")
    grp.add_argument("--seed", type=int, default=0, help="seed of the cluster method")
    grp.add_argument("--out", help="output folder (default: the matrix's folder)")
    grp.set_defaults(func=run_group_command)


# ------------------------------------------------------------------------------ affinity
def run_affinity_command(args: argparse.Namespace) -> int:
    from ..balancers import make_balancer
    from ..config import ConfigError
    from ..grouping.driver import measure_affinity
    from ..grouping.pairwise import config_trainer, pairwise_transfer, rank_correlation
    from ..grouping.plots import plot_affinity
    from ..run import DATASETS, build_model, seed_everything, validate_config

    cfg = config_from_args(args, _UNUSED_KEYS)
    if not cfg.run_dir:
        raise ConfigError("manytask affinity needs --run-dir (where the matrices go)")
    validate_config(cfg)
    if cfg.epochs < 1:
        raise ConfigError("manytask affinity needs --epochs >= 1")
    run_dir = Path(cfg.run_dir)
    seed_everything(cfg.seed)
    data = DATASETS.get(cfg.data).prepare(cfg)
    if len(data.tasks) < 2:
        raise ConfigError(f"affinity needs at least two tasks, got {[t.name for t in data.tasks]}")
    model = build_model(cfg, data)
    datamaps = args.datamaps and all(t.kind != "regression" for t in data.tasks)
    if args.datamaps and not datamaps:
        print("no data maps: they need classification or binary tasks only")
    run = measure_affinity(
        model,
        data.tasks,
        data.train,
        epochs=cfg.epochs,
        lr=cfg.lr,
        every=args.every,
        lookahead_lr=args.lookahead_lr,
        balancer=make_balancer(cfg.balancer, **cfg.balancer_params),
        mode=cfg.mode,
        probe=data.val if datamaps else None,
    )
    matrices = [run.matrices[k] for k in _KIND_ORDER if k in run.matrices]
    meta: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "steps": run.steps,
        "seconds": run.seconds,
        "every": args.every,
        "datamaps_on": "val" if datamaps else None,
    }
    if args.pairwise:
        result = pairwise_transfer(
            [t.name for t in data.tasks], config_trainer(cfg), seeds=args.pairwise_seeds
        )
        matrices.append(result.transfer)
        meta["rank_correlation_with_transfer"] = {
            m.kind: rank_correlation(m, result.transfer) for m in matrices[:-1]
        }
        meta["pairwise_trainings"] = result.trainings
    run_dir.mkdir(parents=True, exist_ok=True)
    write_matrices(run_dir / "affinity.json", matrices, meta)
    _write_long_csv(run_dir / "affinity.csv", matrices)
    plot_affinity(matrices, run_dir / "affinity.png")
    for m in matrices:
        print(_matrix_text(m))
    if "rank_correlation_with_transfer" in meta:
        for kind, rho in meta["rank_correlation_with_transfer"].items():
            print(f"Spearman rank correlation of {kind} with direct transfer: {rho:+.3f}")
    print(
        f"{run.steps} steps in {run.seconds:.1f} s; wrote {run_dir / 'affinity.json'}, "
        f"affinity.csv, affinity.png"
    )
    return 0


def _write_long_csv(path: Path, matrices: list[AffinityMatrix]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", "source", "target", "value"])
        for m in matrices:
            for i, a in enumerate(m.tasks):
                for j, b in enumerate(m.tasks):
                    writer.writerow([m.kind, a, b, repr(float(m.values[i, j]))])


def _matrix_text(m: AffinityMatrix) -> str:
    width = max(8, *(len(t) for t in m.tasks))
    lines = [
        f"{m.kind} (row = source, column = target)",
        " " * width + "".join(f"{t[:9]:>10}" for t in m.tasks),
    ]
    for t, row in zip(m.tasks, m.values, strict=True):
        lines.append(f"{t:<{width}}" + "".join(f"{v:>10.3g}" for v in row))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ group
def run_group_command(args: argparse.Namespace) -> int:
    from ..grouping.plots import plot_grouping

    source = Path(args.matrix)
    matrices = read_matrices(source)
    kind = args.kind or ("lookahead" if "lookahead" in matrices else None)
    if kind is None:
        if len(matrices) != 1:
            raise ValueError(
                f"{source} holds several matrices {sorted(matrices)}; pick one with --kind"
            )
        kind = next(iter(matrices))
    if kind not in matrices:
        raise ValueError(f"{source}: no matrix {kind!r}; it holds {sorted(matrices)}")
    matrix = matrices[kind]
    if args.overlap and args.overlap_tasks:
        raise ValueError("give --overlap or --overlap-tasks, not both")
    overlap: bool | list[str] = args.overlap_tasks or bool(args.overlap)
    grouping = search_groups(
        matrix,
        args.budget,
        overlap=overlap,
        method=args.method,
        beam_width=args.beam_width,
        seed=args.seed,
    )
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent)
    out.mkdir(parents=True, exist_ok=True)
    baselines = {
        "one model for all tasks": score_grouping(matrix, [list(matrix.tasks)]),
        "one model per task": score_grouping(matrix, [[t] for t in matrix.tasks]),
    }
    data = {
        "kind": kind,
        "source": str(source),
        "grouping": grouping.to_dict(),
        "baselines": {name: g.score for name, g in baselines.items()},
    }
    (out / "groups.json").write_text(json.dumps(data, indent=2))
    text = groups_markdown(grouping, kind, baselines)
    (out / "groups.md").write_text(text)
    plot_grouping(
        grouping, out / "groups.png", f"{kind}, budget {args.budget}: score {grouping.score:+.4g}"
    )
    print(text)
    return 0
