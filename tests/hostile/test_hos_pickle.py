"""A PyTorch pickle offered where safetensors is expected.

Unpickling can run arbitrary code, so pickles are refused unless ``allow_pickle`` is set, and
the refusal names the file and the option. With the option, loading goes through
``torch.load(weights_only=True)``: a pickle that asks to build anything but tensors is still
refused, and never runs. A pickle renamed ``.safetensors`` is never unpickled at all.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from hos_helpers import (
    assert_cli_one_line,
    assert_no_partial,
    family,
    merge_config,
    raises_clear,
    run_cli,
    small_state,
    write_yaml,
)

from manytask.merging import merge
from manytask.merging.sources import open_source


def _pickle_model(folder: Path, name: str = "pytorch_model.bin") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(small_state(3), folder / name)
    return folder / name


class _Payload:
    """Unpickling this runs ``touch <marker>``: proof the pickle was (not) executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "weights.pt", "weights.pth"])
def test_pickle_file_refused_by_default(tmp_path: Path, name: str) -> None:
    path = _pickle_model(tmp_path / "m", name)
    raises_clear(lambda: open_source(path), name, "allow_pickle", "refused")


def test_pickle_folder_refused_by_default(tmp_path: Path) -> None:
    _pickle_model(tmp_path / "m")
    raises_clear(lambda: open_source(tmp_path / "m"), "pytorch_model.bin", "allow_pickle")


def test_sharded_pickle_folder_refused_by_default(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    _pickle_model(folder, "pytorch_model-00001-of-00001.bin")
    index = {"weight_map": {k: "pytorch_model-00001-of-00001.bin" for k in small_state()}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    raises_clear(lambda: open_source(folder), "pytorch_model-00001-of-00001.bin", "allow_pickle")


def test_pickle_in_a_merge_refused_without_output(tmp_path: Path) -> None:
    base, models = family(tmp_path)
    (models[0] / "model.safetensors").unlink()
    _pickle_model(models[0])
    out = tmp_path / "out"
    raises_clear(
        lambda: merge(merge_config(base, models), out), "pytorch_model.bin", "allow_pickle"
    )
    assert not out.exists()
    assert_no_partial(tmp_path, "out")


def test_pickle_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, models = family(tmp_path)
    (models[1] / "model.safetensors").unlink()
    _pickle_model(models[1])
    config = write_yaml(tmp_path / "merge.yaml", merge_config(base, models))
    code, err = run_cli(["merge", str(config), str(tmp_path / "out"), "--quiet"], capsys)
    assert_cli_one_line(code, err, "pytorch_model.bin", "allow_pickle")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("allow", [False, True])
def test_pickle_renamed_safetensors_is_never_unpickled(tmp_path: Path, allow: bool) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.ones(2)}, path)  # zip format, like torch.save always writes
    raises_clear(
        lambda: open_source(path, allow_pickle=allow),
        str(path),
        "not a valid safetensors file",
        "looks like a PyTorch pickle",
        "allow_pickle",
    )
    legacy = tmp_path / "legacy.safetensors"
    legacy.write_bytes(pickle.dumps({"w": _Payload(marker)}, protocol=2))
    raises_clear(
        lambda: open_source(legacy, allow_pickle=allow), str(legacy), "looks like a PyTorch pickle"
    )
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("protocol", [2, 4])
def test_code_running_pickle_refused_even_when_allowed(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps({"w": _Payload(marker)}, protocol=protocol))
    raises_clear(lambda: open_source(path, allow_pickle=True), str(path), "weights_only=True")
    assert not marker.exists()


def test_code_running_pickle_in_torch_zip_refused_even_when_allowed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"w": _Payload(marker)}, path)
    raises_clear(lambda: open_source(path, allow_pickle=True), str(path), "refused", "system")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    ["truncated", "junk", "a list", "no tensor"],
)
def test_malformed_pickle_when_allowed(tmp_path: Path, content: str) -> None:
    path = tmp_path / "w.pt"
    if content == "truncated":
        torch.save(small_state(), path)
        path.write_bytes(path.read_bytes()[:60])
    elif content == "junk":
        path.write_bytes(b"not a checkpoint at all" * 4)
    elif content == "a list":
        torch.save([torch.ones(2)], path)
    else:
        torch.save({"step": 3, "name": "x"}, path)
    raises_clear(lambda: open_source(path, allow_pickle=True), str(path))


def test_lora_adapter_pickle_refused_by_default(tmp_path: Path) -> None:
    base, _ = family(tmp_path, 0)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    torch.save(
        {
            "base_model.model.layer.0.lora_A.weight": torch.zeros(2, 4),
            "base_model.model.layer.0.lora_B.weight": torch.zeros(6, 2),
        },
        adapter / "adapter_model.bin",
    )
    out = tmp_path / "out"
    raises_clear(
        lambda: merge(merge_config(base, [adapter]), out), "adapter_model.bin", "allow_pickle"
    )
    assert not out.exists()
