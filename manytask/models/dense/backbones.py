"""Backbones for dense tasks: a small ResNet and a SegNet-style encoder-decoder of our own,
and timm backbones by name (timm optional; no weights are downloaded).

Every backbone is an ``nn.Module`` with ``blocks`` (its stages, in order, so MTAN and
cross-stitch can work between them), ``channels`` (each stage's output channels) and
``stride`` (input size / output size of the last stage). ``forward(x)`` returns the last
stage's map.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn


class Backbone(nn.Module):
    """What the dense architectures read of a backbone: its stages, their output channels,
    and its output stride."""

    blocks: nn.ModuleList
    channels: tuple[int, ...]
    stride: int


def stage_outputs(backbone: Backbone, x: Tensor) -> list[Tensor]:
    """Every stage's output of a backbone that applies its ``blocks`` in sequence."""
    outs = []
    for block in backbone.blocks:
        x = block(x)
        outs.append(x)
    return outs


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """He et al., CVPR 2016, Fig. 2 (left): two 3x3 convolutions and a residual connection."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(cin, cout, stride),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNetBackbone(Backbone):
    """A small ResNet: a 3x3 stem, then one stage of ``depth`` basic blocks per channel count,
    each stage after the first halving the resolution (stride ``2 ** (len(channels) - 1)``)."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 128), depth: int = 1,
                 in_channels: int = 3) -> None:
        super().__init__()
        if not channels or depth < 1:
            raise ValueError(f"ResNetBackbone: needs channels and depth >= 1, got "
                             f"{list(channels)}, {depth}")
        stages: list[nn.Module] = []
        cin = in_channels
        for i, c in enumerate(channels):
            layers: list[nn.Module] = [conv_bn_relu(cin, c)] if i == 0 else []
            start = c if i == 0 else cin
            for j in range(depth):
                layers.append(BasicBlock(start if j == 0 else c, c, 2 if i > 0 and j == 0 else 1))
            stages.append(nn.Sequential(*layers))
            cin = c
        self.blocks = nn.ModuleList(stages)
        self.channels = tuple(channels)
        self.stride = 2 ** (len(channels) - 1)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class SegNetBackbone(Backbone):
    """SegNet-style encoder-decoder (Badrinarayanan et al., TPAMI 2017), the trunk MTAN and
    LibMTL use on NYUv2, scaled down: conv stages with 2x2 max pooling, then mirrored stages
    that max-unpool with the encoder's indices; output at full resolution (stride 1)."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64), in_channels: int = 3) -> None:
        super().__init__()
        self.enc = nn.ModuleList()
        cin = in_channels
        for c in channels:
            self.enc.append(nn.Sequential(conv_bn_relu(cin, c), conv_bn_relu(c, c)))
            cin = c
        self.dec = nn.ModuleList()
        rev = list(channels)[::-1]
        for i, c in enumerate(rev):
            cout = rev[i + 1] if i + 1 < len(rev) else channels[0]
            self.dec.append(nn.Sequential(conv_bn_relu(c, c), conv_bn_relu(c, cout)))
        self.blocks = nn.ModuleList([*self.enc, *self.dec])
        self.channels = (*channels, *[rev[i + 1] if i + 1 < len(rev) else channels[0]
                                      for i in range(len(rev))])
        self.stride = 1

    def forward(self, x: Tensor) -> Tensor:
        sizes, indices = [], []
        for stage in self.enc:
            x = stage(x)
            sizes.append(x.shape[-2:])
            x, idx = nn.functional.max_pool2d(x, 2, 2, return_indices=True)
            indices.append(idx)
        for stage, idx, size in zip(self.dec, indices[::-1], sizes[::-1], strict=True):
            x = nn.functional.max_unpool2d(x, idx, (2, 2), (2, 2), output_size=size)
            x = stage(x)
        return x


class TimmBackbone(Backbone):
    """A timm model's last feature map, built without downloading.

    ``timm.create_model(name, pretrained=False, features_only=True, out_indices=(-1,),
    in_chans=in_channels)`` gives a network whose forward returns a list of feature maps and
    whose ``feature_info.channels()`` and ``feature_info.reduction()`` give each map's channels
    and stride (timm's feature-extraction interface); the backbone keeps the last map.
    ``weights``: a local safetensors file of the model's tensors (a full checkpoint's
    classifier head, which ``features_only`` drops, may be in it); every tensor of the feature
    network must be in the file, or loading stops naming the first missing one."""

    def __init__(self, name: str, weights: str | Path | None = None, in_channels: int = 3) -> None:
        super().__init__()
        try:
            import timm
        except ImportError:
            raise ImportError(f"timm backbone {name!r} needs timm, the optional extra: "
                              "pip install 'manytask[vision]'") from None
        net = timm.create_model(name, pretrained=False, features_only=True,
                                out_indices=(-1,), in_chans=in_channels)
        self.blocks = nn.ModuleList([LastFeatureMap(net)])  # one stage, for MTAN and the rest
        if weights is not None:
            self._load(Path(weights))
        info = net.feature_info
        self.channels = (int(info.channels()[-1]),)
        self.stride = int(info.reduction()[-1])

    @property
    def model(self) -> nn.Module:
        """The timm feature network."""
        last = self.blocks[0]
        assert isinstance(last, LastFeatureMap)
        return last.net

    def _load(self, path: Path) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise FileNotFoundError(f"timm weights {path}: not a regular file")
        try:
            state = load_file(str(path))
        except SafetensorError as err:
            raise ValueError(f"timm weights {path}: not a safetensors file ({err})") from None
        expected = self.model.state_dict()
        missing = [k for k in expected if k not in state]
        if missing:
            raise ValueError(f"timm weights {path}: {len(missing)} of the model's "
                             f"{len(expected)} tensors are missing, first {missing[0]!r}")
        wrong = [k for k in expected if state[k].shape != expected[k].shape]
        if wrong:
            raise ValueError(f"timm weights {path}: tensor {wrong[0]!r} has shape "
                             f"{tuple(state[wrong[0]].shape)}, the model "
                             f"{tuple(expected[wrong[0]].shape)}")
        self.model.load_state_dict({k: state[k] for k in expected})

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.blocks[0](x)
        return out


class LastFeatureMap(nn.Module):
    """The last of the maps a ``features_only`` network returns."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)[-1]
        return out


def make_backbone(name: str = "resnet", **kwargs: object) -> Backbone:
    """``"resnet"``, ``"segnet"`` or ``"timm:<model name>"``."""
    if name == "resnet":
        return ResNetBackbone(**kwargs)  # type: ignore[arg-type]
    if name == "segnet":
        return SegNetBackbone(**kwargs)  # type: ignore[arg-type]
    if name.startswith("timm:"):
        return TimmBackbone(name[5:], **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown backbone {name!r}; use 'resnet', 'segnet' or 'timm:<name>'")
