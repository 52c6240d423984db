"""Dense data in memory, its batches, and augmentation applied alike to every task.

Targets travel as ``{task: tensor}`` like every other task: ``semantic`` (N, H, W) int64 with
``ignore_index`` -1, ``depth`` (N, 1, H, W) with 0 = invalid, ``normal`` (N, 3, H, W) with
zero vectors = invalid, ``edge`` (N, 1, H, W) in {0, 1}.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .scenes import render_scene


@dataclass
class DenseData:
    """Images (N, 3, H, W) float32 and per-task targets, in memory."""

    images: Tensor
    targets: dict[str, Tensor]

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: Sequence[int] | Tensor) -> DenseData:
        idx = torch.as_tensor(index, dtype=torch.long)
        return DenseData(self.images[idx], {k: v[idx] for k, v in self.targets.items()})

    @classmethod
    def scenes(cls, n: int, size: int = 64, seed: int = 0,
               tasks: Sequence[str] = ("semantic", "depth", "normal", "edge")) -> DenseData:
        """``n`` generated scenes (numbers ``seed .. seed + n - 1``) at ``size`` pixels."""
        unknown = sorted(set(tasks) - {"semantic", "depth", "normal", "edge"})
        if unknown:
            raise ValueError(f"scenes: unknown task(s) {unknown}; the generator gives "
                             f"semantic, depth, normal and edge")
        rendered = [render_scene(seed + i, size) for i in range(n)]
        images = torch.from_numpy(np.stack([s.image for s in rendered]))
        targets = {
            "semantic": torch.from_numpy(np.stack([s.semantic for s in rendered])),
            "depth": torch.from_numpy(np.stack([s.depth for s in rendered]))[:, None],
            "normal": torch.from_numpy(np.stack([s.normal for s in rendered])),
            "edge": torch.from_numpy(np.stack([s.edge for s in rendered]))[:, None],
        }
        return cls(images, {t: targets[t] for t in tasks})


@dataclass(frozen=True)
class Augment:
    """Random horizontal flip and scale-crop, applied alike to the image and every target.

    A flip mirrors every map and negates the normals' x component (the surface turns with the
    image). A scale-crop (MTAN's RandomScaleCrop) takes a window ``1/s`` of the image at a
    random place, ``s`` uniform in ``scale``, and resizes it back: the image bilinearly,
    labels, depth, normals and edges by nearest neighbour (no mixed classes, no invented
    depths), and depth is divided by ``s`` (magnifying by ``s`` looks like moving ``s`` times
    closer, MTAN's convention).
    """

    flip: bool = True
    scale: tuple[float, float] = (1.0, 1.5)

    def __call__(self, images: Tensor, targets: Mapping[str, Tensor],
                 generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        out = {k: v for k, v in targets.items()}
        x = images
        if self.flip and bool(torch.rand((), generator=generator) < 0.5):
            x = x.flip(-1)
            out = {k: v.flip(-1) for k, v in out.items()}
            if "normal" in out:
                out["normal"] = out["normal"] * torch.tensor([-1.0, 1.0, 1.0]).view(1, 3, 1, 1)
        lo, hi = self.scale
        s = float(lo + (hi - lo) * torch.rand((), generator=generator))
        if s > 1.0:
            h, w = x.shape[-2:]
            ch, cw = max(1, round(h / s)), max(1, round(w / s))
            top = int(torch.randint(0, h - ch + 1, (), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (), generator=generator))

            def crop(t: Tensor, mode: str) -> Tensor:
                window = t[..., top:top + ch, left:left + cw]
                squeeze = window.dim() == 3
                src = window[:, None] if squeeze else window
                kwargs = {"align_corners": False} if mode == "bilinear" else {}
                resized = F.interpolate(src.float(), size=(h, w), mode=mode, **kwargs)
                resized = resized[:, 0] if squeeze else resized
                return resized.to(t.dtype)

            x = crop(x, "bilinear")
            out = {k: crop(v, "nearest") for k, v in out.items()}
            if "depth" in out:
                out["depth"] = out["depth"] / s
        return x, out


class DenseBatches:
    """Batches ``(images, {task: target})`` of :class:`DenseData`, reshuffled each pass."""

    def __init__(self, data: DenseData, batch_size: int, *, shuffle: bool = False,
                 augment: Augment | None = None, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(data) == 0:
            raise ValueError("DenseBatches: the data set is empty")
        self.data, self.batch_size, self.shuffle, self.augment = data, batch_size, shuffle, augment
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        n = len(self.data)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.data.images[idx]
            t = {k: v[idx] for k, v in self.data.targets.items()}
            if self.augment is not None:
                x, t = self.augment(x, t, self.generator)
            yield x, t
