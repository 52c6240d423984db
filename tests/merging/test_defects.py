"""Regression tests for the defects of issue 17: SLERP on identical tensors, TIES' default
density per convention, mergekit's spellings of rescale/int8_mask."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from manytask.merging import merge_state_dicts
from manytask.merging.methods import get_method

THRESHOLDS = [0.0, 0.5, 0.9995, 1.0]


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_slerp_identical_tensors_any_threshold(threshold: float, t: float) -> None:
    g = torch.Generator().manual_seed(1)
    sd = {"w": torch.randn(7, 5, generator=g), "b": torch.randn(5, generator=g),
          "z": torch.zeros(3, 2)}
    out = merge_state_dicts("slerp", [sd], base=sd,
                            parameters={"t": t, "dot_threshold": threshold})
    for k in sd:  # the interpolation of a tensor with itself is that tensor
        assert torch.isfinite(out[k]).all()
        torch.testing.assert_close(out[k], sd[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_slerp_opposite_tensors_any_threshold(threshold: float) -> None:
    sd = {"w": torch.arange(1.0, 7.0).reshape(2, 3)}
    out = merge_state_dicts("slerp", [{"w": -sd["w"]}], base=sd,
                            parameters={"t": 0.25, "dot_threshold": threshold})
    assert torch.isfinite(out["w"]).all()


def test_ties_default_density_per_convention() -> None:
    ties = get_method("ties")
    paper = ties({}, [{}, {}])
    kit = ties({"convention": "mergekit"}, [{}, {}])
    assert [m["density"] for m in paper.models] == [0.2, 0.2]  # the paper's k = 20 %
    assert [m["density"] for m in kit.models] == [1.0, 1.0]  # mergekit keeps everything


def test_ties_mergekit_without_density_keeps_every_element() -> None:
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(40, 10, generator=g)}
    models = [{"w": base["w"] + torch.randn(40, 10, generator=g)} for _ in range(2)]
    out = merge_state_dicts("ties", models, base=base, parameters={"convention": "mergekit"})
    d = torch.stack([m["w"] - base["w"] for m in models])
    elected = torch.where(d.sum(0) >= 0, 1.0, -1.0)
    agree = (d.sign() == elected).float()
    expected = base["w"] + (d * agree).sum(0) / agree.sum(0).clamp_min(1)
    torch.testing.assert_close(out["w"], expected)


def test_mergekit_defaults_for_dare_and_della() -> None:
    dare = get_method("dare_ties")({"convention": "mergekit"}, [{}, {}])
    assert dare.params["rescale"] == "l1" and dare.models[0]["density"] == 1.0
    della = get_method("della")({"convention": "mergekit"}, [{"density": 0.5}])
    assert della.models[0]["epsilon"] == 0.15
    with pytest.raises(ValueError, match="density"):
        get_method("dare_ties")({}, [{}])  # the paper's DARE has no default drop rate


def test_rescale_spellings() -> None:
    kit = get_method("dare_linear")({"convention": "mergekit", "rescale": True}, [{"density": .5}])
    paper = get_method("dare_linear")({"rescale": True}, [{"density": 0.5}])
    off = get_method("dare_linear")({"rescale": False}, [{"density": 0.5}])
    assert (kit.params["rescale"], paper.params["rescale"], off.params["rescale"]) == (
        "l1", "inverse", "none")
    with pytest.raises(ValueError, match="inverse"):
        get_method("ties")({"rescale": "inverse"}, [{}])


@pytest.mark.slow
def test_ties_rescale_and_int8_mask_agree_with_mergekit(family, tmp_path: Path) -> None:
    pytest.importorskip("mergekit")
    from tests.merging.test_mergekit_methods import run_mergekit, run_ours

    base, models, _, _ = family(2)
    for method in ("ties", "breadcrumbs"):
        cfg = {"merge_method": method, "base_model": str(base),
               "parameters": {"rescale": True, "int8_mask": True},
               "models": [{"model": str(m), "parameters": {"weight": w, "density": 0.5}}
                          for m, w in zip(models, (1.0, 0.6), strict=True)]}
        theirs = run_mergekit({**cfg, "dtype": "float32"}, tmp_path / f"kit_{method}")
        ours_cfg = {**cfg, "parameters": {**cfg["parameters"], "convention": "mergekit"}}
        ours = run_ours(ours_cfg, tmp_path / f"ours_{method}")
        for k in ours:
            torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6)


NEW_METHODS = {
    "nuslerp": ({}, [{}, {}]), "multislerp": ({}, [{}, {}, {}]), "sce": ({}, [{}, {}, {}]),
    "sce_topk": ({"select_topk": 0.5}, [{}, {}]), "ram": ({}, [{}, {}]),
    "ramplus_tl": ({}, [{}, {}]), "nearswap": ({"t": 0.1}, [{}]),
    "arcee_fusion": ({}, [{}]),
}


@pytest.mark.parametrize("label", sorted(NEW_METHODS))
def test_unchanged_models_give_the_base(label: str) -> None:
    """Models equal to the base (a frozen tensor) merge to the base, finite."""
    params, per_model = NEW_METHODS[label]
    g = torch.Generator().manual_seed(2)
    base = {"w": torch.randn(6, 4, generator=g), "b": torch.randn(4, generator=g)}
    out = merge_state_dicts(label.removesuffix("_topk"), [dict(base) for _ in per_model],
                            base=base, parameters=params, model_parameters=per_model)
    for k in base:
        torch.testing.assert_close(out[k], base[k])


@pytest.mark.parametrize("method", ["karcher", "multislerp"])
def test_identical_models_give_that_model(method: str) -> None:
    g = torch.Generator().manual_seed(3)
    sd = {"w": torch.randn(5, 3, generator=g)}
    out = merge_state_dicts(method, [sd, sd, sd])
    torch.testing.assert_close(out["w"], sd["w"], rtol=1e-5, atol=1e-6)
