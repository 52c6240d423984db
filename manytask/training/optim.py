"""Optimisers and learning-rate schedules chosen by name, with declared parameters.

Optimisers (:data:`OPTIMIZERS`): ``sgd`` (momentum, Nesterov), ``adam``, ``adamw``, ``rmsprop``,
``adagrad``, or any ``torch.optim`` class as ``torch.optim.NAME`` (its keywords passed on).
Parameter groups (:func:`param_groups`): the model's shared part, its heads, a method's own
parameters (uncertainty weighting's log-variances, ...) and fine-tuned encoder layers, each
with its own learning rate when asked; weight decay applies to the model, never to a method's
own parameters (decaying a learnable loss weight would change the method).

Schedules (:data:`SCHEDULES`, torch's schedulers): an optional linear warm-up from
``lr / (warmup + 1)`` to ``lr`` over ``warmup`` steps or epochs, then ``constant``,
``cosine`` (to ``eta_min``), ``linear`` (to ``end_factor * lr``), ``step`` (times ``gamma``
every ``step_size``) or ``plateau`` (times ``factor`` after ``patience`` validated epochs
without a better main score). The state goes into every checkpoint, so a resumed run follows
the same learning rates.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.optim import lr_scheduler

from ..registry import Param, Registry, RegistryError, resolve

Interval = Literal["step", "epoch"]
ROLES = ("shared", "heads", "balancer", "encoder")

_DECAY = Param("float", 0.0, "L2 penalty (decoupled for adamw)", low=0)
_EPS = Param("float", 1e-8, "added to the denominator", low=0, low_open=True)
_BETAS = Param("floats", (0.9, 0.999), "running-average coefficients",
               low=0, high=1, high_open=True, check=lambda v: None if len(v) == 2 else
               "must hold two numbers")

OPTIMIZERS: Registry[Any] = Registry("optimizer")
OPTIMIZERS.add("sgd", torch.optim.SGD, {
    "momentum": Param("float", 0.0, "heavy-ball momentum", low=0, high=1, high_open=True),
    "nesterov": Param("bool", False, "Nesterov momentum (needs momentum > 0)"),
    "dampening": Param("float", 0.0, low=0, high=1),
    "weight_decay": _DECAY,
}, summary="stochastic gradient descent (Robbins & Monro 1951), momentum as in torch")
OPTIMIZERS.add("adam", torch.optim.Adam, {
    "betas": _BETAS, "eps": _EPS, "weight_decay": _DECAY,
    "amsgrad": Param("bool", False, "AMSGrad variant"),
}, summary="Adam (Kingma & Ba 2015, Algorithm 1)")
OPTIMIZERS.add("adamw", torch.optim.AdamW, {
    "betas": _BETAS, "eps": _EPS,
    "weight_decay": Param("float", 0.01, "decoupled weight decay", low=0),
    "amsgrad": Param("bool", False, "AMSGrad variant"),
}, summary="AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2)")
OPTIMIZERS.add("rmsprop", torch.optim.RMSprop, {
    "alpha": Param("float", 0.99, low=0, high=1, high_open=True), "eps": _EPS,
    "momentum": Param("float", 0.0, low=0, high=1, high_open=True), "weight_decay": _DECAY,
}, summary="RMSprop (Hinton, lecture 6e)")
OPTIMIZERS.add("adagrad", torch.optim.Adagrad, {
    "lr_decay": Param("float", 0.0, low=0), "eps": Param("float", 1e-10, low=0, low_open=True),
    "weight_decay": _DECAY,
}, summary="Adagrad (Duchi et al. 2011)")


def optimizer_class(name: str) -> tuple[type[torch.optim.Optimizer], dict[str, Param] | None]:
    """The optimiser class of ``name`` and its declared parameters (``None``: a plain
    ``torch.optim.NAME``, whose keywords are checked against its signature)."""
    if isinstance(name, str) and name.startswith("torch.optim."):
        cls = getattr(torch.optim, name[len("torch.optim."):], None)
        if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
            raise RegistryError(f"optimizer {name!r}: torch.optim has no optimizer of that name")
        return cls, None
    entry = OPTIMIZERS.entry(name)
    return entry.target, dict(entry.params)


def check_optimizer(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated keyword arguments of optimiser ``name`` (before anything is built)."""
    cls, spec = optimizer_class(name)
    if spec is not None:
        given = dict(params or {})
        valid = resolve(spec, given, f"optimizer {name!r}")
        out = {k: valid[k] for k in given}
        if out.get("nesterov") and not out.get("momentum", 0) > 0:
            raise RegistryError(f"optimizer {name!r}: nesterov needs momentum > 0")
        return out
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params", "lr"}
    unknown = sorted(set(params or {}) - accepted)
    if unknown:
        raise RegistryError(
            f"optimizer {name!r}: unknown parameter(s) {unknown}; allowed: {sorted(accepted)}"
        )
    return dict(params or {})


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Fine-tuned encoder layers (a text model's ``top.layers``), if the model has them."""
    layers = getattr(getattr(model, "top", None), "layers", None)
    return list(layers.parameters()) if isinstance(layers, nn.Module) else []


def param_groups(
    model: Any, balancer: nn.Module, lr: float, lrs: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups by role: ``shared``, ``heads``, ``balancer``, ``encoder``.

    ``lrs`` gives a role another learning rate than ``lr``. The balancer's group has no
    weight decay. Empty groups are left out; frozen parameters are never included.
    """
    lrs = dict(lrs or {})
    unknown = sorted(set(lrs) - set(ROLES))
    if unknown:
        raise ValueError(f"learning rates given for unknown role(s) {unknown}; roles: {ROLES}")
    encoder = {id(p) for p in encoder_parameters(model)} if "encoder" in lrs else set()
    shared = {id(p) for p in model.shared_parameters()}
    roles: dict[str, list[nn.Parameter]] = {r: [] for r in ROLES}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        role = "encoder" if id(p) in encoder else "shared" if id(p) in shared else "heads"
        roles[role].append(p)
    roles["balancer"] = [p for p in balancer.parameters() if p.requires_grad]
    groups = []
    for role in ROLES:
        if roles[role]:
            group: dict[str, Any] = {"params": roles[role], "lr": lrs.get(role, lr), "role": role}
            if role == "balancer":
                group["weight_decay"] = 0.0
            groups.append(group)
    return groups


def build_optimizer(
    name: str, groups: Iterable[dict[str, Any]], lr: float, params: Mapping[str, Any] | None
) -> torch.optim.Optimizer:
    """Optimiser ``name`` over ``groups`` with default ``lr`` and its ``params``."""
    cls: Any = optimizer_class(name)[0]
    optimizer: torch.optim.Optimizer = cls(list(groups), lr=lr, **check_optimizer(name, params))
    return optimizer


# ------------------------------------------------------------------------------ schedules
def constant(optimizer: torch.optim.Optimizer, length: int | None) -> None:
    """the learning rate of the optimiser, unchanged"""
    return None


def cosine(optimizer: torch.optim.Optimizer, length: int | None,
           eta_min: float = 0.0) -> lr_scheduler.LRScheduler:
    """cosine decay to eta_min over the schedule (Loshchilov & Hutter 2017, eq. 5, without
    restarts): lr_t = eta_min + (lr - eta_min) (1 + cos(pi t / T)) / 2"""
    return lr_scheduler.CosineAnnealingLR(optimizer, _length(length, "cosine"), eta_min)


def linear(optimizer: torch.optim.Optimizer, length: int | None,
           end_factor: float = 0.0) -> lr_scheduler.LRScheduler:
    """linear decay to end_factor * lr over the schedule"""
    return lr_scheduler.LinearLR(optimizer, 1.0, end_factor, _length(length, "linear"))


def step(optimizer: torch.optim.Optimizer, length: int | None, step_size: int = 1,
         gamma: float = 0.1) -> lr_scheduler.LRScheduler:
    """multiply the lr by gamma every step_size steps or epochs"""
    return lr_scheduler.StepLR(optimizer, step_size, gamma)


def plateau(optimizer: torch.optim.Optimizer, length: int | None, factor: float = 0.1,
            patience: int = 2, threshold: float = 1e-4,
            min_lr: float = 0.0) -> lr_scheduler.ReduceLROnPlateau:
    """multiply the lr by factor when the main validation score stops improving"""
    return lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=factor,
                                          patience=patience, threshold=threshold, min_lr=min_lr)


def _length(length: int | None, name: str) -> int:
    if length is None:
        raise ValueError(f"schedule {name!r} needs its length (schedule_steps)")
    return length


SCHEDULES: Registry[Any] = Registry("schedule")
SCHEDULES.add("constant", constant, {})
SCHEDULES.add("cosine", cosine, {
    "eta_min": Param("float", 0.0, "the final learning rate", low=0),
})
SCHEDULES.add("linear", linear, {
    "end_factor": Param("float", 0.0, "final lr as a fraction of lr", low=0, high=1),
})
SCHEDULES.add("step", step, {
    "step_size": Param("int", 1, "steps (or epochs) between decays", low=1),
    "gamma": Param("float", 0.1, "decay factor", low=0, low_open=True, high=1),
})
SCHEDULES.add("plateau", plateau, {
    "factor": Param("float", 0.1, "decay factor", low=0, low_open=True, high=1, high_open=True),
    "patience": Param("int", 2, "validated epochs without improvement", low=0),
    "threshold": Param("float", 1e-4, "relative improvement that counts", low=0),
    "min_lr": Param("float", 0.0, low=0),
})


class Schedule:
    """A warm-up (``LinearLR``) followed by schedule ``name``, stepped every ``interval``.

    ``total``: the schedule's length in intervals, warm-up included (for cosine and linear).
    ``plateau`` is stepped once per validated epoch on the main score (higher is better),
    after the warm-up.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, name: str, params: Mapping[str, Any] | None,
        *, warmup: int = 0, total: int | None = None, interval: Interval = "step",
    ) -> None:
        if interval not in ("step", "epoch"):
            raise ValueError(f"schedule interval must be 'step' or 'epoch', got {interval!r}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        valid = SCHEDULES.validate(name, params)
        self.name, self.interval, self.warmup, self.count = name, interval, warmup, 0
        self.plateau: lr_scheduler.ReduceLROnPlateau | None = None
        parts: list[lr_scheduler.LRScheduler] = []
        if warmup:
            parts.append(lr_scheduler.LinearLR(optimizer, 1 / (warmup + 1), 1.0, warmup))
        rest = None if total is None else max(1, total - warmup)
        made = SCHEDULES.get(name)(optimizer, rest, **valid)
        if isinstance(made, lr_scheduler.ReduceLROnPlateau):
            self.plateau = made
        elif made is not None:
            parts.append(made)
        self.scheduler: lr_scheduler.LRScheduler | None = (
            parts[0] if len(parts) == 1 and not warmup else
            lr_scheduler.SequentialLR(optimizer, parts, [warmup]) if len(parts) == 2 else
            parts[0] if parts else None
        )

    def _advance(self) -> None:
        self.count += 1
        if self.scheduler is not None and (self.plateau is None or self.count <= self.warmup):
            self.scheduler.step()

    def after_step(self) -> None:
        if self.interval == "step":
            self._advance()

    def after_epoch(self, score: float | None) -> None:
        if self.interval == "epoch":
            self._advance()
        if self.plateau is not None and score is not None and self.count >= self.warmup:
            self.plateau.step(score)

    def state_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count = int(state["count"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])
