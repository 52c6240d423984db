"""The scene generator's targets, augmentation consistency, and the layout readers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from manytask.data.dense import Augment, DenseData, LayoutError, read_layout, render_scene


def test_scenes_are_deterministic_and_normals_are_unit_vectors() -> None:
    a, b = render_scene(7, 32), render_scene(7, 32)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.depth, b.depth)
    valid = a.depth > 0
    norms = np.linalg.norm(a.normal, axis=0)
    np.testing.assert_allclose(norms[valid], 1.0, atol=1e-5)
    assert np.all(norms[~valid] == 0) and np.all(a.semantic[~valid] == 0)
    assert set(np.unique(a.semantic)) <= {0, 1, 2, 3, 4}
    assert a.image.min() >= 0 and a.image.max() <= 1


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_normals_agree_with_the_surface_the_depth_map_describes(seed: int) -> None:
    size = 96
    scene = render_scene(seed, size)
    depth = scene.depth.astype(np.float64)
    # back-project each pixel: camera coordinates (x right, y up, z towards the camera)
    tan = scene.tan_half_fov
    centres = (np.arange(size) + 0.5) / size
    x_ndc, y_ndc = np.meshgrid(2 * centres - 1, 1 - 2 * centres)
    points = np.stack([depth * x_ndc * tan, depth * y_ndc * tan, -depth])
    du = points[:, 1:-1, 2:] - points[:, 1:-1, :-2]
    dv = points[:, :-2, 1:-1] - points[:, 2:, 1:-1]
    n = np.cross(du, dv, axis=0)
    n /= np.linalg.norm(n, axis=0, keepdims=True) + 1e-12
    rendered = scene.normal[:, 1:-1, 1:-1].astype(np.float64)
    sem = scene.semantic
    same = np.ones_like(sem[1:-1, 1:-1], dtype=bool)  # interior: the 3x3 neighbourhood is one
    for dy in (-1, 0, 1):                            # surface of one class, no edge
        for dx in (-1, 0, 1):
            same &= sem[1 + dy:size - 1 + dy, 1 + dx:size - 1 + dx] == sem[1:-1, 1:-1]
    same &= (scene.edge[1:-1, 1:-1] == 0) & (depth[1:-1, 1:-1] > 0)
    cos = (n * rendered).sum(0)[same]
    angles = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert same.sum() > 0.3 * size * size
    assert np.median(angles) < 1.0
    assert np.mean(angles < 5.0) > 0.9


def test_flip_mirrors_every_target_and_turns_the_normals() -> None:
    data = DenseData.scenes(2, 16)
    flip = Augment(flip=True, scale=(1.0, 1.0))
    gen = torch.Generator().manual_seed(0)
    while True:  # draw until the coin says flip
        x, t = flip(data.images, data.targets, gen)
        if not torch.equal(x, data.images):
            break
    assert torch.equal(x, data.images.flip(-1))
    assert torch.equal(t["semantic"], data.targets["semantic"].flip(-1))
    assert torch.equal(t["normal"][:, 0], -data.targets["normal"][:, 0].flip(-1))
    assert torch.equal(t["normal"][:, 1:], data.targets["normal"][:, 1:].flip(-1))


def test_scale_crop_keeps_labels_nearest_and_depth_metric() -> None:
    data = DenseData.scenes(2, 32)
    crop = Augment(flip=False, scale=(1.5, 1.5))
    x, t = crop(data.images, data.targets, torch.Generator().manual_seed(1))
    assert x.shape == data.images.shape and t["semantic"].dtype == torch.int64
    assert set(t["semantic"].unique().tolist()) <= set(data.targets["semantic"].unique().tolist())
    assert set(t["edge"].unique().tolist()) <= {0.0, 1.0}
    # depth values are original depths divided by the scale (nearest neighbour, no blending)
    allowed = set((data.targets["depth"] / 1.5).unique().tolist())
    assert set(t["depth"].unique().tolist()) <= allowed


def write_layout(root: Path, layout: str, n: int = 2, h: int = 6, w: int = 8) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        folders = {"image": (h, w, 3)}
        if layout == "nyuv2":
            folders |= {"label": (h, w), "depth": (h, w, 1), "normal": (h, w, 3)}
        else:
            folders |= {"label_7": (h, w), "depth": (h, w, 1)}
        for folder, shape in folders.items():
            (root / split / folder).mkdir(parents=True)
            for i in range(n):
                if folder.startswith("label"):
                    arr = rng.integers(-1, 7, size=shape)
                else:
                    arr = rng.random(shape).astype(np.float32)
                np.save(root / split / folder / f"{i}.npy", arr)


@pytest.mark.parametrize("layout", ["nyuv2", "cityscapes"])
def test_layout_readers_read_what_was_written(tmp_path: Path, layout: str) -> None:
    write_layout(tmp_path, layout)
    data = read_layout(tmp_path, "val", layout)
    assert data.images.shape == (2, 3, 6, 8)
    raw = np.load(tmp_path / "val" / "image" / "1.npy")
    assert torch.equal(data.images[1], torch.from_numpy(np.moveaxis(raw, -1, 0)))
    label = "label" if layout == "nyuv2" else "label_7"
    assert torch.equal(data.targets["semantic"][0],
                       torch.from_numpy(np.load(tmp_path / "val" / label / "0.npy")))
    assert data.targets["depth"].shape == (2, 1, 6, 8)
    assert ("normal" in data.targets) == (layout == "nyuv2")


def test_layout_errors_name_the_file(tmp_path: Path) -> None:
    write_layout(tmp_path, "nyuv2")
    np.save(tmp_path / "train" / "depth" / "1.npy", np.zeros((5, 8, 1), np.float32))
    with pytest.raises(LayoutError, match=r"depth/1.npy: spatial shape"):
        read_layout(tmp_path, "train")
    with pytest.raises(LayoutError, match="missing"):
        read_layout(tmp_path, "test")
    outside = tmp_path.parent / "outside.npy"
    np.save(outside, np.zeros((6, 8), np.int64))
    target = tmp_path / "val" / "label" / "0.npy"
    target.unlink()
    os.symlink(outside, target)
    with pytest.raises(LayoutError, match="links outside"):
        read_layout(tmp_path, "val")
    target.unlink()
    np.save(target, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(LayoutError, match=r"not a plain \.npy array"):
        read_layout(tmp_path, "val")
    with pytest.raises(LayoutError, match="unknown layout"):
        read_layout(tmp_path, "val", "pascal")
