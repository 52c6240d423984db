"""Task affinity and grouping: cheap affinities vs direct pairwise transfer, then the groups.

For ``--data text`` (the eight text tasks over cached all-MiniLM-L6-v2 embeddings, a shared
MLP trunk of 256 units and linear heads) or ``--data census`` (Census-Income, the three tasks
income / never married / education on the features of task group 2, which exclude all three
label columns; embeddings of 8 per categorical column, a shared layer of 128, towers of 16):

1. one joint run (equal weighting, Adam) measures the lookahead affinity (Fifty et al., 2021),
   the exact and feature-level gradient cosine, and the data maps of STG-MTL on the training
   examples;
2. every task alone and every pair are trained (``--seeds``), giving the direct transfer
   ``T[i, j]`` = relative change of task j's best validation metric when trained with i;
3. Spearman's rank correlation of each cheap matrix with ``T``;
4. for each budget, the grouping each measure recommends (search under the Fifty et al. score;
   data maps through STG-MTL's k-means route) is trained and scored on the test split, next
   to one model for all tasks and one model per task (mean test metric and delta-m over the
   single-task models).

Each task's test metric is read at the epoch of its best validation metric. Everything lands
in ``--run-dir``: ``affinity.json``/``.csv``/``.png``, ``groups_<measure>_B<b>.png``,
``results.md``, ``results.json``.

    OMP_NUM_THREADS=1 python benchmarks/affinity_groups.py --data text --run-dir runs/aff-text
    OMP_NUM_THREADS=1 python benchmarks/affinity_groups.py --data census --run-dir runs/aff-census
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bundled import COLLEGE
from torch import Tensor

from manytask import HardSharing, Task, Trainer
from manytask.data import TensorBatches
from manytask.evaluation import delta_m
from manytask.grouping import (
    AffinityMatrix,
    Grouping,
    cluster_tasks,
    measure_affinity,
    pairwise_transfer,
    rank_correlation,
    score_grouping,
    search_groups,
    task_vectors,
    write_matrices,
)
from manytask.grouping.markdown import groups_markdown
from manytask.grouping.plots import plot_affinity, plot_grouping
from manytask.models import shared_bottom

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@dataclass
class Problem:
    """Tasks, and how to build batches and a model for any subset of them."""

    tasks: list[Task]
    metric: str
    train: Callable[[list[str], int], Iterable[Any]]
    val: Callable[[list[str]], Iterable[Any]]
    test: Callable[[list[str]], Iterable[Any]]
    probe: Iterable[Any]
    model: Callable[[list[Task]], Any]
    epochs: int
    note: str

    def subset(self, names: Iterable[str]) -> list[Task]:
        wanted = set(names)
        return [t for t in self.tasks if t.name in wanted]


def text_problem(args: argparse.Namespace) -> Problem:
    from bundled import TEXT_TASKS, load_text_task

    from manytask.data.encoders import text_embeddings
    from manytask.data.text import MixedTaskBatches, stacked_batches

    texts = [
        load_text_task(args.data_root or SHARED / "text", n).capped(
            args.train_cap, args.val_cap, args.test_cap
        )
        for n in TEXT_TASKS
    ]
    emb = text_embeddings(texts, args.cache_dir, 64)
    feats = {s: {t.name: emb[t.name][s] for t in texts} for s in ("train", "val", "test")}
    labels = {s: {t.name: t.split(s).labels for t in texts} for s in ("train", "val", "test")}

    def pick(split: str, names: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        return {n: feats[split][n] for n in names}, {n: labels[split][n] for n in names}

    def train(names: list[str], seed: int) -> MixedTaskBatches:
        x, y = pick("train", names)
        return MixedTaskBatches(x, y, 128, tasks_per_batch=min(4, len(names)), seed=seed)

    return Problem(
        tasks=[t.task() for t in texts],
        metric="accuracy",
        train=train,
        val=lambda names: stacked_batches(*pick("val", names), 512),
        test=lambda names: stacked_batches(*pick("test", names), 512),
        probe=stacked_batches(feats["train"], labels["train"], 512),
        model=lambda tasks: HardSharing(tasks, 384, hidden=(256,)),
        epochs=args.epochs or 8,
        note=f"8 text tasks, at most {args.train_cap}/{args.val_cap}/{args.test_cap} "
        "train/val/test examples each, MiniLM embeddings (max 64 tokens), trunk 384-256, "
        "mixed batches of 128 (4 tasks per batch)",
    )


def census_problem(args: argparse.Namespace) -> Problem:
    from bundled import load_census

    path = args.data_root or SHARED / "census_income_kdd"
    two = load_census(str(path), 2)  # features without education, marital status or income
    one = load_census(str(path), 1)  # same seed, same rows: only its income label is used
    if not torch.equal(one.train.dense, two.train.dense):
        raise RuntimeError("census: the two task groups did not split the rows alike")
    splits = {}
    for name, a, b, cap in (
        ("train", two.train, one.train, args.train_cap),
        ("val", two.val, one.val, args.val_cap),
        ("test", two.test, one.test, None),
    ):
        n = len(a) if cap is None else min(cap, len(a))
        targets = {
            "income": b.targets["income"][:n],
            "marital": a.targets["marital"][:n],
            "education": a.targets["education"][:n],
        }
        splits[name] = ({"categorical": a.categorical[:n], "dense": a.dense[:n]}, targets)
    return tabular_problem(
        args,
        splits,
        ["income", "marital", "education"],
        two.cardinalities,
        two.n_dense,
        f"Census-Income, {len(splits['train'][1]['income'])}/"
        f"{len(splits['val'][1]['income'])}/{len(splits['test'][1]['income'])} rows, "
        "embeddings 8 per column, shared 128, towers 16, batches of 512",
    )


def tabular_problem(
    args: argparse.Namespace,
    splits: dict[str, tuple[dict[str, Tensor], dict[str, Tensor]]],
    names: list[str],
    cardinalities: Sequence[int],
    n_dense: int,
    note: str,
) -> Problem:
    """Binary tasks on tabular splits ``{split: (x, targets)}``: shared-bottom, AUC."""
    from manytask.models.inputs import TabularInput

    tasks = [Task.binary(n) for n in names]

    def batches(split: str, names: list[str], shuffle: bool, seed: int = 0) -> TensorBatches:
        x, y = splits[split]
        return TensorBatches(x, {n: y[n] for n in names}, 512, shuffle=shuffle, seed=seed)

    return Problem(
        tasks=tasks,
        metric="auc",
        train=lambda names, seed: batches("train", names, True, seed),
        val=lambda names: batches("val", names, False),
        test=lambda names: batches("test", names, False),
        probe=batches("train", [t.name for t in tasks], False),
        model=lambda ts: shared_bottom(
            ts,
            input_layer=TabularInput(cardinalities, n_dense, embedding_dim=8),
            hidden=(128,),
            tower_hidden=(16,),
        ),
        epochs=args.epochs or 5,
        note=note,
    )


# census8: the three MMoE tasks plus five more binary labels read from other columns; every
# label column (and country of birth, which gives citizenship away) leaves the features
CENSUS8_LABELS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "income": ("income", lambda c: c == "50000+."),
    "marital": ("marital_stat", lambda c: c == "Never married"),
    "education": ("education", lambda c: np.isin(c, COLLEGE)),
    "female": ("sex", lambda c: c == "Female"),
    "native": ("citizenship", lambda c: np.char.startswith(c.astype(str), "Native")),
    "fullyear": ("weeks_worked_in_year", lambda c: c == "52"),
    "private": ("class_of_worker", lambda c: c == "Private"),
    "filer": ("tax_filer_stat", lambda c: c != "Nonfiler"),
}


def census8_problem(args: argparse.Namespace) -> Problem:
    from bundled import COLUMNS, DENSE, LOG_DENSE, read_census

    raw = read_census(str(args.data_root or SHARED / "census_income_kdd"))
    col = {name: raw[i] for i, name in enumerate(COLUMNS)}
    n = len(raw[0])
    # the row split of load_census (seed 0, 60/20/20)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).numpy()
    n_train, n_val = int(0.6 * n), int(0.2 * n)
    rows = {
        "train": perm[:n_train][: args.train_cap],
        "val": perm[n_train : n_train + n_val][: args.val_cap],
        "test": perm[n_train + n_val :],
    }
    excluded = {c for c, _ in CENSUS8_LABELS.values()} | {
        "instance_weight", "country_of_birth_self"}  # fmt: skip
    cat_names = [c for c in COLUMNS if c not in excluded and c not in DENSE]
    dense_names = [c for c in DENSE if c not in excluded]
    codes, cards = [], []
    for name in cat_names:
        vocab = np.unique(col[name][rows["train"]])
        pos = np.clip(np.searchsorted(vocab, col[name]), 0, len(vocab) - 1)
        codes.append(np.where(vocab[pos] == col[name], pos + 1, 0))  # 0: unseen in training
        cards.append(len(vocab) + 1)
    categorical = torch.from_numpy(np.stack(codes, 1).astype(np.int64))
    dense = np.stack([col[c].astype(np.float64) for c in dense_names], 1)
    for j, c in enumerate(dense_names):
        if c in LOG_DENSE:
            dense[:, j] = np.log1p(np.clip(dense[:, j], 0, None))
    mean, std = dense[rows["train"]].mean(0), dense[rows["train"]].std(0)
    dense_t = torch.from_numpy(((dense - mean) / np.where(std > 0, std, 1)).astype(np.float32))
    labels = {
        t: torch.from_numpy(np.asarray(f(col[c]), dtype=np.float32))
        for t, (c, f) in CENSUS8_LABELS.items()
    }
    splits = {}
    for split, r in rows.items():
        idx = torch.from_numpy(r)
        x = {"categorical": categorical[idx], "dense": dense_t[idx]}
        splits[split] = (x, {t: y[idx] for t, y in labels.items()})
    positives = ", ".join(f"{t} {float(y.mean()):.2f}" for t, y in labels.items())
    return tabular_problem(
        args,
        splits,
        list(CENSUS8_LABELS),
        cards,
        len(dense_names),
        f"Census-Income, 8 binary tasks (positive rate: {positives}), "
        f"{len(rows['train'])}/{len(rows['val'])}/{len(rows['test'])} rows, "
        f"{len(cat_names)} categorical + {len(dense_names)} dense features without any label "
        "column, embeddings 8 per column, shared 128, towers 16, batches of 512",
    )


class GroupTrainer:
    """Trains a model on a group of tasks; remembers every (group, seed) it trained."""

    def __init__(self, problem: Problem, lr: float) -> None:
        self.problem = problem
        self.lr = lr
        self.cache: dict[tuple[tuple[str, ...], int], dict[str, tuple[float, float]]] = {}
        self.trainings = 0

    def run(self, group: tuple[str, ...], seed: int) -> dict[str, tuple[float, float]]:
        """``{task: (best val metric, test metric at that epoch)}``."""
        key = (tuple(sorted(group)), seed)
        if key in self.cache:
            return self.cache[key]
        p = self.problem
        names = list(key[0])
        torch.manual_seed(seed)
        tasks = p.subset(names)
        trainer = Trainer(p.model(tasks), tasks, "equal", lr=self.lr, progress=False)
        train = p.train(names, seed)
        best: dict[str, tuple[float, float]] = {}
        for epoch in range(p.epochs):
            train.set_epoch(epoch)  # type: ignore[attr-defined]
            for batch in train:
                trainer.train_step(batch)
            val, test = trainer.evaluate(p.val(names)), trainer.evaluate(p.test(names))
            for n in names:
                v = val[n][p.metric]
                if n not in best or v > best[n][0]:
                    best[n] = (v, test[n][p.metric])
        self.trainings += 1
        self.cache[key] = best
        return best

    def val_score(self, group: tuple[str, ...], seed: int) -> dict[str, float]:
        return {t: v for t, (v, _) in self.run(group, seed).items()}

    def test_of(self, grouping: Grouping, seed: int) -> dict[str, float]:
        """Each task's test metric from the group that serves it, for one seed."""
        return {
            task: self.run(grouping.groups[g], seed)[task][1]
            for task, g in grouping.serving.items()
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["text", "census", "census8"], required=True)
    parser.add_argument("--data-root", help="default: ../shared/data/<text|census_income_kdd>")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--cache-dir", default="runs/cache", help="text: embedding cache")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--epochs", type=int, help="default: 8 (text), 5 (census)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=5, help="measure every N steps")
    parser.add_argument("--lookahead-lr", type=float, help="default: --lr")
    parser.add_argument("--train-cap", type=int, help="default: 2000 (text), 20000 (census)")
    parser.add_argument("--val-cap", type=int, help="default: 500 (text), 10000 (census)")
    parser.add_argument("--test-cap", type=int, default=1000, help="text only")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    text = args.data == "text"
    args.train_cap = args.train_cap or (2000 if text else 20000)
    args.val_cap = args.val_cap or (500 if text else 10000)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    build = {"text": text_problem, "census": census_problem, "census8": census8_problem}
    problem = build[args.data](args)
    names = [t.name for t in problem.tasks]
    print(f"{args.data}: {problem.note}; {problem.epochs} epochs", flush=True)

    # 1. cheap affinities from one joint run
    torch.manual_seed(args.seeds[0])
    joint = measure_affinity(
        problem.model(problem.tasks),
        problem.tasks,
        problem.train(names, args.seeds[0]),
        epochs=problem.epochs,
        lr=args.lr,
        every=args.every,
        lookahead_lr=args.lookahead_lr,
        probe=problem.probe,
    )
    print(f"joint run: {joint.steps} steps, {joint.seconds:.1f} s", flush=True)

    # 2. direct pairwise transfer (validation metric)
    trainer = GroupTrainer(problem, args.lr)
    t0 = time.perf_counter()
    pairwise = pairwise_transfer(names, trainer.val_score, seeds=args.seeds)
    pair_seconds = time.perf_counter() - t0
    print(f"pairwise: {pairwise.trainings} trainings, {pair_seconds:.0f} s", flush=True)
    transfer = pairwise.transfer
    cheap = [joint.matrices[k] for k in ("lookahead", "cosine", "cosine_feature", "datamap")]
    matrices = [*cheap, transfer]
    write_matrices(
        run_dir / "affinity.json",
        matrices,
        {
            "data": args.data,
            "note": problem.note,
            "seeds": args.seeds,
            "joint_steps": joint.steps,
            "joint_seconds": joint.seconds,
            "pairwise_seconds": pair_seconds,
        },
    )
    plot_affinity(matrices, run_dir / "affinity.png")
    with open(run_dir / "affinity.csv", "w") as f:
        f.write("kind,source,target,value\n")
        for m in matrices:
            for i, a in enumerate(m.tasks):
                for j, b in enumerate(m.tasks):
                    f.write(f"{m.kind},{a},{b},{m.values[i, j]!r}\n")

    # 3. rank correlation with the direct transfer
    rho = {m.kind: rank_correlation(m, transfer) for m in cheap}
    # how reproducible the ground truth itself is: transfer of one seed against another's
    per_seed_transfer = [
        pairwise_transfer(names, trainer.val_score, seeds=[s]).transfer for s in args.seeds
    ]
    reliability = [
        rank_correlation(a, b)
        for i, a in enumerate(per_seed_transfer)
        for b in per_seed_transfer[i + 1 :]
    ]
    rho["transfer of one seed vs another (mean)"] = (
        statistics.mean(reliability) if reliability else float("nan")
    )
    costs = {
        "lookahead": joint.seconds,
        "cosine": joint.seconds,
        "cosine_feature": joint.seconds,
        "datamap": joint.seconds,
        "transfer": pair_seconds,
    }

    # 4. groupings, trained and tested
    seeds = list(args.seeds)
    single = {t: statistics.mean(trainer.run((t,), s)[t][1] for s in seeds) for t in names}
    directions = {t: {problem.metric: True} for t in names}
    base = {t: {problem.metric: v} for t, v in single.items()}
    rows: list[dict[str, Any]] = []

    def evaluate(label: str, grouping: Grouping) -> None:
        per_seed = [trainer.test_of(grouping, s) for s in seeds]
        test = {t: statistics.mean(r[t] for r in per_seed) for t in names}
        dm = delta_m({t: {problem.metric: v} for t, v in test.items()}, base, directions)
        # delta-m of each seed against the single-task models of the same seed, for its spread
        dms = [
            delta_m(
                {t: {problem.metric: v} for t, v in r.items()},
                {t: {problem.metric: trainer.run((t,), s)[t][1]} for t in names},
                directions,
            )
            for r, s in zip(per_seed, seeds, strict=True)
        ]
        sem = statistics.stdev(dms) / len(dms) ** 0.5 if len(dms) > 1 else float("nan")
        predicted = score_grouping(transfer, grouping.groups).mean_gain * 100
        rows.append(
            {
                "grouping": label,
                "groups": [list(g) for g in grouping.groups],
                "mean_test": statistics.mean(test.values()),
                "delta_m": dm,
                "delta_m_sem": sem,
                "predicted_by_transfer": predicted,
                "search": grouping.method,
                "evaluated": grouping.evaluated,
                "search_ms": grouping.seconds * 1e3,
                "per_task": test,
            }
        )
        print(
            f"{label}: {rows[-1]['groups']} mean {rows[-1]['mean_test']:.4f} dm {dm:+.2f}%",
            flush=True,
        )

    evaluate("one model per task", score_grouping(transfer, [[t] for t in names]))
    evaluate("one model for all tasks", score_grouping(transfer, [names]))
    maps = joint.maps or {}
    vectors, vector_kind = task_vectors(maps)
    for budget in args.budgets:
        if budget >= len(names):
            continue
        for m in (transfer, joint.matrices["lookahead"], joint.matrices["cosine"]):
            grouping = search_groups(m, budget)
            plot_grouping(
                grouping, run_dir / f"groups_{m.kind}_B{budget}.png", f"{m.kind}, budget {budget}"
            )
            (run_dir / f"groups_{m.kind}_B{budget}.md").write_text(
                groups_markdown(grouping, m.kind)
            )
            evaluate(f"{m.kind}, B={budget}", grouping)
        began_stg = time.perf_counter()
        clustered = cluster_tasks(vectors, budget, seed=args.seeds[0])
        stg = score_grouping(
            joint.matrices["datamap"], [[names[i] for i in g] for g in clustered.groups]
        )
        stg = Grouping(
            stg.groups,
            stg.score,
            stg.gains,
            stg.serving,
            "stg-mtl k-means",
            clustered.evaluated,
            time.perf_counter() - began_stg,
            budget,
        )
        plot_grouping(stg, run_dir / f"groups_datamap_B{budget}.png", f"STG-MTL, B={budget}")
        evaluate(f"datamap (STG-MTL), B={budget}", stg)

    report = _markdown(
        args, problem, matrices, rho, costs, rows, vector_kind, trainer, time.perf_counter() - began
    )
    (run_dir / "results.md").write_text(report)
    (run_dir / "results.json").write_text(
        json.dumps(
            {
                "rank_correlation": rho,
                "rows": rows,
                "single": single,
                "costs_s": costs,
                "trainings": trainer.trainings,
            },
            indent=2,
            default=float,
        )
    )
    print(report)


def _markdown(
    args: argparse.Namespace,
    problem: Problem,
    matrices: list[AffinityMatrix],
    rho: dict[str, float],
    costs: dict[str, float],
    rows: list[dict[str, Any]],
    vector_kind: str,
    trainer: GroupTrainer,
    seconds: float,
) -> str:
    m = problem.metric
    lines = [
        f"## Task affinity and grouping: {args.data}",
        "",
        f"{problem.note}; {problem.epochs} epochs, Adam lr {args.lr}, equal weighting; "
        f"affinities measured every {args.every} steps of one joint run; data-map vectors: "
        f"{vector_kind}; seeds {args.seeds}; {trainer.trainings} trainings, "
        f"{seconds / 60:.1f} min in all.",
        "",
        "| measure | Spearman rank correlation with direct transfer | cost (s) |",
        "|---|---|---|",
    ]
    for kind, rho_k in rho.items():
        value = f"{rho_k:+.3f}" if rho_k == rho_k else "undefined (the measure is constant)"
        cost = f"{costs[kind]:.1f} (one joint run)" if kind in costs else "(no extra training)"
        lines.append(f"| {kind} | {value} | {cost} |")
    lines.append(
        f"| transfer (direct) | 1 | {costs['transfer']:.1f} "
        f"(every pair and single task, {len(args.seeds)} seeds) |"
    )
    lines += [
        "",
        f"| grouping | groups | mean test {m} | Δm vs single-task (%, ± s.e. over seeds) | "
        "predicted by transfer (%) | search |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        groups = " · ".join("{" + ", ".join(g) + "}" for g in r["groups"])
        lines.append(
            f"| {r['grouping']} | {groups} | {r['mean_test']:.4f} | "
            f"{r['delta_m']:+.2f} ± {r['delta_m_sem']:.2f} | "
            f"{r['predicted_by_transfer']:+.2f} | {r['search']}, {r['evaluated']} evaluated, "
            f"{r['search_ms']:.1f} ms |"
        )
    lines += [
        "",
        "Direct transfer T[i, j] (row i helps column j, relative change of the "
        f"validation {m}, in %):",
        "",
        "| source \\ target | " + " | ".join(matrices[-1].tasks) + " |",
        "|---|" + "---|" * matrices[-1].size,
    ]
    t = matrices[-1]
    for i, a in enumerate(t.tasks):
        cells = ["–" if i == j else f"{100 * t.values[i, j]:+.2f}" for j in range(t.size)]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
