"""Class 3: YAML and JSON that explode (issue 16).

An alias bomb (aliases of aliases: 9^9 values from 80 aliases, 2^60 from 60), too many
aliases, deep nesting, a self-referring alias, deeply nested JSON in a checkpoint's state,
a shard index or an adapter config: each is refused in bounded time with one short line; a
huge value is never printed whole (cut, with its length said).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hos_helpers import (
    assert_cli_one_line,
    family,
    merge_config,
    raises_clear,
    run_cli,
    write_adapter,
)

from manytask.config import ConfigError, load_config
from manytask.files import MAX_ALIASES, UnsafeFileError, parse_json, parse_yaml
from manytask.merging import merge
from manytask.merging.config import MergeConfig
from manytask.merging.sources import open_source


def _laughs(width: int, levels: int) -> str:
    """Each level a list of ``width`` aliases of the level before: width^levels values."""
    text = "l0: &l0 [" + ", ".join(['"lol"'] * width) + "]\n"
    for i in range(1, levels + 1):
        text += f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]\n"
    return text


BOMBS = {
    "9^9 laughs": _laughs(9, 8),
    "2^60 doubling": _laughs(2, 60),
    "too many aliases": "a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n",
    "alias of itself": "a: &a [1, *a]\n",
    "deep flow nesting": "a: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep block nesting": "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "1\n",
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_merge_config_bomb(tmp_path: Path, capsys: pytest.CaptureFixture[str], bomb: str) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("merge_method: linear\n" + BOMBS[bomb])
    began = time.perf_counter()
    code, err = run_cli(["merge", "--quiet", str(path), str(tmp_path / "out")], capsys)
    assert time.perf_counter() - began < 10
    assert_cli_one_line(code, err, str(path))
    assert len(err) < 600, f"{len(err)} characters on stderr"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_train_config_bomb(tmp_path: Path, bomb: str) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 1\n" + BOMBS[bomb])
    began = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.perf_counter() - began < 10
    assert str(path) in str(info.value) and len(str(info.value)) < 600


@pytest.mark.parametrize("bomb", ["9^9 laughs", "deep flow nesting"])
def test_train_cli_bomb(tmp_path: Path, capsys: pytest.CaptureFixture[str], bomb: str) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(BOMBS[bomb])
    code, err = run_cli(["train", "--config", str(path)], capsys)
    assert_cli_one_line(code, err, str(path))
    assert code == 2 and len(err) < 600


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    base, models = family(tmp_path)
    text = (
        f"merge_method: task_arithmetic\nbase_model: {base}\n"
        "models:\n"
        + "".join(
            f"  - model: {m}\n    parameters: {'&p {weight: 0.5}' if i == 0 else '*p'}\n"
            for i, m in enumerate(models)
        )
    )
    path = tmp_path / "merge.yaml"
    path.write_text(text)
    cfg = MergeConfig.from_yaml(path)
    assert [m.parameters for m in cfg.models] == [{"weight": 0.5}] * 2


@pytest.mark.parametrize("key", ["merge_method", "dtype", "embed_mismatch", "unknown_key"])
def test_huge_value_is_cut_in_the_message(tmp_path: Path, key: str) -> None:
    base, models = family(tmp_path)
    config = merge_config(base, models)
    huge = "x" * 1_000_000
    if key == "unknown_key":
        config[huge] = 1
    else:
        config[key] = huge
    with pytest.raises((ValueError, TypeError)) as info:
        merge(config, tmp_path / "out")
    message = str(info.value)
    assert len(message) < 2000 and "characters)" in message, message[:300]


def _deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deep_json_refused(depth: int) -> None:
    with pytest.raises(UnsafeFileError, match="nested deeper"):
        parse_json(_deep_json(depth))


@pytest.mark.parametrize("text", ['{"a": "[[[[[[[[["}', '["]]]]\\"[[["]', '{"a": [[[1]]]}'])
def test_brackets_in_strings_do_not_count(text: str) -> None:
    assert parse_json(text) == json.loads(text)


def test_yaml_under_the_bounds_parses_as_safe_load() -> None:
    import yaml

    text = _laughs(3, 3) + "d: " + "[" * 30 + "]" * 30 + "\n"
    assert parse_yaml(text) == yaml.safe_load(text)


@pytest.mark.parametrize("where", ["shard index", "adapter config", "checkpoint state"])
def test_deep_json_in_files(tmp_path: Path, where: str) -> None:
    deep = '{"weight_map": ' + _deep_json(10_000) + "}"
    if where == "shard index":
        base, _ = family(tmp_path, 0)
        (base / "model.safetensors.index.json").write_text(deep)
        raises_clear(lambda: open_source(base), "nested deeper", kinds=UnsafeFileError)
    elif where == "adapter config":
        base, _ = family(tmp_path, 0)
        adapter = write_adapter(tmp_path / "adapter")
        (adapter / "adapter_config.json").write_text(deep)
        raises_clear(lambda: merge(merge_config(base, [adapter]), tmp_path / "out"),
                     "nested deeper", kinds=UnsafeFileError)
    else:
        import torch
        from torch import nn

        from manytask.training.checkpoint import (
            CheckpointError,
            load_checkpoint,
            save_checkpoint,
        )

        model = nn.Linear(2, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        folder = save_checkpoint(tmp_path / "run", 0, model=model, optimizer=opt,
                                 balancer=nn.Module(), info={})
        (folder / "state.json").write_text(deep)
        raises_clear(lambda: load_checkpoint(folder, model=model, optimizer=opt,
                                             balancer=nn.Module()),
                     "nested deeper", kinds=CheckpointError)
