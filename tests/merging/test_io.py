"""Streaming I/O: sharded inputs and outputs, atomic output folders, LoRA adapters, chunking."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import manytask.merging.engine as engine
from manytask.merging import merge, merge_state_dicts
from manytask.merging.methods.sparse import Ties


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if not index.exists():
        return load_file(str(folder / "model.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        out.update(load_file(str(folder / shard)))
    return out


def shard_input(folder: Path, sd: dict[str, torch.Tensor]) -> None:
    """Rewrite a model folder as two shards with an index (as Hugging Face does)."""
    (folder / "model.safetensors").unlink()
    names = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, keys in halves.items():
        save_file({k: sd[k] for k in keys}, str(folder / file))
        weight_map.update(dict.fromkeys(keys, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_sharded_round_trip_matches_in_memory(family, tmp_path: Path) -> None:
    base, models, base_sd, sds = family(3)
    shard_input(models[0], sds[0])
    params = [{"weight": w, "density": 0.5} for w in (1.0, 0.5, 2.0)]
    config = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [{"model": str(m), "parameters": p} for m, p in zip(models, params, strict=True)],
        "shard_size": 3000,
        "dtype": "bfloat16",
    }
    report = merge(config, tmp_path / "out")
    out = tmp_path / "out"
    assert len(report.files) > 1 and (out / "model.safetensors.index.json").exists()
    assert (out / "tokenizer.json").exists()
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    got = load_folder(out)
    want = merge_state_dicts("ties", sds, base=base_sd, model_parameters=params, dtype="bfloat16")
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == torch.bfloat16
        assert torch.equal(got[k], want[k]), k


def test_chunking_does_not_change_results(monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(1000, 80, generator=g), "v": torch.randn(50, generator=g)}
    models = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
              for _ in range(3)]
    cases: dict[str, list[dict[str, float]]] = {
        "ties": [{"density": 0.3}] * 3,
        "breadcrumbs": [{"density": 0.5, "gamma": 0.05}] * 3,
        "model_stock": [{}] * 3,
        "metagpt": [{}] * 3,
        "consensus": [{"mask_lambda": 0.4}] * 3,
        "dare_ties": [{"density": 0.4}] * 3,
    }
    whole = {m: merge_state_dicts(m, models, base=base, model_parameters=p)
             for m, p in cases.items()}
    monkeypatch.setattr(engine, "CHUNK_ELEMENTS", 8000)  # 100 rows per chunk: 10 chunks
    for cache in (engine.CACHE_ELEMENTS, 8000):  # read once and kept / re-read every pass
        monkeypatch.setattr(engine, "CACHE_ELEMENTS", cache)
        for m, p in cases.items():
            if m == "dare_ties":
                continue  # random masks are drawn per chunk, so they follow the chunk grid
            chunked = merge_state_dicts(m, models, base=base, model_parameters=p)
            for k in base:
                assert torch.allclose(chunked[k], whole[m][k], atol=1e-6), (m, k)


def test_failure_mid_merge_leaves_target_untouched(family, tmp_path: Path, monkeypatch) -> None:
    base, models, _, _ = family(2)
    config = {"merge_method": "ties", "base_model": str(base),
              "models": [{"model": str(m)} for m in models]}
    target = tmp_path / "out"
    # No previous result: nothing appears.
    calls = {"n": 0}
    original = Ties.combine

    def failing(self, chunk, state):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-merge
        return original(self, chunk, state)

    monkeypatch.setattr(Ties, "combine", failing)
    with pytest.raises(KeyboardInterrupt):
        merge(config, target)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    # A previous result stays complete and unchanged when the next merge fails.
    monkeypatch.setattr(Ties, "combine", original)
    merge(config, target)
    before = load_folder(target)
    calls["n"] = 0
    monkeypatch.setattr(Ties, "combine", failing)
    with pytest.raises(KeyboardInterrupt):
        merge({**config, "parameters": {"lambda": 3.0}}, target)
    after = load_folder(target)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # ... and a successful merge replaces it.
    monkeypatch.setattr(Ties, "combine", original)
    merge({**config, "parameters": {"lambda": 3.0}}, target)
    assert not all(torch.equal(before[k], v) for k, v in load_folder(target).items())


def test_refuses_to_replace_a_foreign_folder(family, tmp_path: Path) -> None:
    base, models, _, _ = family(1)
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files manytask did not write"):
        merge({"merge_method": "task_arithmetic", "base_model": str(base),
               "models": [str(models[0])]}, target)
    assert (target / "notes.txt").read_text() == "mine"


def write_lora(folder: Path, a: torch.Tensor, b: torch.Tensor, module: str, alpha: float):
    folder.mkdir()
    prefix = f"base_model.model.{module}"
    save_file({f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"r": a.shape[0], "lora_alpha": alpha, "peft_type": "LORA",
         "target_modules": [module.split(".")[-1]]}))


def test_lora_adapter_is_a_task_vector(family, tmp_path: Path) -> None:
    base, models, base_sd, _ = family(1)
    name = "model.layers.0.self_attn.q_proj"
    a, b = torch.randn(4, 16), torch.randn(16, 4)
    write_lora(tmp_path / "adapter", a, b, name, alpha=8.0)  # scale 8 / 4 = 2
    merge({"merge_method": "task_arithmetic", "base_model": str(base),
           "models": [{"model": str(tmp_path / "adapter")}]}, tmp_path / "out")
    out = load_folder(tmp_path / "out")
    expected = base_sd[name + ".weight"] + 2.0 * b @ a
    assert torch.allclose(out[name + ".weight"], expected, atol=1e-5)
    others = [k for k in base_sd if k != name + ".weight"]
    assert all(torch.equal(out[k], base_sd[k]) for k in others)
    # Mixed with a full fine-tuned model in TIES, through the same interface.
    merge({"merge_method": "ties", "base_model": str(base),
           "models": [{"model": str(tmp_path / "adapter")}, {"model": str(models[0])}]},
          tmp_path / "out2")


def test_lora_targeting_a_missing_tensor(family, tmp_path: Path) -> None:
    base, _, _, _ = family(1)
    write_lora(tmp_path / "adapter", torch.randn(2, 16), torch.randn(16, 2),
               "model.layers.9.self_attn.q_proj", alpha=2.0)
    with pytest.raises(ValueError, match=r"targets 'model\.layers\.9\.self_attn\.q_proj\.weight'"):
        merge({"merge_method": "task_arithmetic", "base_model": str(base),
               "models": [str(tmp_path / "adapter")]}, tmp_path / "out")


def test_import_is_light(family, tmp_path: Path) -> None:
    _, models, _, _ = family(2)
    code = (
        "import sys, manytask, manytask.merging as m\n"
        f"m.merge({{'merge_method': 'linear', 'models': [{str(models[0])!r}, "
        f"{str(models[1])!r}]}}, {str(tmp_path / 'o')!r})\n"
        "heavy = [k for k in ('transformers', 'peft', 'mergekit') if k in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
