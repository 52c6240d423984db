"""Every metric against scikit-learn / SciPy on random data, fed in several batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from manytask.metrics import KINDS, METRICS, build_metric
from manytask.metrics.catalogue import prepare, value
from manytask.registry import RegistryError

N, C, L, D = 240, 4, 3, 2
gen = torch.Generator().manual_seed(0)


def _bits(*shape: int) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen).float()


def _data(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "classification":
        return torch.randn(N, C, generator=gen) * 2, torch.randint(0, C, (N,), generator=gen)
    if kind == "binary":
        return torch.randn(N, 1, generator=gen) * 2, _bits(N, 1)
    if kind == "multilabel":
        return torch.randn(N, L, generator=gen) * 2, _bits(N, L)
    y = torch.randn(N, D, generator=gen)
    return y + 0.7 * torch.randn(N, D, generator=gen), y


def _onehot_probs(p: np.ndarray) -> np.ndarray:  # binary probability -> [1-p, p]
    return np.stack([1 - p, p], axis=1)


def reference(name: str, kind: str, out: torch.Tensor, y: torch.Tensor) -> float:
    """The metric computed independently with scikit-learn / SciPy."""
    p = out.double()
    if kind == "classification":
        prob = p.softmax(-1).numpy()
        pred, t = prob.argmax(1), y.numpy()
        per = {
            "accuracy": lambda: skm.accuracy_score(t, pred),
            "balanced_accuracy": lambda: skm.balanced_accuracy_score(t, pred),
            "f1": lambda: skm.f1_score(t, pred, average="macro"),
            "f1_macro": lambda: skm.f1_score(t, pred, average="macro"),
            "f1_micro": lambda: skm.f1_score(t, pred, average="micro"),
            "mcc": lambda: skm.matthews_corrcoef(t, pred),
            "auroc": lambda: skm.roc_auc_score(t, prob, multi_class="ovr", average="macro"),
            "average_precision": lambda: skm.average_precision_score(
                np.eye(C)[t], prob, average="macro"),
            "log_loss": lambda: skm.log_loss(t, prob, labels=list(range(C))),
        }
        return float(per[name]())
    if kind in ("binary", "multilabel"):
        prob = p.sigmoid().numpy().reshape(N, -1)
        t = y.numpy().reshape(N, -1).astype(int)
        pred = (prob > 0.5).astype(int)
        if kind == "binary":
            prob, t, pred = prob[:, 0], t[:, 0], pred[:, 0]
            per = {
                "accuracy": lambda: skm.accuracy_score(t, pred),
                "balanced_accuracy": lambda: skm.balanced_accuracy_score(t, pred),
                "f1": lambda: skm.f1_score(t, pred),
                "f1_macro": lambda: skm.f1_score(t, pred, average="macro"),
                "f1_micro": lambda: skm.f1_score(t, pred, average="micro"),
                "mcc": lambda: skm.matthews_corrcoef(t, pred),
                "auroc": lambda: skm.roc_auc_score(t, prob),
                "average_precision": lambda: skm.average_precision_score(t, prob),
                "log_loss": lambda: skm.log_loss(t, _onehot_probs(prob)),
            }
            return float(per[name]())
        per = {
            "accuracy": lambda: (pred == t).mean(),
            "balanced_accuracy": lambda: np.mean(
                [skm.recall_score(t[:, j], pred[:, j]) for j in range(L)]),
            "f1": lambda: skm.f1_score(t, pred, average="macro"),
            "f1_macro": lambda: skm.f1_score(t, pred, average="macro"),
            "f1_micro": lambda: skm.f1_score(t, pred, average="micro"),
            "mcc": lambda: skm.matthews_corrcoef(t.reshape(-1), pred.reshape(-1)),
            "auroc": lambda: skm.roc_auc_score(t, prob, average="macro"),
            "average_precision": lambda: skm.average_precision_score(t, prob, average="macro"),
            "log_loss": lambda: np.mean([skm.log_loss(t[:, j], _onehot_probs(prob[:, j]))
                                         for j in range(L)]),
        }
        return float(per[name]())
    a, b = p.numpy(), y.double().numpy()
    per = {
        "mse": lambda: skm.mean_squared_error(b, a),
        "rmse": lambda: math.sqrt(skm.mean_squared_error(b, a)),
        "mae": lambda: skm.mean_absolute_error(b, a),
        "r2": lambda: skm.r2_score(b, a),
        "pearson": lambda: np.mean([stats.pearsonr(a[:, j], b[:, j]).statistic for j in range(D)]),
        "spearman": lambda: np.mean([stats.spearmanr(a[:, j], b[:, j]).statistic
                                     for j in range(D)]),
    }
    return float(per[name]())


CASES = [(e.name, k) for e in METRICS.entries() for k in KINDS if k in e.target.builders]


def test_catalogue_covers_the_issue() -> None:
    wanted = {"accuracy", "balanced_accuracy", "f1", "f1_macro", "f1_micro", "mcc", "auroc",
              "average_precision", "log_loss", "mse", "rmse", "mae", "r2", "pearson", "spearman"}
    assert wanted <= set(METRICS.names())
    assert "auc" in METRICS  # the name earlier results use


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_metric_matches_reference_streamed(name: str, kind: str) -> None:
    out, y = _data(kind)
    n_out = {"classification": C, "binary": 1, "multilabel": L, "regression": D}[kind]
    metric = build_metric(name, kind, n_out)
    for chunk in torch.arange(N).split(37):  # uneven batches: the result must not depend on them
        metric.update(*prepare(kind, out[chunk], y[chunk]))
    assert value(metric) == pytest.approx(reference(name, kind, out, y), rel=1e-4, abs=1e-5)


def test_one_output_regression_correlations() -> None:
    y = torch.randn(N, 1, generator=gen)
    out = y + torch.randn(N, 1, generator=gen)
    for name, ref in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        metric = build_metric(name, "regression", 1)
        metric.update(*prepare("regression", out, y))
        assert value(metric) == pytest.approx(ref(out[:, 0], y[:, 0]).statistic, rel=1e-4)


def test_metric_of_another_kind_is_refused_in_one_line() -> None:
    with pytest.raises(RegistryError, match="'r2' does not apply to a classification") as err:
        build_metric("r2", "classification", 3)
    assert "\n" not in str(err.value)
    with pytest.raises(RegistryError, match="did you mean 'auroc'"):
        build_metric("aurok", "binary", 1)


def test_directions() -> None:
    lower = {e.name for e in METRICS.entries() if not e.target.higher_is_better}
    assert lower == {"log_loss", "mse", "rmse", "mae"}
