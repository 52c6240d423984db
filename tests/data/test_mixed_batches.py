"""Mixed multi-task batches, stacked evaluation batches, and ``data: text`` end to end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from manytask.data.text import MixedTaskBatches, Text, stacked_batches


def _data(sizes: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    # feature column 0 says which task a row comes from, column 1 which row it is
    feats, labels = {}, {}
    for k, (task, n) in enumerate(sizes.items()):
        feats[task] = torch.stack([torch.full((n,), float(k)), torch.arange(n).float()], 1)
        labels[task] = torch.arange(n) % 3
    return feats, labels


SIZES = {"a": 50, "b": 30, "c": 20, "d": 7}


def test_batches_mix_tasks_with_missing_labels_elsewhere() -> None:
    feats, labels = _data(SIZES)
    batches = MixedTaskBatches(feats, labels, batch_size=12, tasks_per_batch=3, seed=0)
    assert len(batches) == -(-107 // 12)
    seen_tasks = set()
    for x, targets in batches:
        assert x.shape == (12, 2) and set(targets) == set(SIZES)
        owner = x[:, 0].long()
        for k, task in enumerate(SIZES):
            mine = owner == k
            assert bool((targets[task][~mine] == -1).all())
            rows = x[mine, 1].long()
            assert torch.equal(targets[task][mine], labels[task][rows])
        present = {int(k) for k in owner.unique()}
        seen_tasks |= present
        assert all(int((owner == k).sum()) % 4 == 0 for k in present)  # whole sub-batches
    assert seen_tasks == {0, 1, 2, 3}
    assert sum(len(x[:, 0].unique()) > 1 for x, _ in batches) > 0  # several tasks per step


def test_one_task_per_batch() -> None:
    feats, labels = _data(SIZES)
    batches = MixedTaskBatches(feats, labels, batch_size=8, tasks_per_batch=1,
                               sampler="round_robin", steps=8)
    owners = [int(x[0, 0]) for x, _ in batches]
    assert owners == [0, 1, 2, 3, 0, 1, 2, 3]
    for x, targets in batches:
        assert len(x[:, 0].unique()) == 1
        k = int(x[0, 0])
        assert sum(bool((t >= 0).any()) for t in targets.values()) == 1
        assert bool((targets[list(SIZES)[k]] >= 0).all())


def test_sub_batches_walk_through_each_task_before_repeating() -> None:
    feats, labels = _data({"a": 12, "b": 12})
    batches = MixedTaskBatches(feats, labels, batch_size=4, tasks_per_batch=1,
                               sampler="round_robin", steps=6)
    rows = {0: [], 1: []}  # type: dict[int, list[int]]
    for x, _ in batches:
        rows[int(x[0, 0])] += x[:, 1].long().tolist()
    assert sorted(rows[0]) == list(range(12)) and sorted(rows[1]) == list(range(12))


def test_reproducible_per_epoch() -> None:
    feats, labels = _data(SIZES)

    def epoch(e: int, seed: int = 0) -> list[torch.Tensor]:
        b = MixedTaskBatches(feats, labels, batch_size=12, seed=seed)
        b.set_epoch(e)
        return [x for x, _ in b]

    one = MixedTaskBatches(feats, labels, batch_size=12)
    one.set_epoch(1)
    first, second = [x for x, _ in one], [x for x, _ in one]
    assert all(torch.equal(p, q) for p, q in zip(first, second, strict=True))
    assert all(torch.equal(p, q) for p, q in zip(epoch(1), first, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(epoch(0), epoch(1), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(epoch(1), epoch(1, seed=5), strict=True))


def test_bad_arguments() -> None:
    feats, labels = _data(SIZES)
    with pytest.raises(ValueError, match="labels for"):
        MixedTaskBatches(feats, {"a": labels["a"]}, 8)
    with pytest.raises(ValueError, match="smaller than"):
        MixedTaskBatches(feats, labels, 2, tasks_per_batch=3)
    with pytest.raises(ValueError, match="sampler"):
        MixedTaskBatches(feats, labels, 8, sampler="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        MixedTaskBatches(feats, labels, 8, temperature=0.0)
    bad = dict(feats, b=torch.zeros(30, 3))
    with pytest.raises(ValueError, match="task 'b'"):
        MixedTaskBatches(bad, labels, 8)


def test_stacked_batches_label_each_task_on_its_rows() -> None:
    feats, labels = _data({"a": 5, "b": 3})
    x, targets = next(iter(stacked_batches(feats, labels, batch_size=100)))
    assert torch.equal(targets["a"], torch.cat([labels["a"], torch.full((3,), -1)]))
    assert torch.equal(targets["b"], torch.cat([torch.full((5,), -1), labels["b"]]))
    assert x.shape == (8, 2)


ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "text"


@pytest.mark.skipif(not ROOT.is_dir(), reason=f"shared text data not found at {ROOT}")
def test_text_config_trains_end_to_end(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/text.yaml on three tasks (a pair task among them), the encoder replaced by
    random 16-d vectors: 60 + 60 + 60 training rows in batches of 12 make 15 steps."""
    from manytask.config import ConfigError, TrainConfig, load_config
    from manytask.data.declared.text_columns import TextColumns
    from manytask.run import train_from_config

    gen = torch.Generator().manual_seed(0)

    def fake(self: TextColumns, texts: Sequence[Text]) -> torch.Tensor:  # stands in for MiniLM
        return torch.randn(len(texts), 16, generator=gen)

    def words(self: TextColumns, texts: list[list[str]]) -> list[int]:  # MiniLM's tokenizer
        return [len(text.split()) for column in texts for text in column]

    monkeypatch.setattr(TextColumns, "_encode", fake)
    monkeypatch.setattr(TextColumns, "_lengths", words)
    config = Path(__file__).resolve().parents[2] / "configs" / "text.yaml"
    base = load_config(config, {"data_root": str(ROOT)})
    section = dict(base.dataset or {})
    section["defaults"] = {**section["defaults"], "sample": {"train": 60, "val": 20, "test": 30}}
    names = ["cr", "rte", "trec"]
    cfg = TrainConfig(data="files", dataset=section, tasks=names, data_root=str(ROOT),
                      cache_dir=str(tmp_path / "cache"), hidden=[8], epochs=1, batch_size=12,
                      tasks_per_batch=3, progress=False)
    results = train_from_config(cfg)
    assert set(results["test"]) == set(names)
    assert results["trainer"].step == 15  # 180 training examples / 12
    with pytest.raises(ConfigError, match="dataset"):
        TrainConfig(data="files")
