"""Build a multi-task architecture by name, on a tensor input or a tabular input layer.

``make_model("mmoe", tasks, input_layer=TabularInput(...), n_experts=8)`` lets benchmarks,
configs and the command line pick an architecture with a string. Keyword arguments go to the
architecture's constructor, which validates them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

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
from .multitab import MultiTabNet
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


ARCHITECTURES: dict[str, Callable[..., MultiTaskModel]] = {
    "shared_bottom": shared_bottom,
    "omoe": OMoE,
    "mmoe": MMoE,
    "cgc": CGC,
    "ple": PLE,
    "adatt": AdaTT,
    "dselect_k": DSelectK,
    "home": HoME,
    "cross_stitch": CrossStitch,
    "task_routed_moe": TaskRoutedMoE,
    "multitab": MultiTabNet,
    "apem": APEM,
    "dtrn": DTRN,
}


def make_model(name: str, tasks: Sequence[Task], **kwargs: Any) -> MultiTaskModel:
    """Instantiate architecture ``name`` (see :data:`ARCHITECTURES`) for ``tasks``."""
    try:
        build = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; available: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
    return build(tasks, **kwargs)
