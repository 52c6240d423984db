"""Build a multi-task architecture by name, on a tensor input or a tabular input layer.

``make_model("mmoe", tasks, input_layer=TabularInput(...), n_experts=8)`` lets benchmarks,
configs and the command line pick an architecture with a string. Every architecture, hard
sharing included, is an entry of :data:`ARCHITECTURES` (a :class:`~manytask.registry.Registry`)
with its hyper-parameters declared, so a configuration is checked before any data is read.
The input (``in_features`` or ``input_layer``) comes from the data, not from the user.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..registry import Param, Registry
from ..tasks import Task
from .adatt import AdaTT
from .apem import APEM
from .base import MultiTaskModel, mlp
from .cross_stitch import CrossStitch
from .dselect_k import DSelectK
from .dtrn import DTRN
from .experts import check_sizes
from .hard_sharing import HardSharing
from .home import HoME
from .moe import MMoE, OMoE
from .multitab import MASK_VARIANTS, MultiTabNet
from .per_task import resolve_input
from .ple import CGC, PLE
from .sparse_moe import TaskRoutedMoE


def shared_bottom(
    tasks: Sequence[Task],
    in_features: int | None = None,
    *,
    hidden: Sequence[int] = (128,),
    tower_hidden: Sequence[int] = (32,),
    input_layer: nn.Module | None = None,
    dropout: float = 0.0,
) -> HardSharing:
    """Shared-bottom (hard sharing, Caruana 1997): the input layer and an MLP shared by all
    tasks, then one MLP tower per task. The baseline of the MMoE and PLE papers."""
    check_sizes("shared_bottom", "hidden", hidden)
    layer, width = resolve_input("shared_bottom", in_features, input_layer)
    trunk = nn.Sequential(layer, mlp([width, *hidden], dropout=dropout))
    return HardSharing(tasks, trunk=trunk, feature_dim=hidden[-1], head_hidden=tower_hidden)


def hard_sharing(
    tasks: Sequence[Task],
    in_features: int | None = None,
    *,
    hidden: Sequence[int] = (256, 256),
    head_hidden: Sequence[int] | None = None,
    input_layer: nn.Module | None = None,
    dropout: float = 0.0,
) -> HardSharing:
    """Hard parameter sharing (Caruana 1997): a shared MLP trunk of ``hidden`` widths and one
    head per task (linear on a tensor input; a (32,) tower after a tabular input layer, as
    the shared-bottom baseline, unless ``head_hidden`` says otherwise)."""
    if input_layer is None:
        heads = () if head_hidden is None else head_hidden
        return HardSharing(tasks, in_features, hidden=hidden, head_hidden=heads, dropout=dropout)
    towers = (32,) if head_hidden is None else head_hidden
    return shared_bottom(tasks, input_layer=input_layer, hidden=hidden, tower_hidden=towers,
                         dropout=dropout)


ARCHITECTURES: Registry[Any] = Registry("architecture")


def _widths(default: tuple[int, ...] | None, doc: str, **extra: Any) -> Param:
    return Param("ints", default, doc, low=1, **extra)


_DROPOUT = Param("float", 0.0, "dropout after hidden layers", low=0.0, high=1.0, high_open=True)
_TOWER = _widths((32,), "hidden widths of each task tower")
_EXPERT = _widths((64,), "hidden widths of each expert")


def _count(default: int, doc: str, low: int = 1) -> Param:
    return Param("int", default, doc, low=low)


_SPECS: dict[str, tuple[Any, dict[str, Param], str]] = {
    "hard_sharing": (hard_sharing, {
        "hidden": _widths((256, 256), "widths of the shared trunk (the config's `hidden`)"),
        "head_hidden": _widths(None, "hidden widths of each head (default: none on a tensor "
                              "input, (32,) after a tabular input layer)", nullable=True),
        "dropout": _DROPOUT}, "Caruana, 1997"),
    "shared_bottom": (shared_bottom, {
        "hidden": _widths((128,), "widths of the shared bottom"), "tower_hidden": _TOWER,
        "dropout": _DROPOUT}, "Caruana, 1997"),
    "omoe": (OMoE, {"n_experts": _count(8, "experts"), "expert_hidden": _EXPERT,
                    "tower_hidden": _TOWER, "dropout": _DROPOUT}, "Ma et al., KDD 2018"),
    "mmoe": (MMoE, {"n_experts": _count(8, "experts"), "expert_hidden": _EXPERT,
                    "tower_hidden": _TOWER, "dropout": _DROPOUT}, "Ma et al., KDD 2018"),
    "cgc": (CGC, {"n_task_experts": _count(1, "experts per task", 0),
                  "n_shared_experts": _count(1, "shared experts", 0), "expert_hidden": _EXPERT,
                  "tower_hidden": _TOWER, "dropout": _DROPOUT}, "Tang et al., RecSys 2020"),
    "ple": (PLE, {"n_levels": _count(2, "extraction levels"),
                  "n_task_experts": _count(1, "experts per task", 0),
                  "n_shared_experts": _count(1, "shared experts", 0), "expert_hidden": _EXPERT,
                  "tower_hidden": _TOWER, "dropout": _DROPOUT}, "Tang et al., RecSys 2020"),
    "adatt": (AdaTT, {"n_levels": _count(2, "fusion levels"),
                      "n_task_experts": _count(2, "experts per task"),
                      "n_shared_experts": _count(0, "shared experts", 0),
                      "expert_hidden": _EXPERT, "tower_hidden": _TOWER, "dropout": _DROPOUT},
              "Li et al., KDD 2023"),
    "dselect_k": (DSelectK, {
        "n_experts": _count(8, "experts"), "k": _count(2, "experts selected per task"),
        "gamma": Param("float", 1.0, "smooth-step width", low=0.0, low_open=True),
        "entropy_weight": Param("float", 1e-3, "entropy regulariser of the selectors", low=0.0),
        "expert_hidden": _EXPERT, "tower_hidden": _TOWER, "dropout": _DROPOUT},
        "Hazimeh et al., NeurIPS 2021"),
    "home": (HoME, {
        "task_groups": Param("any", None, "{group: [task, ...]}", nullable=True),
        "n_global_experts": _count(1, "global experts"),
        "n_group_experts": _count(1, "experts per group"),
        "n_task_experts": _count(1, "experts per task"), "expert_hidden": _EXPERT,
        "feature_gate_rank": _count(4, "rank of the feature gates"), "tower_hidden": _TOWER,
        "dropout": _DROPOUT}, "Wang et al., 2024"),
    "cross_stitch": (CrossStitch, {
        "hidden": _widths((64, 64), "widths of each task's column"),
        "tower_hidden": _widths((), "hidden widths of each task tower"),
        "alpha_same": Param("float", 0.9, "initial self-weight of the units", low=0.0, high=1.0),
        "dropout": _DROPOUT}, "Misra et al., CVPR 2016"),
    "task_routed_moe": (TaskRoutedMoE, {
        "n_experts": _count(8, "experts"), "k": _count(2, "experts per token"),
        "noise_std": Param("float", 0.0, "router noise", low=0.0), "expert_hidden": _EXPERT,
        "tower_hidden": _TOWER, "dropout": _DROPOUT}, "Kudugunta et al., 2021"),
    "multitab": (MultiTabNet, {
        "d_token": _count(32, "token width"), "n_layers": _count(3, "transformer layers"),
        "n_heads": _count(4, "attention heads"), "ff_hidden": _count(64, "feed-forward width"),
        "mask": Param("choice", "txt", "attention mask variant", choices=MASK_VARIANTS),
        "task_tokens": Param("choice", "per_task", "task tokens",
                             choices=("per_task", "single")),
        "inter_sample": Param("bool", False, "attention across samples"), "tower_hidden": _TOWER,
        "dropout": _DROPOUT, "attention_dropout": Param("float", 0.0, "attention dropout",
                                                         low=0.0, high=1.0, high_open=True)},
        "Sinodinos et al., AAAI 2026"),
    "apem": (APEM, {
        "d_field": _count(16, "field embedding width"), "n_layers": _count(2, "layers"),
        "n_heads": _count(2, "attention heads"), "ff_hidden": _count(32, "feed-forward width"),
        "se_ratio": _count(2, "squeeze-excitation ratio"), "tower_hidden": _TOWER,
        "dropout": _DROPOUT}, "Tao et al., 2023"),
    "dtrn": (DTRN, {
        "d_field": _count(8, "field embedding width"),
        "top": Param("choice", "mmoe", "mixture on top", choices=("mmoe", "ple")),
        "n_experts": _count(4, "experts (mmoe top)"), "n_levels": _count(1, "levels (ple top)"),
        "n_task_experts": _count(1, "experts per task (ple top)", 0),
        "n_shared_experts": _count(1, "shared experts (ple top)", 0), "expert_hidden": _EXPERT,
        "task_dim": _count(8, "task embedding width"), "rank": _count(4, "rank of the refiner"),
        "se_ratio": _count(2, "squeeze-excitation ratio"), "tower_hidden": _TOWER,
        "dropout": _DROPOUT}, "Liu et al., CIKM 2023"),
}
for _name, (_build, _params, _ref) in _SPECS.items():
    ARCHITECTURES.add(_name, _build, _params, reference=_ref)


def make_model(name: str, tasks: Sequence[Task], **kwargs: Any) -> MultiTaskModel:
    """Instantiate architecture ``name`` (see :data:`ARCHITECTURES`) for ``tasks``.

    ``in_features`` or ``input_layer`` give the input; every other keyword is a declared
    parameter, validated (one-line error naming it) before the model is built."""
    inputs = {k: kwargs.pop(k) for k in ("in_features", "input_layer") if k in kwargs}
    ARCHITECTURES.validate(name, kwargs)
    model: MultiTaskModel = ARCHITECTURES.get(name)(tasks, **inputs, **kwargs)
    return model
