"""configs/text.yaml and configs/census*.yaml, read through the files route, give the rows,
labels and splits of the shared files as each folder's README describes them and as the
dedicated loaders the library had gave them (:mod:`reference`, written independently): the
eight text tasks row for row and label for label; Census-Income the same rows in each split,
the same labels, the same standardised numbers and the same categories (coded 1..n in the
training vocabulary, 0 for a value training never saw)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference

from manytask.config import load_config
from manytask.data.declared import parse_dataset, prepare_declared
from manytask.data.declared.preprocess import Labels
from manytask.data.declared.read import read_splits
from manytask.data.declared.text_columns import texts_of

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared" / "data"
TEXT, CENSUS = SHARED / "text", SHARED / "census_income_kdd"
needs_text = pytest.mark.skipif(not TEXT.is_dir(), reason=f"shared text data not at {TEXT}")
needs_census = pytest.mark.skipif(not (CENSUS / "census-income.test.gz").is_file(),
                                  reason=f"shared census file not at {CENSUS}")
TEXT_TASKS = ["sst2", "mr", "cr", "subj", "mpqa", "cola", "rte", "trec"]


def dataset(config: str, root: Path, sample: bool = True) -> Any:
    section = dict(load_config(REPO / "configs" / config).dataset or {})
    if not sample:
        section["defaults"] = {k: v for k, v in section["defaults"].items() if k != "sample"}
    return parse_dataset(section, root)


@needs_text
@pytest.mark.parametrize("sample", [True, False], ids=["sampled", "whole"])
def test_text_config_gives_the_rows_and_labels_of_the_files(sample: bool) -> None:
    spec = dataset("text.yaml", TEXT, sample)
    assert [t.name for t in spec.tasks] == TEXT_TASKS
    for table in spec.tables:
        task = table.tasks[0]
        parts = read_splits(table)
        ref = reference.text_splits(TEXT, task.name, (2000, 500, 1000) if sample else None)
        labels = Labels.fit(task, parts["train"])
        assert labels.classes is not None
        for split in ("train", "val", "test"):
            texts = texts_of(parts[split], table.text)
            rows = texts[0] if len(texts) == 1 else list(zip(*texts, strict=True))
            assert rows == ref[split][0], (task.name, split)
            y = labels.transform(parts[split], strict=True)[0]
            assert [labels.classes[i] for i in y.tolist()] == ref[split][1], (task.name, split)


@needs_text
def test_text_class_indices_are_the_declared_order() -> None:
    spec = dataset("text.yaml", TEXT)
    classes = {t.name: t.classes for t in spec.tasks}
    assert classes["rte"] == ("not_entailment", "entailment")  # 1: entailment
    assert classes["trec"] == ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
    assert all(classes[n] == ("0", "1") for n in TEXT_TASKS[:6])


# From the READMEs: (train file rows, val file rows or None, test rows, test label counts,
# label counts of the whole training file), in class-index order
README = {
    "sst2": (6920, None, 1821, [912, 909], [3310, 3610]),
    "mr": (8529, None, 2133, [1022, 1111], [4309, 4220]),
    "cr": (3016, None, 755, [288, 467], [1078, 1938]),
    "subj": (8000, None, 2000, [988, 1012], [4012, 3988]),
    "mpqa": (8482, None, 2121, [1440, 681], [5852, 2630]),
    "cola": (7250, 1301, 1043, [322, 721], [2162, 5088]),
    "rte": (2127, 363, 277, [131, 146], [1049, 1078]),
    "trec": (5452, None, 500, [9, 138, 94, 65, 81, 113], [86, 1162, 1250, 1223, 835, 896]),
}


@needs_text
@pytest.mark.parametrize("name", TEXT_TASKS)
def test_text_config_counts_match_the_readme(name: str) -> None:
    spec = dataset("text.yaml", TEXT, sample=False)
    table = next(t for t in spec.tables if t.tasks[0].name == name)
    parts = read_splits(table)
    n_train, n_val, n_test, test_counts, train_counts = README[name]
    labels = Labels.fit(table.tasks[0], parts["train"])

    def counts(*splits: str) -> list[int]:
        ys = [labels.transform(parts[s], strict=True)[0].numpy() for s in splits]
        return np.bincount(np.concatenate(ys), minlength=len(test_counts)).tolist()

    assert len(parts["test"]) == n_test and counts("test") == test_counts
    if n_val is None:  # 10 % of the training file held out: together, the whole file
        assert len(parts["val"]) == round(0.1 * n_train)
        assert len(parts["train"]) + len(parts["val"]) == n_train
        assert counts("train", "val") == train_counts
    else:
        assert (len(parts["train"]), len(parts["val"])) == (n_train, n_val)
        assert counts("train") == train_counts


COLLEGE = ("Some college but no degree", "Associates degree-occup /vocational",
           "Associates degree-academic program", "Bachelors degree(BA AB BS)",
           "Masters degree(MA MS MEng MEd MSW MBA)", "Prof school degree (MD DDS DVM LLB JD)",
           "Doctorate degree(PhD EdD)")
MONEY = ("wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks")


@needs_census
@pytest.mark.parametrize("group", [1, 2])
def test_census_config_gives_the_rows_labels_and_features_of_the_file(tmp_path: Path,
                                                                     group: int) -> None:
    config = "census.yaml" if group == 1 else "census-group2.yaml"
    spec = dataset(config, CENSUS)
    table = spec.tables[0]
    assert table.read.columns is not None
    raw = dict(zip(table.read.columns, reference.census_columns(
        CENSUS / "census-income.test.gz"), strict=True))
    truth = {"income": raw["income"] == "50000+.",
             "marital": raw["marital_stat"] == "Never married",
             "education": np.isin(raw["education"], COLLEGE)}
    tasks = ["income", "marital"] if group == 1 else ["education", "marital"]
    assert [t.name for t in spec.tasks] == tasks
    # no label column, no income and no sampling weight among the features
    features = set(table.feature_columns())
    assert not features & {"income", "marital_stat", "instance_weight"}
    assert ("education" in features) is (group == 1)
    assert len(table.categorical) == (32 if group == 1 else 31) and len(table.numeric) == 7
    assert set(table.read.columns) - features - {"income", "marital_stat", "education",
                                                 "instance_weight"} == set()

    data = prepare_declared(spec, cache_dir=tmp_path, batch_size=1 << 20)
    rows = reference.census_split(len(raw["age"]))
    train = rows["train"]
    assert data.cardinalities == tuple(len(np.unique(raw[c][train])) + 1
                                       for c in table.categorical)
    for split, index in rows.items():
        batches = getattr(data, split)  # the tensors in file order, not a shuffled pass
        x, y = batches.x, batches.targets
        order = np.sort(index)
        for name in tasks:
            assert y[name].tolist() == truth[name][order].astype(np.float32).tolist()
        for j, col in enumerate(table.numeric):
            want = reference.standardised(raw[col], col in MONEY, train)[order]
            np.testing.assert_allclose(x["dense"][:, j].numpy(), want, atol=1e-5)
        for j, col in enumerate(table.categorical):
            codes, values = x["categorical"][:, j].numpy(), raw[col][order]
            seen = np.isin(values, raw[col][train])
            assert np.array_equal(codes == 0, ~seen), (split, col)
            pairs = set(zip(codes[seen].tolist(), values[seen].tolist(), strict=True))
            assert len(pairs) == len({c for c, _ in pairs}) == len({v for _, v in pairs})
