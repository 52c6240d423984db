"""Tabular batches and the embedding + dense input layer."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch

from manytask.data.tabular import TabularDataset
from manytask.models.inputs import TabularInput
from manytask.tabular_types import TabularX


def test_input_layer_is_the_concatenation_of_per_column_embeddings() -> None:
    layer = TabularInput([4, 6, 3], n_dense=2, embedding_dim=[3, 2, 3])
    cat = torch.tensor([[3, 5, 0], [0, 1, 2]])
    dense = torch.randn(2, 2)
    out = layer(TabularX(cat, dense))
    assert out.shape == (2, 3 + 2 + 3 + 2) and layer.out_features == 10
    # widths are grouped (2 first, then 3); table rows are offset per column within a width
    t2, t3 = (cast(Any, t) for t in layer.tables)
    expected = torch.cat(
        [t2.weight[cat[:, 1]], t3.weight[cat[:, 0]], t3.weight[4 + cat[:, 2]], dense], dim=1
    )
    torch.testing.assert_close(out, expected)
    as_dict = layer({"categorical": cat, "dense": dense})
    torch.testing.assert_close(as_dict, expected)


def test_input_layer_rejects_codes_outside_a_columns_vocabulary() -> None:
    layer = TabularInput([4, 6], n_dense=0, embedding_dim=2)
    with pytest.raises(ValueError, match="column 0 has codes in \\[4, 4\\], outside \\[0, 4\\)"):
        layer(TabularX(torch.tensor([[4, 0]]), torch.zeros(1, 0)))
    with pytest.raises(ValueError, match="column 1"):
        layer(TabularX(torch.tensor([[0, -1]]), torch.zeros(1, 0)))
    with pytest.raises(ValueError, match="dense features of shape"):
        layer(TabularX(torch.tensor([[0, 1]]), torch.zeros(1, 3)))
    with pytest.raises(ValueError, match="integer categorical codes"):
        layer(TabularX(torch.zeros(1, 2), torch.zeros(1, 0)))
    with pytest.raises(TypeError, match="TabularX"):
        layer(torch.zeros(1, 2))
    with pytest.raises(TypeError, match="keys 'categorical' and 'dense'"):
        layer({"cat": torch.zeros(1, 2, dtype=torch.long)})
    with pytest.raises(ValueError, match="embedding width"):
        TabularInput([4, 6], 0, embedding_dim=[2])


def make(n: int = 23) -> TabularDataset:
    rows = torch.arange(n)
    return TabularDataset(
        torch.stack([rows % 5, rows % 3], 1),
        rows[:, None].float(),
        {"id": rows.float(), "cls": rows % 2},
        cardinalities=[5, 3],
    )


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_cover_each_row_once_with_aligned_targets(shuffle: bool) -> None:
    data = make()
    seen = []
    for batch in data.batches(5, shuffle=shuffle, generator=torch.Generator().manual_seed(1)):
        ids = batch.targets["id"].long()
        assert len(batch) <= 5
        torch.testing.assert_close(batch.x.dense[:, 0].long(), ids)
        torch.testing.assert_close(batch.x.categorical[:, 0], ids % 5)
        torch.testing.assert_close(batch.targets["cls"], ids % 2)
        seen.append(ids)
    order = torch.cat(seen)
    assert sorted(order.tolist()) == list(range(23))
    assert (order.tolist() == list(range(23))) is not shuffle
    assert sum(1 for _ in data.batches(5, drop_last=True)) == 4


def test_split_is_disjoint_seeded_and_sized() -> None:
    data = make(100)
    parts = data.split([0.6, 0.2, 0.2], seed=3)
    assert [len(p) for p in parts] == [60, 20, 20]
    ids = torch.cat([p.targets["id"] for p in parts])
    assert sorted(ids.long().tolist()) == list(range(100))
    again = data.split([0.6, 0.2, 0.2], seed=3)
    torch.testing.assert_close(again[1].targets["id"], parts[1].targets["id"])
    with pytest.raises(ValueError, match="sum to 1"):
        data.split([0.5, 0.2])


def test_dataset_rejects_misaligned_or_mistyped_tensors() -> None:
    with pytest.raises(ValueError, match="'y' has 3 rows, expected 4"):
        TabularDataset(torch.zeros(4, 1, dtype=torch.long), None, {"y": torch.zeros(3)})
    with pytest.raises(TypeError, match="categorical must be a 2-D integer"):
        TabularDataset(torch.zeros(4, 1), None, {})
    with pytest.raises(ValueError, match="column 1"):
        TabularDataset(torch.tensor([[0, 3]]), None, {}, cardinalities=[2, 3])
    with pytest.raises(ValueError, match="batch_size"):
        next(make().batches(0))
