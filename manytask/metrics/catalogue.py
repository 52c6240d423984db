"""The metric catalogue: name -> direction + a torchmetrics constructor per task kind.

Outputs reach a metric already prepared by :func:`prepare` (see there): probabilities for
classification (``(B, C)``, targets class indices), binary (``(B,)``, targets 0/1) and
multi-label tasks (``(B, L)``, targets 0/1), values for regression (``(B,)`` for one output,
``(B, D)`` otherwise). torchmetrics is imported only when a metric is built: it takes
seconds to import and ``import manytask`` must stay quick.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..registry import Registry, RegistryError

KINDS = ("classification", "binary", "multilabel", "regression")

Builder = Callable[[int], Any]  # out_features -> torchmetrics.Metric


@dataclass(frozen=True)
class MetricDef:
    """A metric by name: its direction and one torchmetrics constructor per task kind.

    ``builders[kind](out_features)`` returns a fresh ``torchmetrics.Metric``. A kind with no
    builder does not offer the metric (R² for a classification task, say).
    """

    higher_is_better: bool
    builders: dict[str, Builder]
    doc: str = ""

    def __call__(self) -> MetricDef:  # the registry's target; building goes via build_metric
        return self


METRICS: Registry[MetricDef] = Registry("metric")


def _add(name: str, higher: bool, doc: str, aliases: tuple[str, ...] = (),
         **builders: Builder) -> None:
    METRICS.add(name, MetricDef(higher, dict(builders), doc), summary=doc, aliases=aliases)


def _tm() -> Any:
    import torchmetrics

    return torchmetrics


def _cls() -> Any:
    import torchmetrics.classification as c

    return c


def _reg() -> Any:
    import torchmetrics.regression as r

    return r


def _log_loss() -> type:
    torchmetrics = _tm()

    class LogLoss(torchmetrics.Metric):  # type: ignore[name-defined]
        """Mean negative log-likelihood of the true labels: -(1/N) Σ_i log p_i(y_i).

        The probabilities are clipped to [eps, 1-eps] with eps the float64 machine epsilon,
        as scikit-learn's ``log_loss`` does. Sums are synchronised across processes.
        """

        full_state_update = False

        def __init__(self, multilabel: bool = False, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.multilabel = multilabel
            self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

        def update(self, preds: Tensor, target: Tensor) -> None:
            eps = torch.finfo(torch.float64).eps
            p = preds.double().clamp(eps, 1 - eps)
            if preds.dim() == 2 and not self.multilabel:  # class probabilities
                picked = p.gather(1, target.long().reshape(-1, 1)).squeeze(1)
                nll = -picked.log()
            else:  # one Bernoulli per element
                t = target.double()
                nll = -(t * p.log() + (1 - t) * (1 - p).log())
                if self.multilabel:  # mean over labels, as scikit-learn does per sample
                    nll = nll.mean(dim=1)
            self.total += nll.sum()
            self.count += nll.numel()

        def compute(self) -> Tensor:
            return self.total / self.count

    return LogLoss


def _balanced_binary() -> Any:
    # balanced accuracy = mean per-class recall; for two classes it is macro recall with
    # the probabilities laid out as [1 - p, p]
    c = _cls()

    class BinaryBalancedAccuracy(c.MulticlassRecall):  # type: ignore[name-defined]
        def update(self, preds: Tensor, target: Tensor) -> None:
            super().update(torch.stack([1 - preds, preds], dim=1), target)

    return BinaryBalancedAccuracy(num_classes=2, average="macro")


def _corr(kind: str) -> Builder:
    def build(n: int) -> Any:
        r = _reg()
        if kind == "pearson":  # streaming sums: constant memory
            return r.PearsonCorrCoef(num_outputs=n)
        import warnings

        with warnings.catch_warnings():  # ranks need every value: it keeps them, as it says
            warnings.simplefilter("ignore", UserWarning)
            return r.SpearmanCorrCoef(num_outputs=n)

    return build


_add("accuracy", True, "fraction of samples predicted right (multi-label: of decisions)",
     classification=lambda n: _cls().MulticlassAccuracy(num_classes=n, average="micro"),
     binary=lambda n: _cls().BinaryAccuracy(),
     multilabel=lambda n: _cls().MultilabelAccuracy(num_labels=n, average="micro"))
_add("balanced_accuracy", True, "mean recall over the classes",
     classification=lambda n: _cls().MulticlassRecall(num_classes=n, average="macro"),
     binary=lambda n: _balanced_binary(),
     multilabel=lambda n: _cls().MultilabelRecall(num_labels=n, average="macro"))
_add("f1", True, "F1: binary for binary tasks, macro average otherwise",
     classification=lambda n: _cls().MulticlassF1Score(num_classes=n, average="macro"),
     binary=lambda n: _cls().BinaryF1Score(),
     multilabel=lambda n: _cls().MultilabelF1Score(num_labels=n, average="macro"))
_add("f1_macro", True, "F1 averaged over classes (labels) with equal weight",
     classification=lambda n: _cls().MulticlassF1Score(num_classes=n, average="macro"),
     binary=lambda n: _balanced_f1(),
     multilabel=lambda n: _cls().MultilabelF1Score(num_labels=n, average="macro"))
_add("f1_micro", True, "F1 of the pooled decisions (for one-label classification: accuracy)",
     classification=lambda n: _cls().MulticlassF1Score(num_classes=n, average="micro"),
     binary=lambda n: _cls().BinaryAccuracy(),
     multilabel=lambda n: _cls().MultilabelF1Score(num_labels=n, average="micro"))
_add("mcc", True, "Matthews correlation coefficient",
     classification=lambda n: _cls().MulticlassMatthewsCorrCoef(num_classes=n),
     binary=lambda n: _cls().BinaryMatthewsCorrCoef(),
     multilabel=lambda n: _cls().MultilabelMatthewsCorrCoef(num_labels=n))
_add("auroc", True, "area under the ROC curve (one-vs-rest macro for several classes)",
     aliases=("auc",),
     classification=lambda n: _cls().MulticlassAUROC(num_classes=n, average="macro"),
     binary=lambda n: _cls().BinaryAUROC(),
     multilabel=lambda n: _cls().MultilabelAUROC(num_labels=n, average="macro"))
_add("average_precision", True, "area under the precision-recall curve (macro)",
     classification=lambda n: _cls().MulticlassAveragePrecision(num_classes=n, average="macro"),
     binary=lambda n: _cls().BinaryAveragePrecision(),
     multilabel=lambda n: _cls().MultilabelAveragePrecision(num_labels=n, average="macro"))
_add("log_loss", False, "mean negative log-likelihood of the true labels",
     classification=lambda n: _log_loss()(),
     binary=lambda n: _log_loss()(),
     multilabel=lambda n: _log_loss()(multilabel=True))
_add("mse", False, "mean squared error (over every output)",
     regression=lambda n: _reg().MeanSquaredError(num_outputs=1))
_add("rmse", False, "root mean squared error (over every output)",
     regression=lambda n: _reg().MeanSquaredError(squared=False, num_outputs=1))
_add("mae", False, "mean absolute error (over every output)",
     regression=lambda n: _reg().MeanAbsoluteError(num_outputs=1))
_add("r2", True, "coefficient of determination R² (mean over outputs)",
     regression=lambda n: _reg().R2Score(multioutput="uniform_average"))
_add("pearson", True, "Pearson correlation (mean over outputs)", regression=_corr("pearson"))
_add("spearman", True, "Spearman rank correlation (mean over outputs)",
     regression=_corr("spearman"))


def _balanced_f1() -> Any:
    # macro F1 of a binary task: the mean of the F1 of class 1 and of class 0
    c = _cls()

    class BinaryMacroF1(c.MulticlassF1Score):  # type: ignore[name-defined]
        def update(self, preds: Tensor, target: Tensor) -> None:
            super().update(torch.stack([1 - preds, preds], dim=1), target)

    return BinaryMacroF1(num_classes=2, average="macro")


def metric_names_for(kind: str) -> list[str]:
    """Names of the metrics a task of ``kind`` can use."""
    return [e.name for e in METRICS.entries() if kind in e.target.builders]


def build_metric(name: str, kind: str, out_features: int, where: str = "") -> Any:
    """A fresh torchmetrics object for metric ``name`` on a task of ``kind``; one-line
    :class:`RegistryError` if the name is unknown or the kind does not offer it."""
    definition = METRICS.get(name)
    if kind not in definition.builders:
        label = f"{where}: " if where else ""
        raise RegistryError(
            f"{label}metric {name!r} does not apply to a {kind} task; "
            f"choose from {metric_names_for(kind)}"
        )
    return definition.builders[kind](out_features)


def prepare(kind: str, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Raw model outputs and labelled targets -> what the metrics of ``kind`` take."""
    if kind == "classification":
        return output.float().softmax(dim=-1), target.long().reshape(-1)
    if kind == "binary":
        return output.float().reshape(-1).sigmoid(), target.reshape(-1).round().long()
    if kind == "multilabel":
        b = output.shape[0]
        return output.float().reshape(b, -1).sigmoid(), target.reshape(b, -1).round().long()
    b = output.shape[0]
    out, tgt = output.float().reshape(b, -1), target.float().reshape(b, -1)
    if out.shape[1] == 1:
        return out.reshape(-1), tgt.reshape(-1)
    return out, tgt


def value(metric: Any) -> float:
    """A computed torchmetrics value as one float (per-output vectors averaged)."""
    result = metric.compute()
    if isinstance(result, Tensor):
        return float(result.double().mean()) if result.numel() else float("nan")
    return float(result)
