"""Readers of the public dense benchmarks' preprocessed layouts (no download).

Point ``root`` at the unpacked folder:

* ``"nyuv2"``: NYUv2 as preprocessed for MTAN and LibMTL (13 classes):
  ``root/{train,val}/{image,label,depth,normal}/<i>.npy`` with image (H, W, 3), label (H, W)
  (-1 = ignore), depth (H, W, 1), normal (H, W, 3);
* ``"cityscapes"``: Cityscapes as preprocessed there (7 or 19 classes, depth):
  ``root/{train,val}/{image,label_7|label_19,depth}/<i>.npy``.

Files are read with ``numpy.load(allow_pickle=False)``, must be regular files inside
``root`` (no link out of it), and are checked for shape and finiteness, naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .batches import DenseData

LAYOUTS = {
    "nyuv2": {"semantic": "label", "depth": "depth", "normal": "normal"},
    "cityscapes": {"semantic": "label_{classes}", "depth": "depth"},
}


class LayoutError(ValueError):
    """A data folder does not hold the layout it should; the message names the file."""


def _load(path: Path, root: Path) -> np.ndarray:
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise LayoutError(f"{path}: links outside {root}")
    if not resolved.is_file():
        raise LayoutError(f"{path}: not a regular file")
    try:
        array = np.load(resolved, allow_pickle=False)
    except ValueError as err:
        raise LayoutError(f"{path}: not a plain .npy array ({err})") from None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise LayoutError(f"{path}: holds NaN or inf")
    return array


def read_layout(root: str | Path, split: str, layout: str = "nyuv2", *,
                classes: int = 7) -> DenseData:
    """Read one split of a preprocessed public layout (see the module docstring)."""
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; known: {sorted(LAYOUTS)}")
    if layout == "cityscapes" and classes not in (7, 19):
        raise LayoutError(f"cityscapes: classes must be 7 or 19, got {classes}")
    base = Path(root) / split
    image_dir = base / "image"
    if not image_dir.is_dir():
        raise LayoutError(f"{image_dir}: missing (layout {layout!r}, split {split!r})")
    names = sorted((p.name for p in image_dir.glob("*.npy")), key=lambda s: int(Path(s).stem)
                   if Path(s).stem.isdigit() else -1)
    if not names or not all(Path(n).stem.isdigit() for n in names):
        raise LayoutError(f"{image_dir}: expected files 0.npy, 1.npy, ...")
    images: list[np.ndarray] = []
    targets: dict[str, list[np.ndarray]] = {task: [] for task in LAYOUTS[layout]}
    for name in names:
        image = _load(image_dir / name, Path(root))
        if image.ndim != 3 or image.shape[-1] != 3:
            raise LayoutError(f"{image_dir / name}: image must be (H, W, 3), got {image.shape}")
        images.append(np.moveaxis(image, -1, 0).astype(np.float32))
        for task, folder in LAYOUTS[layout].items():
            path = base / folder.format(classes=classes) / name
            array = _load(path, Path(root))
            want = image.shape[:2]
            if array.shape[:2] != want:
                raise LayoutError(f"{path}: spatial shape {array.shape[:2]} differs from the "
                                  f"image's {want}")
            if task == "semantic":
                if array.ndim != 2:
                    raise LayoutError(f"{path}: label must be (H, W), got {array.shape}")
                targets[task].append(array.astype(np.int64))
            else:
                channels = 3 if task == "normal" else 1
                if array.ndim == 2 and channels == 1:
                    array = array[..., None]
                if array.ndim != 3 or array.shape[-1] != channels:
                    raise LayoutError(f"{path}: {task} must be (H, W, {channels}), "
                                      f"got {array.shape}")
                targets[task].append(np.moveaxis(array, -1, 0).astype(np.float32))
    return DenseData(torch.from_numpy(np.stack(images)),
                     {t: torch.from_numpy(np.stack(v)) for t, v in targets.items()})
