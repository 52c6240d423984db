"""mergekit configurations, written as mergekit's users write them, run unchanged with
``like="mergekit"`` and give mergekit 0.1.5's result (the "26 configurations" check of
issue 17: gradients, filters, parameters given once, slices, base among the models,
out_dtype, int8_mask, rescale, tokenizer_source)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from manytask.merging import merge

pytest.importorskip("mergekit")

# {b}: base, {m0} {m1} {m2}: fine-tuned models (2 layers each).
CONFIGS = {
    "slerp_slices_filters": """
slices:
  - sources:
      - {model: "{b}", layer_range: [0, 2]}
      - {model: "{m0}", layer_range: [0, 2]}
merge_method: slerp
base_model: "{b}"
parameters:
  t:
    - {filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}
    - {filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}
    - value: 0.5
dtype: float32
""",
    "slerp_base_in_models": """
models: [{model: "{b}"}, {model: "{m1}"}]
merge_method: slerp
base_model: "{b}"
parameters: {t: [0.2, 0.9]}
dtype: float32
""",
    "ties_once_for_all": """
models: [{model: "{m0}"}, {model: "{m1}"}, {model: "{m2}", parameters: {weight: 0.3}}]
merge_method: ties
base_model: "{b}"
parameters: {weight: 0.8, density: 0.5, normalize: true, int8_mask: true}
dtype: float32
""",
    "ties_without_density": """
models:
  - {model: "{m0}", parameters: {weight: 1.0}}
  - {model: "{m1}", parameters: {weight: 0.5}}
merge_method: ties
base_model: "{b}"
dtype: float32
""",
    "ties_filtered_density": """
models:
  - model: "{m0}"
    parameters:
      weight: 1.0
      density: [{filter: mlp, value: 0.3}, {value: 0.7}]
  - {model: "{m1}", parameters: {weight: [0.2, 1.0], density: 0.6}}
merge_method: ties
base_model: "{b}"
parameters: {rescale: true}
dtype: float32
""",
    "task_arithmetic_gradient": """
models:
  - {model: "{m0}", parameters: {weight: [1, 0]}}
  - {model: "{m1}", parameters: {weight: [0, 1]}}
merge_method: task_arithmetic
base_model: "{b}"
parameters: {lambda: [0.5, 1.5], normalize: true}
dtype: float32
""",
    "linear_weight_gradient": """
models:
  - {model: "{m0}", parameters: {weight: [1, 0.5]}}
  - {model: "{m1}", parameters: {weight: 0.5}}
merge_method: linear
dtype: float32
""",
    "breadcrumbs_ties": """
models: [{model: "{m0}"}, {model: "{m1}"}]
merge_method: breadcrumbs_ties
base_model: "{b}"
parameters: {weight: 1.0, density: 0.7, gamma: 0.05}
dtype: float32
""",
    "passthrough_depth_upscaling": """
slices:
  - sources: [{model: "{m0}", layer_range: [0, 2]}]
  - sources: [{model: "{m1}", layer_range: [1, 2]}]
merge_method: passthrough
dtype: float32
""",
    "linear_slices": """
slices:
  - sources:
      - {model: "{m0}", layer_range: [0, 1], parameters: {weight: 0.3}}
      - {model: "{m1}", layer_range: [1, 2], parameters: {weight: 0.7}}
merge_method: linear
dtype: float32
""",
    "nuslerp_base": """
models: [{model: "{m0}", parameters: {weight: 0.7}}, {model: "{m1}", parameters: {weight: 0.3}}]
merge_method: nuslerp
base_model: "{b}"
parameters: {nuslerp_flatten: false}
dtype: float32
""",
    "model_stock": """
models: [{model: "{m0}"}, {model: "{m1}"}, {model: "{m2}"}]
merge_method: model_stock
base_model: "{b}"
dtype: float32
""",
    "karcher_with_base": """
models: [{model: "{m0}"}, {model: "{m1}"}]
merge_method: karcher
base_model: "{b}"
parameters: {tol: 1.0e-7, max_iter: 20}
dtype: float32
""",
    "multislerp": """
models: [{model: "{m0}", parameters: {weight: 0.2}}, {model: "{m1}", parameters: {weight: 0.8}}]
merge_method: multislerp
base_model: "{b}"
dtype: float32
""",
    "sce": """
models: [{model: "{m0}"}, {model: "{m1}"}, {model: "{m2}"}]
merge_method: sce
base_model: "{b}"
parameters: {select_topk: 0.5}
dtype: float32
""",
    "nearswap_out_dtype": """
models: [{model: "{b}"}, {model: "{m0}"}]
merge_method: nearswap
base_model: "{b}"
parameters: {t: 0.05}
dtype: float32
out_dtype: bfloat16
""",
    "arcee_fusion": """
models: [{model: "{b}"}, {model: "{m0}"}]
merge_method: arcee_fusion
base_model: "{b}"
dtype: float32
""",
    "dare_ties_mergekit_defaults": """
models: [{model: "{m0}", parameters: {weight: 0.6}}, {model: "{m1}", parameters: {weight: 0.4}}]
merge_method: dare_ties
base_model: "{b}"
dtype: float32
""",
    "della_mergekit_defaults": """
models: [{model: "{m0}", parameters: {weight: 0.6}}, {model: "{m1}", parameters: {weight: 0.4}}]
merge_method: della
base_model: "{b}"
dtype: float32
""",
    "slerp_slice_parameters": """
slices:
  - sources:
      - {model: "{m1}", layer_range: [0, 2]}
      - {model: "{b}", layer_range: [0, 2]}
    parameters: {t: [{filter: mlp, value: 0.8}, {value: [0.1, 0.6]}]}
merge_method: slerp
base_model: "{b}"
parameters: {t: 0.5}
dtype: float32
""",
    "linear_unnormalized_once": """
models: [{model: "{m0}"}, {model: "{m1}"}, {model: "{m2}"}]
merge_method: linear
parameters: {weight: 0.4, normalize: false}
dtype: float32
""",
    "breadcrumbs_density_gradient": """
models: [{model: "{m0}"}, {model: "{m2}"}]
merge_method: breadcrumbs
base_model: "{b}"
parameters: {weight: [0.3, 1.0], density: [0.5, 0.9], gamma: 0.02}
dtype: float32
""",
    "task_arithmetic_base_in_models": """
models: [{model: "{b}"}, {model: "{m0}", parameters: {weight: 0.5}}, {model: "{m1}"}]
merge_method: task_arithmetic
base_model: "{b}"
parameters: {weight: 1.0, lambda: 0.7}
dtype: float32
""",
    "ramplus_tokenizer_base": """
models: [{model: "{m0}"}, {model: "{m1}"}]
merge_method: ramplus_tl
base_model: "{b}"
parameters: {epsilon: 0.1}
tokenizer_source: base
dtype: float32
""",
}


def _write(text: str, paths: dict[str, str]) -> dict:
    for key, value in paths.items():
        text = text.replace("{" + key + "}", value)
    return yaml.safe_load(text)


@pytest.mark.slow
def test_mergekit_configs_run_unchanged(family, tmp_path: Path) -> None:
    from tests.merging.test_mergekit_methods import assert_same, run_mergekit

    base, models, _, _ = family(3)
    vocab = {"model": {"type": "WordLevel", "vocab": {f"t{i}": i for i in range(32)},
                       "unk_token": "t0"}, "added_tokens": []}
    for folder in (base, *models):
        (folder / "tokenizer.json").write_text(json.dumps(vocab))
    paths = {"b": str(base), **{f"m{i}": str(m) for i, m in enumerate(models)}}
    for label, text in CONFIGS.items():
        cfg = _write(text, paths)
        theirs = run_mergekit(cfg, tmp_path / f"kit_{label}")
        notes: list[str] = []
        merge(cfg, tmp_path / f"ours_{label}", like="mergekit", notify=notes.append)
        assert notes == [], label  # a convention was chosen: nothing to report
        ours = load_file(str(tmp_path / f"ours_{label}" / "model.safetensors"))
        tol = 1e-2 if label.endswith("out_dtype") else 1e-5
        assert_same(ours, theirs, label, rtol=tol, atol=tol / 10)
        if "slices" in cfg:
            layers = 1 + max(int(k.split(".")[2]) for k in ours if ".layers." in k)
            written = json.loads((tmp_path / f"ours_{label}" / "config.json").read_text())
            assert written["num_hidden_layers"] == layers, label


def _vocab_file(folder: Path, tokens: list[str]) -> None:
    data = {"model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(tokens)},
                      "unk_token": tokens[0]}, "added_tokens": []}
    (folder / "tokenizer.json").write_text(json.dumps(data))


@pytest.mark.slow
def test_tokenizer_source_reorders_rows_as_mergekit(family, tmp_path: Path) -> None:
    """Different vocabularies: every kind of default row (one donor, the base's, the mean of
    several, own rows in another order) against mergekit's permutation."""
    from tests.merging.test_mergekit_methods import assert_same, run_mergekit

    base, models, _, _ = family(2)
    words = [f"t{i}" for i in range(32)]
    _vocab_file(base, words)
    _vocab_file(models[0], [*reversed(words[:30]), "x0", "x1"])
    _vocab_file(models[1], [w if w != "t5" else "x0" for w in words])
    for label, source in (("base", "base"), ("model", str(models[0]))):
        cfg = {"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
               "tokenizer_source": source,
               "models": [{"model": str(m), "parameters": {"weight": w}}
                          for m, w in zip(models, (0.7, 0.4), strict=True)]}
        theirs = run_mergekit(cfg, tmp_path / f"kit_{label}")
        merge(cfg, tmp_path / f"ours_{label}", like="mergekit")
        ours = load_file(str(tmp_path / f"ours_{label}" / "model.safetensors"))
        assert_same(ours, theirs, label)
        written = json.loads((tmp_path / f"ours_{label}" / "tokenizer.json").read_text())
        expected = base if source == "base" else models[0]
        assert written == json.loads((expected / "tokenizer.json").read_text())


def _tokenizer_file(folder: Path, tokens: list[str], added: list[str]) -> None:
    entries = [{"id": len(tokens) + j, "content": a, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": False, "special": True}
               for j, a in enumerate(added)]
    data = {"version": "1.0", "model": {"type": "WordLevel", "unk_token": tokens[0],
                                        "vocab": {t: i for i, t in enumerate(tokens)}},
            "added_tokens": entries}
    (folder / "tokenizer.json").write_text(json.dumps(data))


def _vocab_model(folder: Path, sd: dict, tokens: list[str], added: list[str]) -> Path:
    """``sd`` with as many embedding rows as tokens (extra rows: scaled copies)."""
    from tests.merging.conftest import LLAMA_CONFIG, write_model

    n = len(tokens) + len(added)
    resized = dict(sd)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = sd[key]
        resized[key] = torch.cat([rows, 0.5 * rows])[:n].clone()
    write_model(folder, resized, {**LLAMA_CONFIG, "vocab_size": n})
    _tokenizer_file(folder, tokens, added)
    return folder


def _token_ids(folder: Path) -> tuple[dict[str, int], dict[str, dict]]:
    data = json.loads((folder / "tokenizer.json").read_text())
    ids = dict(data["model"]["vocab"])
    added = {a["content"]: a for a in data["added_tokens"]}
    ids.update({c: a["id"] for c, a in added.items()})
    return ids, added


@pytest.mark.slow
def test_tokenizer_source_union_as_mergekit(tmp_path: Path) -> None:
    """Three models whose vocabularies differ in size, order, plain and added tokens:
    ``union`` gives mergekit's tokens, base ids, added-token settings and, token by token,
    mergekit's embedding and output rows (every default: one donor, base row, mean, own).
    mergekit numbers the appended tokens in a hash map's order, which changes between runs,
    so rows are compared by token; without a base it extends the tokenizer of the first
    model of a set (a random one), manytask that of the first model listed."""
    from tests.merging.conftest import random_family
    from tests.merging.test_mergekit_methods import assert_same, run_mergekit

    bsd, msds = random_family(2)
    words = [f"t{i}" for i in range(30)]
    base = _vocab_model(tmp_path / "base", bsd, words, ["<s>"])
    m0 = _vocab_model(tmp_path / "m0", msds[0], [*reversed(words[:28]), "x0", "x1", "x2"],
                      ["<s>", "<pad>"])
    m1 = _vocab_model(tmp_path / "m1", msds[1], [w if w != "t5" else "x0" for w in words]
                      + ["y0"], ["<pad>", "<sep>"])
    configs = {
        "with_base": {"merge_method": "task_arithmetic", "base_model": str(base),
                      "models": [{"model": str(m0), "parameters": {"weight": 0.7}},
                                 {"model": str(m1), "parameters": {"weight": 0.4}}]},
        "no_base": {"merge_method": "linear",
                    "models": [{"model": str(m), "parameters": {"weight": w}}
                               for m, w in ((m1, 0.6), (m0, 0.3), (base, 0.1))]},
    }
    for label, cfg in configs.items():
        cfg.update({"dtype": "float32", "tokenizer_source": "union"})
        kit, own = tmp_path / f"kit_{label}", tmp_path / f"ours_{label}"
        theirs = run_mergekit(cfg, kit)
        merge(cfg, own, like="mergekit")
        ours = load_file(str(own / "model.safetensors"))
        (kit_ids, kit_added), (our_ids, our_added) = _token_ids(kit), _token_ids(own)
        assert our_ids.keys() == kit_ids.keys(), label
        first = json.loads(((base if label == "with_base" else m1) / "tokenizer.json")
                           .read_text())
        kept = {**first["model"]["vocab"], **{a["content"]: a["id"]
                                              for a in first["added_tokens"]}}
        assert all(our_ids[t] == i for t, i in kept.items()), label
        if label == "with_base":
            assert all(kit_ids[t] == i for t, i in kept.items())
        if label == "no_base":  # plain tokens appended depend on the tokenizer extended
            our_added, kit_added = ({c: a for c, a in d.items() if a["special"]}
                                    for d in (our_added, kit_added))
        assert our_added == {c: {**a, "id": our_ids[c]} for c, a in kit_added.items()}, label
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            assert ours[key].shape == theirs[key].shape == (len(kit_ids), 16), label
            order = sorted(kit_ids)
            torch.testing.assert_close(ours[key][[our_ids[t] for t in order]],
                                       theirs[key][[kit_ids[t] for t in order]],
                                       rtol=1e-5, atol=1e-6)
        rest = lambda sd: {k: v for k, v in sd.items() if "embed" not in k  # noqa: E731
                           and "lm_head" not in k}
        assert_same(rest(ours), rest(theirs), label)
        for folder in (own, kit):
            assert json.loads((folder / "config.json").read_text())["vocab_size"] == len(
                kit_ids), label
