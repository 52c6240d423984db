"""Small generated tables: three tasks of different kinds over numeric and categorical
columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa


def make_table(n: int = 240, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    city = rng.choice(["paris", "rome", "oslo"], size=n)
    segment = np.where(x1 > 0.5, "high", np.where(x1 < -0.5, "low", "mid"))
    churn = (x2 + (city == "oslo") > 0.5).astype(np.int64)
    price = 2 * x1 - x2 + 0.1 * rng.normal(size=n)
    churn_col = pa.array([None if i % 10 == 0 else int(c) for i, c in enumerate(churn)],
                         pa.int64())
    split = np.array(["train"] * n, dtype=object)
    split[int(0.7 * n):int(0.85 * n)] = "val"
    split[int(0.85 * n):] = "test"
    return pa.table({"x1": x1.round(4), "x2": x2.round(4), "city": city, "segment": segment,
                     "churn": churn_col, "price": price.round(4), "part": split})


TASKS = [
    {"name": "segment", "kind": "classification", "label": "segment",
     "metrics": ["accuracy", "f1_macro"]},
    {"name": "churn", "kind": "binary", "label": "churn", "metrics": ["auroc", "f1"]},
    {"name": "price", "kind": "regression", "label": "price", "loss": "huber",
     "metrics": ["rmse", "r2"]},
]


def table_section(file: str, **extra: object) -> dict[str, object]:
    section: dict[str, object] = {"file": file, "split": {"column": "part"},
                                  "numeric": ["x1", "x2"], "categorical": ["city"],
                                  "tasks": [dict(t) for t in TASKS]}
    section.update(extra)
    return {"table": section}


def write(table: pa.Table, path: Path) -> Path:
    import pyarrow.parquet as pq
    from pyarrow import csv

    name = path.name
    if name.endswith(".csv"):
        csv.write_csv(table, path)
    elif name.endswith(".tsv"):
        csv.write_csv(table, path, write_options=csv.WriteOptions(delimiter="\t"))
    elif name.endswith(".parquet"):
        pq.write_table(table, path)
    elif name.endswith(".jsonl"):
        import json

        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    else:
        raise ValueError(name)
    return path
