"""Multi-Task Attention Network (MTAN) over any convolutional trunk.

Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019,
Section 3.2 (task-specific attention modules): a shared trunk of ``J`` blocks; at block ``j``,
task ``i`` learns a soft mask from the block's intermediate features ``u^(j)`` (and, from the
second block on, its own attended features of the previous block)::

    a_i^(j) = h_i^(j)( g_i^(j)( [u^(j); f^(j)(p^_i^(j-1))] ) ),      p^_i^(j) = a_i^(j) * p^(j)

where ``g`` is a 1x1 conv + BN + ReLU, ``h`` a 1x1 conv + BN + sigmoid, ``p^(j)`` the block's
output, and ``f^(j)`` a 3x3 conv + BN + ReLU shared by all tasks, followed by pooling to the next
block's resolution (adaptive max pooling here, so any trunk's down-sampling fits).

A block is given as one module (then ``u = p``, its output) or a pair ``(first, rest)`` with
``u = first(x)`` and ``p = rest(u)`` as in the paper; ``u`` and ``p`` must have the block's
``channels``. Shared part: the trunk, the attention modules and ``f`` (all below the heads);
``features(x)`` is ``{task: p^_i^(J)}``. Masks lie in (0, 1); they are not normalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks import Task
from .experts import check_sizes
from .per_task import PerTaskModel


def _conv_bn(cin: int, cout: int, kernel: int, last: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout), last
    )


class MTANBody(nn.Module):
    def __init__(
        self,
        blocks: Sequence[nn.Module | tuple[nn.Module, nn.Module]],
        channels: Sequence[int],
        task_names: Sequence[str],
    ) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        firsts, rests = [], []
        for block in blocks:
            first, rest = block if isinstance(block, tuple) else (block, nn.Identity())
            firsts.append(first)
            rests.append(rest)
        self.firsts, self.rests = nn.ModuleList(firsts), nn.ModuleList(rests)
        self.attention = nn.ModuleList(
            nn.ModuleDict(
                {
                    t: nn.Sequential(
                        _conv_bn(c if j == 0 else 2 * c, c, 1, nn.ReLU()),
                        _conv_bn(c, c, 1, nn.Sigmoid()),
                    )
                    for t in task_names
                }
            )
            for j, c in enumerate(channels)
        )
        self.shared_f = nn.ModuleList(
            _conv_bn(channels[j], channels[j + 1], 3, nn.ReLU()) for j in range(len(channels) - 1)
        )
        self.last_attention: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        attended: dict[str, Tensor] = {}
        h = x
        for j, (first, rest) in enumerate(zip(self.firsts, self.rests, strict=True)):
            u = first(h)
            p = rest(u)
            for t in self.task_names:
                if j == 0:
                    inp = u
                else:
                    prev = self.shared_f[j - 1](attended[t])
                    inp = torch.cat([u, F.adaptive_max_pool2d(prev, u.shape[-2:])], dim=1)
                per_task: nn.ModuleDict = self.attention[j]  # type: ignore[assignment]
                mask = per_task[t](inp)
                self.last_attention[f"block{j + 1}/{t}"] = mask.detach().mean(dim=(0, 2, 3))
                attended[t] = mask * p
            h = p
        return attended


class MTAN(PerTaskModel):
    """MTAN (Liu et al., 2019) on a given convolutional trunk.

    Args:
        tasks: the tasks.
        blocks: the trunk's blocks, each a module or a ``(first, rest)`` pair (see module doc).
        channels: output channels of each block.
        heads: ``{task: module}`` reading ``(batch, channels[-1], H, W)``; by default global
            average pooling and a linear layer to ``task.out_features``.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        blocks: Sequence[nn.Module | tuple[nn.Module, nn.Module]],
        channels: Sequence[int],
        *,
        heads: Mapping[str, nn.Module] | None = None,
    ) -> None:
        check_sizes("MTAN", "channels", channels)
        if len(blocks) != len(channels):
            raise ValueError(f"MTAN: {len(blocks)} blocks but {len(channels)} channel counts")
        names = [t.name for t in tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"MTAN: needs unique task names, got {names}")
        if heads is None:
            heads = {
                t.name: nn.Sequential(
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], t.out_features)
                )
                for t in tasks
            }
        elif set(heads) != set(names):
            raise ValueError(f"MTAN: heads {sorted(heads)} do not match tasks {names}")
        super().__init__(MTANBody(blocks, channels, names), {n: heads[n] for n in names})

    @property
    def attention_masks(self) -> dict[str, Tensor]:
        """Mean attention per channel of the last forward, ``{"block{j}/{task}": (channels,)}``."""
        body: MTANBody = self.shared  # type: ignore[assignment]
        return dict(body.last_attention)
