"""R-MTGB beside single-task and pooled gradient boosting: planted outlier tasks, and the
Census-Income tasks.

* **Planted outliers**: ``--n-tasks`` regression tasks on ``x ~ U(-1, 1)^5``. Regular tasks
  share ``y = sin(2 x.w_r) + x_1^2 + eps`` with ``w_r = w + 0.1 N(0, I)`` (related tasks); the
  ``k`` outlier tasks use another direction ``w'`` and the negated function. ``--n-per-task``
  training rows and 500 test rows per task, noise ``eps ~ N(0, 0.1^2)``, one draw per seed.
  Reported: whether R-MTGB's outlier group (``sigma(theta_r) > 1/2``) is exactly the planted
  set (default start, and the reference code's random start, where either side may be the
  planted set), and the test RMSE on regular and outlier tasks.
* **Census-Income (KDD)**, group 1 (income > 50K, never married): the split of
  ``benchmarks/census.py``; ``--census-rows`` training rows per task (the same rows for both
  tasks, stacked with a task id), the whole test split; categorical codes used as ordinal
  features. Reported: test AUC per task.

Models, with the same number of boosting rounds per task (learning rate 0.1, depth 3, squared
error splits): R-MTGB (``--rounds`` shared + ``--rounds`` group + ``--rounds`` task rounds;
the group block grows two trees a round, so a task's prediction sums ``4 * --rounds`` trees);
single-task :class:`sklearn.ensemble.GradientBoostingRegressor` / ``Classifier`` with
``3 * --rounds`` trees per task; pooled boosting (one booster on all rows, ignoring the task)
and pooled with the task's one-hot code as features, ``3 * --rounds`` trees.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/rmtgb.py --out runs/rmtgb.md      # ~8 min on 1 core
    python benchmarks/rmtgb.py --seeds 1 --rounds 10 --census-rows 2000     # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np
from bundled import load_census
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.metrics import roc_auc_score

from manytask.boosting import PooledBoosting, RMTGBClassifier, RMTGBRegressor, SingleTaskBoosting

DEFAULT_CENSUS = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "census_income_kdd"
)


def planted(
    seed: int, n_tasks: int, outliers: list[int], n_train: int, n_test: int
) -> tuple[np.ndarray, ...]:
    rng = np.random.RandomState(seed)
    d = 5
    w_common, w_out = rng.randn(d), rng.randn(d)
    parts: list[list[np.ndarray]] = [[], [], [], [], [], []]
    for r in range(n_tasks):
        w = w_out if r in outliers else w_common + 0.1 * rng.randn(d)
        sign = -1.0 if r in outliers else 1.0
        for offset, n in ((0, n_train), (3, n_test)):
            x = rng.uniform(-1, 1, (n, d))
            y = sign * (np.sin(2 * x @ w) + x[:, 0] ** 2) + 0.1 * rng.randn(n)
            parts[offset].append(x)
            parts[offset + 1].append(y)
            parts[offset + 2].append(np.full(n, r))
    return tuple(np.concatenate(p) for p in parts)


def models(rounds: int, classify: bool, seed: int) -> dict[str, Any]:
    kw = {"learning_rate": 0.1, "max_depth": 3, "random_state": seed}
    gb_cls = GradientBoostingClassifier if classify else GradientBoostingRegressor
    gb = gb_cls(n_estimators=3 * rounds, **kw)  # type: ignore[arg-type]
    rm_cls = RMTGBClassifier if classify else RMTGBRegressor
    per_block = {"n_estimators_shared": rounds, "n_estimators_group": rounds,
                 "n_estimators_task": rounds}  # fmt: skip
    return {
        "R-MTGB": rm_cls(**per_block, **kw),
        "single-task GB": SingleTaskBoosting(gb),
        "pooled GB": PooledBoosting(gb),
        "pooled GB + task one-hot": PooledBoosting(gb, task_as_feature=True),
    }


def cell(vals: list[float]) -> str:
    spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.4f} ± {spread:.4f}"


def synthetic(args: argparse.Namespace) -> str:
    lines = [
        f"Planted outlier tasks: {args.n_tasks} tasks, {args.n_per_task} training rows per task, "
        f"{args.seeds} seeds, {args.rounds} rounds per R-MTGB block (baselines "
        f"{3 * args.rounds} trees). Outliers found: seeds where R-MTGB's outlier group is "
        "exactly the planted set (random start: either side may be it). Test RMSE, mean ± std "
        "over seeds.",
        "",
        "| outliers | model | found (default start) | found (random start) | RMSE regular tasks "
        "| RMSE outlier tasks |",
        "|---|---|---|---|---|---|",
    ]
    for k in args.outliers:
        planted_set = list(range(1, 1 + 2 * k, 2))[:k]  # tasks 1, 3, 5, ...
        rmse: dict[str, tuple[list[float], list[float]]] = {}
        found, found_random = 0, 0
        for seed in range(args.seeds):
            X, y, t, Xt, yt, tt = planted(seed, args.n_tasks, planted_set, args.n_per_task, 500)
            for name, model in models(args.rounds, False, seed).items():
                model.fit(X, y, task=t)
                err = (model.predict(Xt, task=tt) - yt) ** 2
                out = np.isin(tt, planted_set)
                regular, outlier = rmse.setdefault(name, ([], []))
                regular.append(float(np.sqrt(err[~out].mean())))
                outlier.append(float(np.sqrt(err[out].mean())))
                if name == "R-MTGB":
                    found += model.outlier_tasks_.tolist() == planted_set
            rand = RMTGBRegressor(
                n_estimators_shared=args.rounds, n_estimators_group=args.rounds,
                n_estimators_task=args.rounds, theta_init="random", random_state=seed,
            ).fit(X, y, task=t)  # fmt: skip
            side = set(rand.outlier_tasks_.tolist())
            found_random += side in (set(planted_set), set(range(args.n_tasks)) - set(planted_set))
        for name, (regular, outlier) in rmse.items():
            hits = (f"{found}/{args.seeds}", f"{found_random}/{args.seeds}")
            found_cells = hits if name == "R-MTGB" else ("–", "–")
            lines.append(f"| {k} | {name} | {found_cells[0]} | {found_cells[1]} | "
                         f"{cell(regular)} | {cell(outlier)} |")  # fmt: skip
        print(lines[-4:], flush=True)
    return "\n".join(lines)


def census(args: argparse.Namespace) -> str:
    data = load_census(args.census, 1)
    names = [t.name for t in data.tasks]

    def stacked(split: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.hstack([split.categorical.numpy(), split.dense.numpy()])[rows]
        X = np.vstack([x] * len(names))
        y = np.concatenate([split.targets[n].numpy()[rows] for n in names])
        t = np.repeat(np.arange(len(names)), len(rows))
        return X, y.astype(int), t

    aucs: dict[str, list[list[float]]] = {}
    weights: list[np.ndarray] = []
    for seed in range(args.seeds):
        rng = np.random.RandomState(seed)
        rows = rng.choice(len(data.train), min(args.census_rows, len(data.train)), replace=False)
        X, y, t = stacked(data.train, rows)
        Xt, yt, tt = stacked(data.test, np.arange(len(data.test)))
        for name, model in models(args.rounds, True, seed).items():
            model.fit(X, y, task=t)
            p = model.predict_proba(Xt, task=tt)[:, 1]
            aucs.setdefault(name, []).append(
                [float(roc_auc_score(yt[tt == r], p[tt == r])) for r in range(len(names))]
            )
            if name == "R-MTGB":
                weights.append(model.task_weights_)
        print(f"census seed {seed} done", flush=True)
    lines = [
        f"Census-Income (KDD) group 1: {args.census_rows} training rows (both tasks on the same "
        f"rows), {len(data.test)} test rows, {args.seeds} seeds, {args.rounds} rounds per R-MTGB "
        f"block. Test AUC, mean ± std over seeds. R-MTGB's sigma(theta) per task (mean over "
        f"seeds): " + ", ".join(f"{n} {np.mean([w[i] for w in weights]):.3f}"
                                 for i, n in enumerate(names)) + ".",
        "",
        "| model | " + " | ".join(f"AUC {n}" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]  # fmt: skip
    for name, per_seed in aucs.items():
        lines.append(f"| {name} | " + " | ".join(
            cell([s[i] for s in per_seed]) for i in range(len(names))) + " |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["planted", "census"],
                        choices=["planted", "census"])  # fmt: skip
    parser.add_argument("--n-tasks", type=int, default=8)
    parser.add_argument("--outliers", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--n-per-task", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--census", default=DEFAULT_CENSUS)
    parser.add_argument("--census-rows", type=int, default=10_000)
    parser.add_argument("--out", help="append the markdown tables here")
    args = parser.parse_args()
    start = time.perf_counter()
    out = []
    if "planted" in args.parts:
        out.append(synthetic(args))
        print(out[-1], f"\n({time.perf_counter() - start:.0f}s elapsed)", flush=True)
    if "census" in args.parts:
        out.append(census(args))
        print(out[-1], f"\n({time.perf_counter() - start:.0f}s elapsed)", flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n\n".join(out) + "\n")


if __name__ == "__main__":
    main()
