"""Data maps (per-example confidence and variability), task vectors and the clustering."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from manytask import Task
from manytask.grouping import (
    DataMapRecorder,
    cluster_tasks,
    datamap_affinity,
    fuzzy_membership,
    kmeans,
    task_vectors,
)
from manytask.grouping.datamaps import DataMap, true_label_probability


class _Fixed(nn.Module):
    """Outputs set from outside, so the probabilities per epoch are known."""

    def __init__(self) -> None:
        super().__init__()
        self.logits: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: v[x.long().reshape(-1)] for t, v in self.logits.items()}


def test_true_label_probability_matches_softmax_and_sigmoid() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    p = true_label_probability(Task.classification("c", 3), logits, torch.tensor([0, 2]))
    soft = torch.softmax(logits, 1)
    assert torch.allclose(p, torch.stack([soft[0, 0], soft[1, 2]]))
    b = true_label_probability(
        Task.binary("b"), torch.tensor([[0.5], [0.5]]), torch.tensor([[1.0], [0.0]])
    )
    s = torch.sigmoid(torch.tensor(0.5))
    assert torch.allclose(b, torch.stack([s, 1 - s]))
    with pytest.raises(ValueError, match="regression"):
        true_label_probability(Task.regression("r"), logits, torch.zeros(2))


def test_recorder_gives_mean_and_std_over_epochs_and_skips_missing_labels() -> None:
    tasks = [Task.binary("b"), Task.classification("c", 2)]
    model = _Fixed()
    x = torch.arange(4).float().reshape(4, 1)
    targets = {
        "b": torch.tensor([[1.0], [0.0], [float("nan")], [1.0]]),
        "c": torch.tensor([0, 1, 1, -1]),
    }
    probe = [
        (x[:2], {k: v[:2] for k, v in targets.items()}),
        (x[2:], {k: v[2:] for k, v in targets.items()}),
    ]
    recorder = DataMapRecorder(tasks)
    epochs = [
        torch.tensor([[0.0], [1.0], [2.0], [-1.0]]),
        torch.tensor([[2.0], [0.0], [1.0], [1.0]]),
    ]
    seen = []
    for logit in epochs:
        model.logits = {"b": logit, "c": torch.cat([logit, -logit], 1)}
        recorder.record(model, probe)
        sig = torch.sigmoid(logit.reshape(-1))
        seen.append(sig)
    maps = recorder.maps()
    s = torch.stack(seen).numpy()
    p_b = np.stack([s[:, 0], 1 - s[:, 1], s[:, 3]], 1)  # rows 0, 1, 3 labelled for b
    assert np.allclose(maps["b"].confidence, p_b.mean(0))
    assert np.allclose(maps["b"].variability, p_b.std(0))
    assert maps["b"].rows.tolist() == [0, 1, 3]
    assert maps["c"].rows.tolist() == [0, 1, 2]
    # class 0 logit l, class 1 logit -l: p(class 0) = sigmoid(2 l)
    two = torch.sigmoid(2 * torch.stack([e.reshape(-1) for e in epochs])).numpy()
    p_c = np.stack([two[:, 0], 1 - two[:, 1], 1 - two[:, 2]], 1)
    assert np.allclose(maps["c"].confidence, p_c.mean(0))
    assert maps["b"].epochs == 2


def test_recorder_refuses_regression_and_a_changing_probe() -> None:
    with pytest.raises(ValueError, match="regression"):
        DataMapRecorder([Task.regression("r")])
    model = _Fixed()
    model.logits = {"b": torch.zeros(3, 1)}
    recorder = DataMapRecorder([Task.binary("b")])
    x = torch.arange(3).float().reshape(3, 1)
    recorder.record(model, [(x, {"b": torch.tensor([[1.0], [0.0], [1.0]])})])
    with pytest.raises(ValueError, match="fixed order"):
        recorder.record(model, [(x, {"b": torch.tensor([[1.0], [float("nan")], [1.0]])})])


def _map(name: str, conf: list[float], var: list[float], rows: list[int]) -> DataMap:
    return DataMap(name, np.array(conf), np.array(var), np.array(rows), 3)


def test_task_vectors_align_samples_or_fall_back_to_histograms() -> None:
    same = {
        "a": _map("a", [0.9, 0.2], [0.1, 0.3], [0, 1]),
        "b": _map("b", [0.8, 0.3], [0.0, 0.2], [0, 1]),
    }
    vectors, kind = task_vectors(same)
    assert kind == "samples"
    assert np.allclose(vectors[0], [0.9, 0.2, 0.1, 0.3])
    own = {
        "a": _map("a", [0.95, 0.05], [0.01, 0.49], [0, 1]),
        "b": _map("b", [0.95, 0.96, 0.5], [0.01, 0.02, 0.3], [2, 3, 4]),
    }
    hist, kind = task_vectors(own, bins=2)
    assert kind == "histogram"
    assert hist.shape == (2, 4)
    assert np.allclose(hist.sum(1), 1.0)
    # a: one example in (high conf, low var), one in (low conf, high var)
    assert np.allclose(hist[0], [0.0, 0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="same"):
        task_vectors(own, "samples")


def test_datamap_affinity_ranks_the_closest_tasks_highest() -> None:
    maps = {
        "a": _map("a", [0.9, 0.1], [0.1, 0.1], [0, 1]),
        "b": _map("b", [0.88, 0.12], [0.1, 0.1], [0, 1]),
        "c": _map("c", [0.1, 0.9], [0.3, 0.3], [0, 1]),
    }
    m = datamap_affinity(maps)
    assert np.allclose(m.values, m.values.T)
    assert m.values[0, 1] > m.values[0, 2] and m.values[1, 0] > m.values[1, 2]


def test_kmeans_separates_blobs_deterministically() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (5, 3)), rng.normal(5, 0.1, (5, 3))])
    labels, centroids, _ = kmeans(x, 2, seed=1)
    assert len(set(labels[:5])) == 1 and len(set(labels[5:])) == 1 and labels[0] != labels[5]
    again, _, _ = kmeans(x, 2, seed=1)
    assert np.array_equal(labels, again)
    assert np.allclose(np.sort(centroids[:, 0]), [x[:5, 0].mean(), x[5:, 0].mean()])


def test_fuzzy_membership_is_a_distribution_that_hardens_as_m_goes_to_one() -> None:
    x = np.array([[0.0], [1.0], [0.4]])
    c = np.array([[0.0], [1.0]])
    soft = fuzzy_membership(x, c, m=2.0)
    assert np.allclose(soft.sum(1), 1.0)
    assert np.allclose(soft[0], [1, 0]) and np.allclose(soft[1], [0, 1])
    # m = 2: u proportional to 1 / d^2, d = 0.4 and 0.6
    assert soft[2, 0] == pytest.approx((1 / 0.16) / (1 / 0.16 + 1 / 0.36))
    hard = fuzzy_membership(x, c, m=1.01)
    assert hard[2, 0] > 0.999
    with pytest.raises(ValueError, match="m"):
        fuzzy_membership(x, c, m=1.0)


def test_cluster_tasks_overlap_only_for_allowed_tasks() -> None:
    x = np.array([[0.0], [0.1], [1.0], [1.1], [0.55]])
    hard = cluster_tasks(x, 2, seed=0)
    assert sum(len(g) for g in hard.groups) == 5
    soft = cluster_tasks(x, 2, seed=0, overlap=[4], m=2.0, threshold=0.3)
    assert sum(4 in g for g in soft.groups) == 2
    assert all(sum(t in g for g in soft.groups) == 1 for t in range(4))
