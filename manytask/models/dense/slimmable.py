"""Controllable multi-task architectures: a slimmable encoder and slimmable task decoders,
configuration-invariant distillation, and a search from task preferences and a compute budget
to widths.

Aich et al., ICCV 2023, "Efficient Controllable Multi-Task Architectures", Sec. 3: one
network whose encoder and each task's decoder can run at several widths (a fraction of their
channels, sharing the weights of the full width, with a BatchNorm per width as in slimmable
networks, Yu et al., ICLR 2019); sub-configurations are trained to agree with the full
network (configuration-invariant knowledge distillation, :func:`distillation_loss`); at
deployment a user's task preferences ``p`` and a budget pick the widths
(:func:`search_widths`): the configuration maximising ``sum_t p_t s_t`` among those whose
multiply-accumulates fit the budget, ``s_t`` a task's validation score at its decoder width on
the chosen encoder width.

Our choices at this scale: a plain conv encoder (3x3 conv, BN, ReLU per stage, stride 2 after
the first), widths shared by all encoder stages, and an exhaustive search over the width grid
(each decoder scored once per encoder width: a task's score depends only on the encoder's and
its own decoder's width), where the paper trains a controller network.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import MultiTaskModel


class SlimConv(nn.Module):
    """Conv + per-width BN + ReLU whose active output channels are ``ceil(width * out)``."""

    def __init__(self, cin: int, cout: int, widths: Sequence[float], stride: int = 1,
                 kernel: int = 3, relu: bool = True, bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=not bn)
        self.widths = tuple(widths)
        self.norms = nn.ModuleList(nn.BatchNorm2d(active(cout, w)) for w in widths) if bn \
            else None
        self.relu, self.width = relu, 1.0

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        out_ch = active(c.out_channels, self.width) if self.norms is not None else c.out_channels
        y = F.conv2d(x, c.weight[:out_ch, : x.shape[1]],
                     None if c.bias is None else c.bias[:out_ch], c.stride, c.padding)
        if self.norms is not None:
            y = self.norms[self.widths.index(self.width)](y)
        return torch.relu(y) if self.relu else y

    def macs(self, x_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        c = self.conv
        out_ch = active(c.out_channels, self.width) if self.norms is not None else c.out_channels
        pad = cast(tuple[int, int], c.padding)
        h = (x_shape[-2] + 2 * pad[0] - c.kernel_size[0]) // c.stride[0] + 1
        w = (x_shape[-1] + 2 * pad[1] - c.kernel_size[1]) // c.stride[1] + 1
        return out_ch * x_shape[1] * c.kernel_size[0] * c.kernel_size[1] * h * w, \
            (x_shape[0], out_ch, h, w)


def active(channels: int, width: float) -> int:
    return max(1, int(-(-channels * width // 1)))


class SlimEncoder(nn.Module):
    def __init__(self, channels: Sequence[int], widths: Sequence[float]) -> None:
        super().__init__()
        cins = [3, *channels[:-1]]
        self.stages = nn.ModuleList(SlimConv(a, b, widths, stride=1 if i == 0 else 2)
                                    for i, (a, b) in enumerate(zip(cins, channels, strict=True)))
        self.stride = 2 ** (len(channels) - 1)

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


class SlimDecoder(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, stride: int,
                 widths: Sequence[float]) -> None:
        super().__init__()
        self.hidden = SlimConv(cin, hidden, widths)
        self.out = SlimConv(hidden, cout, widths, kernel=1, relu=False, bn=False)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        y = self.out(self.hidden(x))
        if self.stride > 1:
            y = F.interpolate(y, scale_factor=self.stride, mode="bilinear", align_corners=False)
        return y


class ControllableMTL(MultiTaskModel):
    """Slimmable encoder and decoders (module docstring); ``set_widths`` picks the
    configuration every later forward uses (full width by default)."""

    def __init__(self, tasks: Sequence[Any], *, channels: Sequence[int] = (16, 32, 64),
                 head_hidden: int = 32, widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0)):
        if 1.0 not in widths or any(not 0 < w <= 1 for w in widths):
            raise ValueError(f"ControllableMTL: widths must lie in (0, 1] and include 1.0, got "
                             f"{list(widths)}")
        encoder = SlimEncoder(channels, widths)
        heads = {t.name: SlimDecoder(channels[-1], head_hidden, t.out_features, encoder.stride,
                                     widths) for t in tasks}
        super().__init__(encoder, heads)
        self.widths = tuple(sorted(widths))

    def set_widths(self, encoder: float = 1.0, decoders: Mapping[str, float] | None = None
                   ) -> None:
        decoders = dict(decoders or {})
        for w in [encoder, *decoders.values()]:
            if w not in self.widths:
                raise ValueError(f"ControllableMTL: width {w} is not one of {self.widths}")
        for module in self.shared.modules():
            if isinstance(module, SlimConv):
                module.width = encoder
        for task, head in self.heads.items():
            for module in head.modules():
                if isinstance(module, SlimConv):
                    module.width = decoders.get(task, 1.0)

    def macs(self, image_shape: tuple[int, int, int]) -> dict[str, int]:
        """Multiply-accumulates of the encoder and each decoder at the current widths."""
        shape: tuple[int, ...] = (1, *image_shape)
        total = 0
        for stage in self.shared.stages:  # type: ignore[union-attr]
            m, shape = stage.macs(shape)
            total += m
        out = {"encoder": total}
        for task, head in self.heads.items():
            m1, mid = head.hidden.macs(shape)  # type: ignore[union-attr,operator]
            m2, _ = head.out.macs(mid)  # type: ignore[union-attr,operator]
            out[task] = m1 + m2
        return out


def distillation_loss(student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> Tensor:
    """Configuration-invariant distillation: the mean squared difference between a
    sub-configuration's outputs and the full network's (detached), summed over tasks."""
    return torch.stack([F.mse_loss(student[t], teacher[t].detach()) for t in teacher]).sum()


@dataclass
class WidthChoice:
    encoder: float
    decoders: dict[str, float]
    macs: int
    score: float


def search_widths(model: ControllableMTL, preferences: Mapping[str, float], budget: int,
                  evaluate: Callable[[ControllableMTL], Mapping[str, float]],
                  image_shape: tuple[int, int, int]) -> WidthChoice:
    """The configuration maximising ``sum_t p_t s_t`` within ``budget`` MACs (module doc).

    ``evaluate(model)`` returns each task's score (higher is better) at the model's current
    widths; it is called once per (encoder width, decoder width) pair.
    """
    tasks = list(model.heads)
    unknown = sorted(set(preferences) - set(tasks))
    if unknown:
        raise ValueError(f"search_widths: preferences for unknown task(s) {unknown}")
    best: WidthChoice | None = None
    for enc in model.widths:
        scores: dict[tuple[str, float], float] = {}
        costs: dict[tuple[str, float], int] = {}
        enc_cost = 0
        for dec in model.widths:
            model.set_widths(enc, dict.fromkeys(tasks, dec))
            result = evaluate(model)
            macs = model.macs(image_shape)
            enc_cost = macs["encoder"]
            for t in tasks:
                scores[t, dec], costs[t, dec] = float(result[t]), macs[t]
        for combo in itertools.product(model.widths, repeat=len(tasks)):
            cost = enc_cost + sum(costs[t, w] for t, w in zip(tasks, combo, strict=True))
            if cost > budget:
                continue
            value = sum(preferences.get(t, 0.0) * scores[t, w]
                        for t, w in zip(tasks, combo, strict=True))
            if best is None or value > best.score:
                best = WidthChoice(enc, dict(zip(tasks, combo, strict=True)), cost, value)
    if best is None:
        raise ValueError(f"search_widths: no configuration fits a budget of {budget} MACs")
    model.set_widths(best.encoder, best.decoders)
    return best
