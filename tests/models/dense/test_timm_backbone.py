"""The timm adapter, without timm: the one-line error when it is missing, and the adapter's
use of timm's feature-extraction interface, checked on a stand-in module.

timm cannot be installed in this environment (it needs torchvision, whose only wheels here
are CUDA builds that do not import against the CPU torch). The stand-in ``timm`` implements
the documented interface the adapter relies on: ``create_model(name, pretrained=...,
features_only=True, out_indices=..., in_chans=...)`` returning a network whose forward gives
a list of feature maps, one per selected index, and whose ``feature_info.channels()`` and
``.reduction()`` describe them. These tests check what the adapter does with that interface;
they cannot show that a given timm release keeps it.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from manytask.dense import DenseTask
from manytask.models.dense import (
    DenseCrossStitch,
    DenseHardSharing,
    TimmBackbone,
    dense_mtan,
    make_backbone,
)

TASKS = [DenseTask.segmentation("semantic", 3), DenseTask.depth(), DenseTask.normal()]


class FeatureInfo:
    def __init__(self, channels: list[int], reduction: list[int]) -> None:
        self._channels, self._reduction = channels, reduction

    def channels(self) -> list[int]:
        return list(self._channels)

    def reduction(self) -> list[int]:
        return list(self._reduction)


class FeatureNet(nn.Module):
    """Three stages of strides 2, 4, 8 and 8, 16, 24 channels; returns the selected maps."""

    def __init__(self, in_chans: int, out_indices: tuple[int, ...]) -> None:
        super().__init__()
        widths, cin, self.stages = [8, 16, 24], in_chans, nn.ModuleList()
        for w in widths:
            self.stages.append(nn.Sequential(nn.Conv2d(cin, w, 3, 2, 1), nn.ReLU()))
            cin = w
        self.selected = [range(3)[i] for i in out_indices]
        self.feature_info = FeatureInfo([widths[i] for i in self.selected],
                                        [2 ** (i + 1) for i in self.selected])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return [maps[i] for i in self.selected]


@pytest.fixture
def fake_timm(monkeypatch):
    calls: list[dict] = []

    def create_model(name, pretrained=False, features_only=False, out_indices=(0, 1, 2),
                     in_chans=3, **kwargs):
        calls.append({"name": name, "pretrained": pretrained, "features_only": features_only,
                      "out_indices": out_indices, "in_chans": in_chans, **kwargs})
        assert features_only, "the stand-in only builds feature networks"
        return FeatureNet(in_chans, tuple(out_indices))

    module = types.ModuleType("timm")
    module.create_model = create_model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "timm", module)
    return calls


def test_missing_timm_is_one_line_naming_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    for build in (lambda: TimmBackbone("resnet18"), lambda: make_backbone("timm:resnet18")):
        with pytest.raises(ImportError) as info:
            build()
        message = str(info.value)
        assert "\n" not in message and "manytask[vision]" in message and "resnet18" in message


def test_adapter_builds_without_download_and_reads_channels_and_stride(fake_timm) -> None:
    backbone = make_backbone("timm:tiny_net", in_channels=4)
    assert fake_timm == [{"name": "tiny_net", "pretrained": False, "features_only": True,
                          "out_indices": (-1,), "in_chans": 4}]
    assert backbone.channels == (24,) and backbone.stride == 8
    out = backbone(torch.randn(2, 4, 32, 32))
    assert out.shape == (2, 24, 4, 4)


@pytest.mark.parametrize("build", [DenseHardSharing, dense_mtan, DenseCrossStitch])
def test_dense_architectures_run_and_train_on_the_adapter(fake_timm, build) -> None:
    torch.manual_seed(0)
    model = build(TASKS, TimmBackbone("tiny_net"))
    x = torch.randn(2, 3, 16, 16)
    outputs = model(x)
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "semantic": (2, 3, 16, 16), "depth": (2, 1, 16, 16), "normal": (2, 3, 16, 16)}
    targets = {"semantic": torch.randint(0, 3, (2, 16, 16)), "depth": torch.rand(2, 1, 16, 16),
               "normal": torch.nn.functional.normalize(torch.randn(2, 3, 16, 16), dim=1)}
    sum(t.loss(outputs[t.name], targets[t.name]) for t in TASKS).backward()
    stem = next(model.parameters())
    assert stem.grad is not None and bool(stem.grad.abs().sum() > 0)


def test_local_weights_load_and_bad_files_are_one_line_errors(fake_timm, tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = TimmBackbone("tiny_net")
    state = {k: v.clone() for k, v in source.model.state_dict().items()}
    state["head.fc.weight"] = torch.zeros(10, 24)  # a full checkpoint's classifier: ignored
    good = tmp_path / "good.safetensors"
    save_file(state, str(good))
    torch.manual_seed(2)
    loaded = TimmBackbone("tiny_net", weights=good)
    for k, v in source.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k

    missing = tmp_path / "missing.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("stages.2")}, str(missing))
    wrong = tmp_path / "wrong.safetensors"
    save_file({**state, "stages.0.0.bias": torch.zeros(9)}, str(wrong))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    cases = [(missing, ValueError, "2 of the model's 6 tensors are missing"),
             (wrong, ValueError, "'stages.0.0.bias' has shape (9,)"),
             (garbage, ValueError, "not a safetensors file"),
             (tmp_path / "absent.safetensors", FileNotFoundError, "not a regular file")]
    for path, error, words in cases:
        with pytest.raises(error) as info:
            TimmBackbone("tiny_net", weights=path)
        assert words in str(info.value) and "\n" not in str(info.value), str(info.value)
