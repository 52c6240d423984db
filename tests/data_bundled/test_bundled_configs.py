"""configs/text.yaml and configs/census*.yaml, read through the files route, give the rows,
labels and splits that each data set's README states and that the dedicated loaders gave:
the eight text tasks row for row and label for label; Census-Income the same rows in each
split, the same labels, the same standardised numbers and the same categories (codes may be
numbered differently: compared through a one-to-one map)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from manytask.config import load_config
from manytask.data.declared import parse_dataset, prepare_declared
from manytask.data.declared.preprocess import Labels
from manytask.data.declared.read import read_splits
from manytask.data.declared.text_columns import texts_of

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
TEXT, CENSUS = SHARED / "text", SHARED / "census_income_kdd"
needs_text = pytest.mark.skipif(not TEXT.is_dir(), reason=f"shared text data not at {TEXT}")
needs_census = pytest.mark.skipif(not (CENSUS / "census-income.test.gz").is_file(),
                                  reason=f"shared census file not at {CENSUS}")


def dataset(config: str, root: Path, sample: bool = True) -> Any:
    section = dict(load_config(REPO / "configs" / config).dataset or {})
    if not sample:
        section["defaults"] = {k: v for k, v in section["defaults"].items() if k != "sample"}
    return parse_dataset(section, root)


@needs_text
@pytest.mark.parametrize("sample", [True, False], ids=["sampled", "whole"])
def test_text_config_gives_the_loaders_rows_and_labels(sample: bool) -> None:
    from manytask.data.text import load_text_task

    spec = dataset("text.yaml", TEXT, sample)
    assert [t.name for t in spec.tasks] == ["sst2", "mr", "cr", "subj", "mpqa", "cola", "rte",
                                            "trec"]
    for table in spec.tables:
        task = table.tasks[0]
        parts = read_splits(table)
        old = load_text_task(TEXT, task.name)
        if sample:
            old = old.capped(2000, 500, 1000)
        labels = Labels.fit(task, parts["train"])
        assert labels.task().out_features == old.num_classes
        for split in ("train", "val", "test"):
            texts = texts_of(parts[split], table.text)
            rows = texts[0] if len(texts) == 1 else list(zip(*texts, strict=True))
            assert rows == list(old.split(split).texts), (task.name, split)
            y = labels.transform(parts[split], strict=True)[0]
            assert torch.equal(y, old.split(split).labels), (task.name, split)


# from the READMEs: (train file rows, val file rows or None, test rows, test label counts)
README = {"sst2": (6920, None, 1821, [912, 909]), "cola": (7250, 1301, 1043, [322, 721]),
          "rte": (2127, 363, 277, [131, 146]), "trec": (5452, None, 500, [9, 138, 94, 65, 81,
                                                                            113])}


@needs_text
@pytest.mark.parametrize("name", sorted(README))
def test_text_config_counts_match_the_readme(name: str) -> None:
    spec = dataset("text.yaml", TEXT, sample=False)
    table = next(t for t in spec.tables if t.tasks[0].name == name)
    parts = read_splits(table)
    n_train, n_val, n_test, test_counts = README[name]
    assert len(parts["test"]) == n_test
    if n_val is None:  # 10 % of the training file held out
        assert len(parts["val"]) == round(0.1 * n_train)
        assert len(parts["train"]) + len(parts["val"]) == n_train
    else:
        assert (len(parts["train"]), len(parts["val"])) == (n_train, n_val)
    y = Labels.fit(table.tasks[0], parts["train"]).transform(parts["test"], strict=True)[0]
    assert np.bincount(y.numpy()).tolist() == test_counts


def _codes_correspond(new: np.ndarray, old: np.ndarray) -> bool:
    """True when the two code columns are the same partition of the rows (a one-to-one
    renaming of the codes), with the unseen-value code 0 in the same rows."""
    pairs = np.unique(np.stack([new, old]), axis=1)
    return (len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
            and np.array_equal(new == 0, old == 0))


@needs_census
@pytest.mark.parametrize("group", [1, 2])
def test_census_config_gives_the_loaders_rows_labels_and_features(tmp_path: Path,
                                                                 group: int) -> None:
    from manytask.data.census import load_census

    config = "census.yaml" if group == 1 else "census-group2.yaml"
    spec = dataset(config, CENSUS)
    old = load_census(str(CENSUS), group)  # type: ignore[arg-type]
    data = prepare_declared(spec, cache_dir=tmp_path, batch_size=1 << 20)
    assert [t.name for t in data.tasks] == [t.name for t in old.tasks]
    assert data.cardinalities == old.cardinalities
    n = 99_762
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).numpy()
    cuts = {"train": perm[:int(0.6 * n)], "val": perm[int(0.6 * n):int(0.6 * n) + int(0.2 * n)],
            "test": perm[int(0.6 * n) + int(0.2 * n):]}
    for split in ("train", "val", "test"):
        batches = getattr(data, split)  # the tensors in file order, not a shuffled pass
        x, y = batches.x, batches.targets
        ref = getattr(old, split)
        order = np.argsort(cuts[split])  # the new split keeps file order; the old, perm order
        for name, target in y.items():
            assert torch.equal(target, ref.targets[name][order]), (split, name)
        assert torch.allclose(x["dense"], ref.dense[order], atol=1e-5)
        for j in range(x["categorical"].shape[1]):
            assert _codes_correspond(x["categorical"][:, j].numpy(),
                                     ref.categorical[order, j].numpy()), (split, j)
