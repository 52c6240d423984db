"""Properties every registered merge method has, parametrised over the registry (a method
gets them by registering): merging a model with itself gives it back; names, shapes and
dtypes are kept; the chunked stream gives what one chunk per tensor gives."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from manytask.merging import engine, merge_state_dicts
from manytask.merging.methods import METHODS
from manytask.merging.params import Param

SHAPES = {"embed.weight": (32, 16), "layer.weight": (40, 24), "layer.bias": (24,)}


def valid_value(param: Param) -> Any:
    """A value inside a declaration (for parameters that have no default)."""
    if param.kind == "choice":
        return param.choices[0]
    if param.kind == "bool":
        return False
    low = 0.0 if param.low is None else param.low
    high = low + 2.0 if param.high is None else param.high
    value = low + 0.4 * (high - low)
    return round(value) if param.kind == "int" else value


def required(spec: dict[str, Param]) -> dict[str, Any]:
    return {k: valid_value(p) for k, p in spec.items() if p.required}


def state(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in SHAPES.items()}


def run(name: str, models: list[dict], base: dict | None, **kw: Any) -> dict[str, torch.Tensor]:
    cls = METHODS.get(name)
    return merge_state_dicts(
        name, models, base=base,
        parameters=required(cls.global_params),
        model_parameters=[required(cls.model_params) for _ in models], **kw,
    )


def count(name: str) -> int:
    cls = METHODS.get(name)
    n = max(cls.min_models, 2)
    return n if cls.max_models is None else min(n, cls.max_models)


@pytest.mark.parametrize("name", METHODS.names())
def test_merging_a_model_with_itself_gives_it_back(name: str) -> None:
    model = state(0)
    merged = run(name, [model] * count(name), dict(model))
    assert merged.keys() == model.keys()
    for key, value in model.items():
        torch.testing.assert_close(merged[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", METHODS.names())
def test_names_shapes_and_dtypes_are_kept(name: str, dtype: torch.dtype) -> None:
    base = state(0, dtype)
    models = [state(i + 1, dtype) for i in range(count(name))]
    merged = run(name, models, base)
    assert merged.keys() == base.keys()
    for key, value in base.items():
        assert merged[key].shape == value.shape and merged[key].dtype == dtype, key
        assert torch.isfinite(merged[key].float()).all(), key


@pytest.mark.parametrize("name", METHODS.names())
def test_chunked_equals_in_memory(name: str, monkeypatch) -> None:
    base = state(0)
    models = [state(i + 1) for i in range(count(name))]
    whole = run(name, models, base)  # every tensor here is one chunk
    monkeypatch.setattr(engine, "CHUNK_ELEMENTS", 48)  # 2-3 rows per chunk
    chunked = run(name, models, base)
    again = run(name, models, base)
    for key in whole:
        assert torch.equal(chunked[key], again[key]), key  # deterministic under one grid
    if "seed" in METHODS.get(name).global_params:
        # Random masks are drawn per (seed, tensor, model, chunk): another chunk grid draws
        # other masks, so only determinism holds across grids (see merging/methods/base.py).
        return
    for key in whole:
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-6, atol=1e-6, msg=key)
