"""Safetensors headers that lie: about shapes, byte offsets, dtypes or their own length.

Each file is written byte by byte from a hand-made header, so the lie is exactly the one
named. A lying header is refused when the file is opened - before any tensor is read and
before any output exists - with a ``ValueError``/``TypeError`` naming the file (and the tensor
when the header names one). Headers that are each valid but disagree across models (shape,
dtype) are refused by the plan, naming the tensor and both models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hos_helpers import (
    assert_no_partial,
    family,
    merge_config,
    raises_clear,
    raw_safetensors,
    small_state,
    write_model,
    zeros,
)

from manytask.merging import merge
from manytask.merging.sources import open_source


def f32(shape: list[int], start: int, stop: int) -> dict[str, Any]:
    return {"dtype": "F32", "shape": shape, "data_offsets": [start, stop]}


# name -> (header, data length, words the error must contain besides the file name)
LIES: dict[str, tuple[Any, int, tuple[str, ...]]] = {
    "shape larger than its bytes": ({"w": f32([4, 4], 0, 32)}, 32, ()),
    "shape smaller than its bytes": ({"w": f32([2], 0, 32)}, 32, ()),
    "end offset past the file": ({"w": f32([4], 0, 16), "v": f32([4], 16, 4096)}, 32, ()),
    "overlapping tensors": ({"w": f32([4], 0, 16), "v": f32([4], 8, 24)}, 24, ("`v`",)),
    "offsets reversed": ({"w": f32([4], 16, 0)}, 16, ("`w`",)),
    "gap between tensors": ({"w": f32([2], 0, 8), "v": f32([2], 16, 24)}, 24, ("`v`",)),
    "dtype wider than its bytes": (
        {"w": {"dtype": "F64", "shape": [4], "data_offsets": [0, 16]}},
        16,
        (),
    ),
    "negative dimension": ({"w": f32([-4], 0, 16)}, 16, ()),
    "shape that overflows": ({"w": f32([2**40, 2**40], 0, 16)}, 16, ("overflow",)),
    "unknown dtype": ({"w": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}}, 16, ("Q7",)),
    "header is a list": ([1, 2, 3], 0, ()),
    "metadata not strings": ({"__metadata__": {"n": 1}, "w": f32([4], 0, 16)}, 16, ()),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_lying_header_refused_on_open(tmp_path: Path, lie: str) -> None:
    header, size, words = LIES[lie]
    path = raw_safetensors(tmp_path / "lie.safetensors", header, zeros(size))
    raises_clear(lambda: open_source(path), str(path), "not a valid safetensors file", *words)


@pytest.mark.parametrize("length", [2**62, 10**9, 3])
def test_absurd_header_length(tmp_path: Path, length: int) -> None:
    # the 8-byte prefix claims a header far larger (or smaller) than the file
    path = raw_safetensors(
        tmp_path / "huge.safetensors", {"w": f32([4], 0, 16)}, zeros(16), length=length
    )
    raises_clear(lambda: open_source(path), str(path), "header")


@pytest.mark.parametrize("dtype", ["C64", "F8_E4M3", "U16"])
def test_dtype_the_merge_cannot_compute_with(tmp_path: Path, dtype: str) -> None:
    nbytes = {"C64": 32, "F8_E4M3": 4, "U16": 8}[dtype]
    header = {"w": {"dtype": dtype, "shape": [4], "data_offsets": [0, nbytes]}}
    path = raw_safetensors(tmp_path / "odd.safetensors", header, zeros(nbytes))
    raises_clear(lambda: open_source(path).info("w"), str(path), "'w'", dtype)


@pytest.mark.parametrize("lie", ["shape larger than its bytes", "overlapping tensors"])
def test_lying_model_in_a_merge_leaves_no_output(tmp_path: Path, lie: str) -> None:
    base, models = family(tmp_path)
    header, size, _ = LIES[lie]
    weights = raw_safetensors(models[0] / "model.safetensors", header, zeros(size))
    out = tmp_path / "out"
    raises_clear(lambda: merge(merge_config(base, models), out), str(weights))
    assert not out.exists()
    assert_no_partial(tmp_path, "out")


def test_shape_disagreeing_with_the_base(tmp_path: Path) -> None:
    base, models = family(tmp_path)
    state = small_state(1)
    state["layer.1.weight"] = torch.zeros(3, 5)  # the base has (3, 6)
    write_model(models[1], state)
    out = tmp_path / "out"
    raises_clear(
        lambda: merge(merge_config(base, models), out),
        "'layer.1.weight'",
        str(models[1]),
        "(3, 5)",
        "(3, 6)",
    )
    assert not out.exists()


def test_dtype_disagreeing_with_the_base(tmp_path: Path) -> None:
    base, models = family(tmp_path)
    state = small_state(1)
    state["layer.0.bias"] = state["layer.0.bias"].to(torch.float16)
    write_model(models[0], state)
    raises_clear(
        lambda: merge(merge_config(base, models), tmp_path / "out"),
        "'layer.0.bias'",
        "torch.float16",
        "dtype_mismatch",
    )
    assert not (tmp_path / "out").exists()


def test_tensor_missing_from_one_model(tmp_path: Path) -> None:
    base, models = family(tmp_path)
    state = small_state(1)
    del state["layer.0.bias"]
    write_model(models[1], state)
    raises_clear(
        lambda: merge(merge_config(base, models), tmp_path / "out"),
        "'layer.0.bias'",
        str(models[1]),
    )
    assert not (tmp_path / "out").exists()
