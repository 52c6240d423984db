"""Every file format and both data shapes, on small generated files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from declared_tables import TASKS, table_section, write

from manytask.data.declared import parse_dataset, prepare_declared
from manytask.data.declared.preprocess import Preprocessor


def _prepare(section: dict, root: Path):  # type: ignore[no-untyped-def]
    return prepare_declared(parse_dataset(section, root), cache_dir=root / "cache",
                            batch_size=32)


def _expected_targets(table: pa.Table, split: str) -> dict[str, np.ndarray]:
    rows = [r for r in table.to_pylist() if r["part"] == split]
    classes = sorted({r["segment"] for r in table.to_pylist() if r["part"] == "train"})
    return {
        "segment": np.array([classes.index(r["segment"]) for r in rows]),
        "churn": np.array([np.nan if r["churn"] is None else r["churn"] for r in rows]),
        "price": np.array([r["price"] for r in rows]),
    }


@pytest.mark.parametrize("name", ["shop.csv", "shop.tsv", "shop.jsonl", "shop.parquet"])
def test_every_format_gives_the_same_data(tmp_path: Path, shop: pa.Table, name: str) -> None:
    write(shop, tmp_path / name)
    data = _prepare(table_section(name), tmp_path)
    assert [t.name for t in data.tasks] == ["segment", "churn", "price"]
    assert [t.kind for t in data.tasks] == ["classification", "binary", "regression"]
    assert data.tasks[0].out_features == 3
    assert data.cardinalities == (4,)  # three cities + the out-of-vocabulary code
    expected = _expected_targets(shop, "test")
    targets = {k: torch.cat([y[k] for _, y in data.test]) for k in expected}
    assert targets["segment"].dtype == torch.int64
    assert targets["price"].dtype == torch.float32  # a regression label stays a float
    np.testing.assert_array_equal(targets["segment"].numpy(), expected["segment"])
    np.testing.assert_allclose(targets["churn"].numpy(), expected["churn"], equal_nan=True)
    np.testing.assert_allclose(targets["price"].numpy(), expected["price"], rtol=1e-6)


def test_scaling_and_vocabulary_are_fitted_on_train_only(tmp_path: Path, shop: pa.Table) -> None:
    write(shop, tmp_path / "shop.csv")
    data = _prepare(table_section("shop.csv"), tmp_path)
    train = [r for r in shop.to_pylist() if r["part"] == "train"]
    x1 = np.array([r["x1"] for r in train])
    mean, std = data.preprocessor.features.numeric["x1"]
    assert mean == pytest.approx(x1.mean()) and std == pytest.approx(x1.std())
    dense = torch.cat([x["dense"] for x, _ in data.train])
    assert float(dense[:, 0].mean()) == pytest.approx(0, abs=1e-5)
    # round trip through the JSON saved with the run
    again = Preprocessor.from_json(data.preprocessor.to_json(), "here")
    assert again.features.numeric == data.preprocessor.features.numeric
    assert again.features.vocabularies == {"city": ["oslo", "paris", "rome"]}
    assert again.labels["segment"].classes == ["high", "low", "mid"]


def test_unseen_category_goes_to_the_oov_bucket(tmp_path: Path, shop: pa.Table) -> None:
    cities = shop["city"].to_pylist()
    parts = shop["part"].to_pylist()
    cities = [("berlin" if p == "test" and i % 2 else c) for i, (c, p) in
              enumerate(zip(cities, parts, strict=True))]
    table = shop.set_column(shop.schema.get_field_index("city"), "city", pa.array(cities))
    write(table, tmp_path / "shop.parquet")
    data = _prepare(table_section("shop.parquet"), tmp_path)
    test_codes = torch.cat([x["categorical"] for x, _ in data.test])[:, 0]
    test_cities = [c for c, p in zip(cities, parts, strict=True) if p == "test"]
    berlin = torch.tensor([c == "berlin" for c in test_cities])
    assert bool((test_codes[berlin] == 0).all()) and bool((test_codes[~berlin] > 0).all())


def test_split_by_files_and_by_ratio(tmp_path: Path, shop: pa.Table) -> None:
    files = {}
    for split in ("train", "val", "test"):
        part = shop.filter(pa.compute.equal(shop["part"], split))
        files[split] = write(part, tmp_path / f"{split}.csv").name
    section = table_section("x")
    del section["table"]["file"], section["table"]["split"]  # type: ignore[attr-defined]
    section["table"]["files"] = files  # type: ignore[index]
    by_files = _prepare(section, tmp_path)
    assert sum(len(x["dense"]) for x, _ in by_files.val) == 36
    write(shop, tmp_path / "shop.csv")
    ratio = _prepare(table_section("shop.csv", split={"ratio": [0.5, 0.25, 0.25], "seed": 3}),
                     tmp_path)
    sizes = [sum(len(x["dense"]) for x, _ in b) for b in (ratio.train, ratio.val, ratio.test)]
    assert sizes == [120, 60, 60]


def test_hf_folder(tmp_path: Path, shop: pa.Table) -> None:
    datasets = pytest.importorskip("datasets")
    parts = {("validation" if s == "val" else s): datasets.Dataset(
        shop.filter(pa.compute.equal(shop["part"], s))) for s in ("train", "val", "test")}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "shop_hf"))
    section = table_section("shop_hf")
    del section["table"]["split"]  # type: ignore[attr-defined]
    data = _prepare(section, tmp_path)
    assert sum(len(x["dense"]) for x, _ in data.test) == 36


def test_one_source_per_task(tmp_path: Path, shop: pa.Table) -> None:
    sources = []
    for i, task in enumerate(TASKS):
        path = write(shop.slice(i * 10), tmp_path / f"s{i}.parquet")
        sources.append({"file": path.name, "split": {"column": "part"},
                        "numeric": ["x1", "x2"], "categorical": ["city"], "task": dict(task)})
    data = prepare_declared(parse_dataset({"sources": sources}, tmp_path),
                            cache_dir=tmp_path, batch_size=30, tasks_per_batch=3)
    x, y = next(iter(data.train))
    assert set(y) == {"segment", "churn", "price"}
    assert y["price"].dtype == torch.float32 and y["segment"].dtype == torch.int64
    # each row carries a label for one task at most (its source's; churn has gaps)
    count = ((y["segment"] >= 0).int() + (~torch.isnan(y["churn"])).int()
             + (~torch.isnan(y["price"])).int())
    assert int(count.max()) == 1 and len(count) == x["dense"].shape[0] == 30
