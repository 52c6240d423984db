"""mergekit's configuration language: settings, precedence, convention notices, seeds, the
command-line options, and one-line refusals."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from manytask.cli.merging import add_merge_command
from manytask.merging import merge
from manytask.merging.config import MergeConfig
from manytask.merging.conventions import convention_notes
from manytask.merging.params import Param
from manytask.merging.settings import evaluate, layer_positions

FLOAT = Param("float", 0.0)


def test_gradient_interpolates_over_layers() -> None:
    grad = [0.0, 0.5, 1.0]
    assert evaluate(grad, "x", 0.0, FLOAT) == 0.0
    assert evaluate(grad, "x", 0.25, FLOAT) == pytest.approx(0.25)
    assert evaluate(grad, "x", 0.75, FLOAT) == pytest.approx(0.75)
    assert evaluate(grad, "x", 1.0, FLOAT) == 1.0
    assert evaluate([True, False], "x", 0.4, Param("bool", False)) is True  # floor(0.4)


def test_filters_take_the_first_match() -> None:
    setting = [{"filter": "self_attn", "value": 0.1}, {"filter": "mlp", "value": [0, 1]},
               {"value": 0.9}]
    assert evaluate(setting, "model.layers.0.self_attn.q_proj.weight", 0.5, FLOAT) == 0.1
    assert evaluate(setting, "model.layers.1.mlp.up_proj.weight", 0.5, FLOAT) == 0.5
    assert evaluate(setting, "lm_head.weight", 0.5, FLOAT) == 0.9
    assert evaluate([{"filter": "mlp", "value": 1.0}], "norm", 0.0, FLOAT) is None


def test_layer_positions() -> None:
    names = ["model.embed_tokens.weight", *[f"model.layers.{i}.w" for i in range(5)],
             "model.norm.weight"]
    pos = layer_positions(names)
    assert [pos[f"model.layers.{i}.w"] for i in range(5)] == [0, 0.25, 0.5, 0.75, 1.0]
    assert pos["model.embed_tokens.weight"] == pos["model.norm.weight"] == 0.0


def test_model_setting_beats_global_and_global_applies_to_all() -> None:
    cfg = MergeConfig.from_dict({
        "merge_method": "ties", "base_model": "b",
        "models": [{"model": "a"}, {"model": "c", "parameters": {"density": 0.9}}],
        "parameters": {"density": 0.3, "weight": [1.0, 0.0]}})
    m = cfg.method_for("model.layers.1.mlp.weight", 0.5, [e.parameters for e in cfg.models])
    assert [x["density"] for x in m.models] == [0.3, 0.9]
    assert [x["weight"] for x in m.models] == [0.5, 0.5]


@pytest.mark.parametrize(("setting", "message"), [
    ({"t": [0.2, 1.5]}, r"t\[1\] must be <= 1, got 1.5"),
    ({"t": [{"filter": 3, "value": 0.5}]}, r"filter must be text"),
    ({"t": [{"filter": "mlp", "valu": 0.5}]}, r"unknown key\(s\) \['valu'\]"),
    ({"t": [0.2, "x"]}, r"must be a number"),
    ({"tt": 0.5}, r"unknown parameter\(s\) 'tt' \(did you mean 't'\?\)"),
])
def test_bad_settings_are_refused_in_one_line(setting: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message) as err:
        MergeConfig.from_dict({"merge_method": "slerp", "base_model": "b",
                               "models": [{"model": "a"}], "parameters": setting})
    assert "\n" not in str(err.value)


def test_slice_errors() -> None:
    base = {"merge_method": "passthrough"}
    with pytest.raises(ValueError, match=r"layer_range must be \[start, end\)"):
        MergeConfig.from_dict({**base, "slices": [{"sources": [{"model": "a",
                                                                "layer_range": [2, 1]}]}]})
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'layers'"):
        MergeConfig.from_dict({**base, "slices": [{"sources": [{"model": "a",
                                                                "layers": [0, 1]}]}]})


def _cfg(method: str, **kw) -> MergeConfig:
    models = [{"model": "a", "parameters": {"weight": 1.0, **kw}},
              {"model": "c", "parameters": {"weight": kw.pop("w2", 1.0), **kw}}]
    return MergeConfig.from_dict({"merge_method": method, "base_model": "b",
                                  "models": models})


def test_convention_notice_exactly_when_meanings_differ() -> None:
    notes = convention_notes(_cfg("ties"))
    assert len(notes) == 1 and "density defaults to the paper's 0.2" in notes[0]
    assert convention_notes(_cfg("ties", density=0.5)) == []  # equal weights, density set
    unequal = MergeConfig.from_dict({"merge_method": "ties", "base_model": "b", "models": [
        {"model": "a", "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": "c", "parameters": {"weight": 0.5, "density": 0.5}}]})
    (line,) = convention_notes(unequal)
    assert "elected on the unweighted" in line and "--like mergekit" in line
    dare = convention_notes(_cfg("dare_ties", density=0.5))
    assert len(dare) == 2 and "rescale" in dare[0] and "normalize" in dare[1]
    given = MergeConfig.from_dict({"merge_method": "dare_linear", "base_model": "b",
                                   "parameters": {"rescale": "l1", "density": 0.5},
                                   "models": [{"model": "a"}]})
    assert convention_notes(given) == []
    assert convention_notes(_cfg("task_arithmetic")) == []  # no convention to choose
    chosen = MergeConfig.from_dict({"merge_method": "dare_ties", "base_model": "b",
                                    "convention": "mergekit", "models": [{"model": "a"}]})
    assert convention_notes(chosen) == []


def test_cli_like_and_random_seed(family, tmp_path: Path, capsys) -> None:
    base, models, _, _ = family(2)
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump({
        "merge_method": "dare_ties", "base_model": str(base),
        "models": [{"model": str(m), "parameters": {"weight": 1.0, "density": 0.5}}
                   for m in models]}))
    parser = argparse.ArgumentParser(prog="manytask")
    add_merge_command(parser.add_subparsers(dest="command"))
    outs = {}
    for label, extra in (("paper", []), ("kit1", ["--like", "mergekit", "--random-seed", "1"]),
                         ("kit1b", ["--like", "mergekit", "--random-seed", "1"]),
                         ("kit2", ["--like", "mergekit", "--random-seed", "2"])):
        args = parser.parse_args(["merge", str(config), str(tmp_path / label), "--quiet",
                                  *extra])
        assert args.func(args) == 0
        err = capsys.readouterr().err
        assert ("rescale divides" in err) == (label == "paper")
        outs[label] = load_file(str(tmp_path / label / "model.safetensors"))
    key = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(outs["kit1"][key], outs["kit1b"][key])
    assert not torch.equal(outs["kit1"][key], outs["kit2"][key])
    assert not torch.equal(outs["paper"][key], outs["kit1"][key])


def test_tokenizer_source_union_refuses_tokens_beyond_the_rows(family, tmp_path: Path) -> None:
    """mergekit strips a base's tokens past its embedding rows; that is refused here."""
    base, models, _, _ = family(1)
    vocab = {f"t{i}": i for i in range(34)}  # 34 tokens, 32 rows
    (base / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}}))
    (models[0] / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0, "c": 1}}}')
    with pytest.raises(ValueError, match=r"2 token\(s\) beyond its 32 embedding rows") as err:
        merge({"merge_method": "task_arithmetic", "base_model": str(base),
               "tokenizer_source": "union", "models": [{"model": str(models[0])}]},
              tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_gradient_and_filter_closed_form(family, tmp_path: Path) -> None:
    """lambda [0, 1] over two layers: layer 0 is the base, layer 1 base + tau; a filter
    sets the MLP of every layer to lambda 2; outside the layers x = 0 (the base)."""
    base, models, bsd, msds = family(1)
    merge({"merge_method": "task_arithmetic", "base_model": str(base),
           "models": [{"model": str(models[0])}],
           "parameters": {"lambda": [{"filter": "mlp", "value": 2.0}, {"value": [0.0, 1.0]}]}},
          tmp_path / "out")
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    for name, value in out.items():
        tau = msds[0][name] - bsd[name]
        lam = 2.0 if "mlp" in name else (1.0 if ".layers.1." in name else 0.0)
        torch.testing.assert_close(value, bsd[name] + lam * tau)


def test_slices_with_unequal_ranges_are_refused(family, tmp_path: Path) -> None:
    base, models, _, _ = family(1)
    with pytest.raises(ValueError, match=r"slices\[0\]: sources cover different numbers"):
        merge({"merge_method": "linear", "slices": [{"sources": [
            {"model": str(base), "layer_range": [0, 2]},
            {"model": str(models[0]), "layer_range": [0, 1]}]}]}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_config_overrides_make_a_copy() -> None:
    from manytask.merging.conventions import load_config

    cfg = MergeConfig.from_dict({"merge_method": "dare_ties", "base_model": "b",
                                 "models": [{"model": "a", "parameters": {"density": 0.5}}]})
    kit = load_config(cfg, like="mergekit", random_seed=4)
    assert (kit.convention, kit.random_seed) == ("mergekit", 4)
    assert (cfg.convention, cfg.random_seed) == (None, None)
    assert kit.build_method().params["seed"] == 4
    with pytest.raises(ValueError, match="--like must be"):
        load_config(cfg, like="mergekt")
