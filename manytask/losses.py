"""Task losses chosen by name, each over the labelled samples of one task.

``LOSSES`` maps a name to a small class with declared parameters; a task kind has a default
(classification: ``cross_entropy``; binary and multi-label: ``bce``; regression: ``mse``).
Outputs are raw (logits for the classification kinds).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import Param, Registry, RegistryError

LOSSES: Registry[Any] = Registry("loss")

DEFAULT_LOSS = {"classification": "cross_entropy", "binary": "bce", "multilabel": "bce",
                "regression": "mse"}


class Loss(ABC):
    """Base: ``kinds`` it applies to; ``__call__(output, target)`` -> mean loss (scalar)."""

    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]]
    params: ClassVar[dict[str, Param]] = {}

    @abstractmethod
    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean loss of the labelled samples ``output`` against ``target``."""

    def check(self, kind: str, out_features: int, where: str) -> None:
        if kind not in self.kinds:
            raise RegistryError(
                f"{where}: loss {self.name!r} does not apply to a {kind} task "
                f"(it applies to: {', '.join(self.kinds)})"
            )


@LOSSES.register()
class CrossEntropy(Loss):
    """Cross-entropy -Σ_c q_c w_c log softmax(z)_c with q the one-hot label smoothed by ε:
    q = (1-ε) onehot(y) + ε/C (Szegedy et al., CVPR 2016, Section 7), w optional class
    weights (the mean is then weighted by w_y, as in ``torch.nn.functional.cross_entropy``)."""

    name = "cross_entropy"
    kinds = ("classification",)
    params: ClassVar[dict[str, Param]] = {
        "class_weights": Param("floats", None, "one weight per class", low=0, nullable=True),
        "label_smoothing": Param("float", 0.0, "ε in [0, 1)", low=0, high=1, high_open=True),
    }

    def __init__(self, class_weights: tuple[float, ...] | None = None,
                 label_smoothing: float = 0.0) -> None:
        self.class_weights = None if class_weights is None else tuple(class_weights)
        self.label_smoothing = label_smoothing

    def check(self, kind: str, out_features: int, where: str) -> None:
        super().check(kind, out_features, where)
        if self.class_weights is not None and len(self.class_weights) != out_features:
            raise RegistryError(
                f"{where}: class_weights has {len(self.class_weights)} values for "
                f"{out_features} classes"
            )

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        weight = None if self.class_weights is None else torch.tensor(
            self.class_weights, dtype=output.dtype, device=output.device)
        return F.cross_entropy(output, target.long(), weight=weight,
                               label_smoothing=self.label_smoothing)


@LOSSES.register()
class BCE(Loss):
    """Binary cross-entropy on logits, -[p_w y log σ(z) + (1-y) log(1-σ(z))], averaged over
    samples and labels; ``pos_weight`` p_w scales the positive term (one value, or one per
    label); ``label_smoothing`` ε moves the targets to y(1-ε) + ε/2."""

    name = "bce"
    kinds = ("binary", "multilabel")
    params: ClassVar[dict[str, Param]] = {
        "pos_weight": Param("floats", None, "weight of positives, one per label", low=0,
                            nullable=True),
        "label_smoothing": Param("float", 0.0, "ε in [0, 1)", low=0, high=1, high_open=True),
    }

    def __init__(self, pos_weight: tuple[float, ...] | None = None,
                 label_smoothing: float = 0.0) -> None:
        self.pos_weight = None if pos_weight is None else tuple(pos_weight)
        self.label_smoothing = label_smoothing

    def check(self, kind: str, out_features: int, where: str) -> None:
        super().check(kind, out_features, where)
        if self.pos_weight is not None and len(self.pos_weight) not in (1, out_features):
            raise RegistryError(
                f"{where}: pos_weight has {len(self.pos_weight)} values for {out_features} "
                "label(s)"
            )

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        b = output.shape[0]
        out, tgt = output.reshape(b, -1), target.reshape(b, -1).to(output.dtype)
        tgt = tgt * (1 - self.label_smoothing) + self.label_smoothing / 2
        pw = None if self.pos_weight is None else torch.tensor(
            self.pos_weight, dtype=out.dtype, device=out.device)
        return F.binary_cross_entropy_with_logits(out, tgt, pos_weight=pw)


@LOSSES.register()
class Focal(Loss):
    """Focal loss FL(p_t) = -α_t (1 - p_t)^γ log p_t (Lin et al., ICCV 2017, Eq. 5), averaged
    over samples (and labels). For binary/multi-label tasks α_t = α for positives and 1 - α
    for negatives (``alpha: null``: no α); for classification p_t is the softmax probability
    of the true class and α, if given, is one weight per class."""

    name = "focal"
    kinds = ("classification", "binary", "multilabel")
    params: ClassVar[dict[str, Param]] = {
        "gamma": Param("float", 2.0, "focusing parameter γ >= 0", low=0),
        "alpha": Param("floats", None, "binary: [α]; classification: one per class", low=0,
                       nullable=True),
    }

    def __init__(self, gamma: float = 2.0, alpha: tuple[float, ...] | None = None) -> None:
        self.gamma = gamma
        self.alpha = None if alpha is None else tuple(alpha)
        self.multiclass = False

    def check(self, kind: str, out_features: int, where: str) -> None:
        super().check(kind, out_features, where)
        self.multiclass = kind == "classification"
        want = out_features if self.multiclass else 1
        if self.alpha is not None and len(self.alpha) != want:
            raise RegistryError(f"{where}: focal alpha needs {want} value(s), got "
                                f"{len(self.alpha)}")

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        if self.multiclass:
            logp = output.log_softmax(dim=-1).gather(1, target.long().reshape(-1, 1)).squeeze(1)
            loss = -((1 - logp.exp()) ** self.gamma) * logp
            if self.alpha is not None:
                alpha = torch.tensor(self.alpha, dtype=output.dtype, device=output.device)
                loss = loss * alpha[target.long()]
            return loss.mean()
        b = output.shape[0]
        z, y = output.reshape(b, -1), target.reshape(b, -1).to(output.dtype)
        logp_t = -F.binary_cross_entropy_with_logits(z, y, reduction="none")
        loss = -((1 - logp_t.exp()) ** self.gamma) * logp_t
        if self.alpha is not None:
            loss = loss * (self.alpha[0] * y + (1 - self.alpha[0]) * (1 - y))
        return loss.mean()


@LOSSES.register()
class MSE(Loss):
    """Mean squared error (1/(N·D)) Σ (ŷ - y)²."""

    name = "mse"
    kinds = ("regression",)

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        b = output.shape[0]
        return F.mse_loss(output.reshape(b, -1), target.reshape(b, -1).to(output.dtype))


@LOSSES.register()
class Huber(Loss):
    """Huber loss (Huber, Ann. Math. Stat. 1964, Eq. 2.1): ½r² for |r| <= δ, δ(|r| - ½δ)
    beyond, averaged; quadratic near zero, linear for outliers."""

    name = "huber"
    kinds = ("regression",)
    params: ClassVar[dict[str, Param]] = {
        "delta": Param("float", 1.0, "threshold δ > 0", low=0, low_open=True),
    }

    def __init__(self, delta: float = 1.0) -> None:
        self.delta = delta

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        b = output.shape[0]
        return F.huber_loss(output.reshape(b, -1), target.reshape(b, -1).to(output.dtype),
                            delta=self.delta)


@LOSSES.register()
class L1(Loss):
    """Mean absolute error (1/(N·D)) Σ |ŷ - y|."""

    name = "l1"
    kinds = ("regression",)

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        b = output.shape[0]
        return F.l1_loss(output.reshape(b, -1), target.reshape(b, -1).to(output.dtype))


def make_loss(name: str | None, params: dict[str, Any] | None, kind: str, out_features: int,
              where: str) -> Loss:
    """The loss ``name`` (default: the kind's) with validated ``params``, checked for the task."""
    key = name or DEFAULT_LOSS[kind]
    LOSSES.validate(key, params, where)
    loss: Loss = LOSSES.build(key, **(params or {}))
    loss.check(kind, out_features, where)
    return loss
