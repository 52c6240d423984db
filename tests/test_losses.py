"""Each loss against its closed form computed here in NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from manytask import Task
from manytask.losses import LOSSES, make_loss
from manytask.registry import RegistryError, check_declared

g = torch.Generator().manual_seed(0)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def test_declared_parameters_match_the_signatures() -> None:
    for entry in LOSSES.entries():
        assert check_declared(entry) == []


def test_cross_entropy_with_label_smoothing_and_class_weights() -> None:
    z = torch.randn(20, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (20,), generator=g)
    p = _softmax(z.numpy())
    nll = -np.log(p)
    eps, w = 0.2, np.array([1.0, 2.0, 0.5, 3.0])
    q = (1 - eps) * np.eye(4)[y.numpy()] + eps / 4
    # torch's convention (weights applied per class inside the smoothed sum, mean by w_y)
    per = (q * w * nll).sum(1)
    expected = per.sum() / w[y.numpy()].sum()
    loss = make_loss("cross_entropy", {"class_weights": list(w), "label_smoothing": eps},
                     "classification", 4, "t")
    assert float(loss(z, y)) == pytest.approx(expected, rel=1e-10)
    plain = make_loss(None, None, "classification", 4, "t")
    assert float(plain(z, y)) == pytest.approx(nll[np.arange(20), y.numpy()].mean(), rel=1e-10)


def test_bce_with_pos_weight_and_smoothing() -> None:
    z = torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (30, 3), generator=g).double()
    p, t = _sigmoid(z.numpy()), y.numpy() * 0.9 + 0.05
    pw = np.array([2.0, 1.0, 0.5])
    expected = -(pw * t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
    loss = make_loss("bce", {"pos_weight": list(pw), "label_smoothing": 0.1}, "multilabel", 3, "t")
    assert float(loss(z, y)) == pytest.approx(expected, rel=1e-10)


def test_focal_binary_is_lin_et_al_eq5() -> None:
    z = torch.randn(40, 1, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (40, 1), generator=g).double()
    p, t = _sigmoid(z.numpy()), y.numpy()
    pt = np.where(t == 1, p, 1 - p)
    at = np.where(t == 1, 0.25, 0.75)
    expected = (-at * (1 - pt) ** 2 * np.log(pt)).mean()
    loss = make_loss("focal", {"gamma": 2.0, "alpha": [0.25]}, "binary", 1, "t")
    assert float(loss(z, y)) == pytest.approx(expected, rel=1e-10)
    # gamma 0 and no alpha: plain binary cross-entropy
    bce = make_loss("bce", None, "binary", 1, "t")
    assert float(make_loss("focal", {"gamma": 0.0}, "binary", 1, "t")(z, y)) == pytest.approx(
        float(bce(z, y)), rel=1e-10)


def test_focal_multiclass() -> None:
    z = torch.randn(25, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (25,), generator=g)
    pt = _softmax(z.numpy())[np.arange(25), y.numpy()]
    expected = (-(1 - pt) ** 1.5 * np.log(pt)).mean()
    loss = make_loss("focal", {"gamma": 1.5}, "classification", 5, "t")
    assert float(loss(z, y)) == pytest.approx(expected, rel=1e-10)


def test_huber_piecewise() -> None:
    out = torch.randn(50, 2, generator=g, dtype=torch.float64) * 3
    tgt = torch.randn(50, 2, generator=g, dtype=torch.float64)
    r = np.abs(out.numpy() - tgt.numpy())
    d = 0.7
    expected = np.where(r <= d, 0.5 * r**2, d * (r - 0.5 * d)).mean()
    loss = make_loss("huber", {"delta": d}, "regression", 2, "t")
    assert float(loss(out, tgt)) == pytest.approx(expected, rel=1e-10)


def test_task_loss_skips_missing_labels_and_keeps_float_targets() -> None:
    task = Task.regression("r", loss="l1")
    out = torch.tensor([[1.0], [2.0], [3.0]])
    tgt = torch.tensor([[1.5], [float("nan")], [2.0]])
    assert float(task.loss(out, tgt)) == pytest.approx((0.5 + 1.0) / 2)


def test_misfit_losses_are_refused_in_one_line() -> None:
    with pytest.raises(RegistryError, match="loss 'huber' does not apply to a classification"):
        Task.classification("c", 3, loss="huber")
    with pytest.raises(RegistryError, match="class_weights has 2 values for 3 classes"):
        Task.classification("c", 3, loss_params={"class_weights": [1, 2]})
    with pytest.raises(RegistryError, match="label_smoothing must be < 1"):
        Task.binary("b", loss_params={"label_smoothing": 1.0})
    with pytest.raises(RegistryError, match="did you mean 'focal'"):
        Task.binary("b", loss="fokal")
