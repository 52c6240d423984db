"""Configurations with unknown keys, wrong types and out-of-range values, fuzzed.

Property tested (hypothesis, bounded ``max_examples``): whatever mapping is given, building a
training config, a merge config or a balancer either succeeds with values that satisfy their
documented ranges, or raises ``ConfigError``/``ValueError``/``TypeError`` naming the key -
never another exception type, and never a config holding NaN, inf or a non-positive size.
Fixed cases check the same through the command line: exit code 2, one line, no traceback,
and no run folder or merge output created.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
from hos_helpers import (
    assert_clear,
    assert_cli_one_line,
    family,
    merge_config,
    raises_clear,
    run_cli,
    write_yaml,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manytask.balancers import make_balancer, registry
from manytask.config import ConfigError, TrainConfig, config_from_mapping, load_config
from manytask.merging.config import TOP_KEYS, MergeConfig
from manytask.merging.methods import available_methods, get_method

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples on every run, so CI is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Values a YAML file can hold, leaning to the troublesome ones.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-320]),
    st.text(max_size=12),
    st.sampled_from(["exact", "feature", "csv", "own", "nonsense", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
TRAIN_KEYS = [f.name for f in dataclasses.fields(TrainConfig)]
# YAML keys may be numbers, booleans or null as well as strings.
keys = st.text(min_size=1, max_size=10) | st.integers(-3, 3) | st.booleans() | st.none()
train_mappings = st.dictionaries(st.sampled_from(TRAIN_KEYS) | keys, values, max_size=5)


def _check_valid_train(cfg: TrainConfig) -> None:
    """The invariants a config that was accepted must satisfy."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float):
            assert math.isfinite(v), f.name
    assert cfg.epochs >= 0 and cfg.batch_size >= 1 and cfg.train_size >= 1
    assert cfg.lr > 0 and 0 <= cfg.missing_rate < 1
    hidden = cfg.hidden  # None: the architecture's own widths
    assert hidden is None or (hidden and all(isinstance(h, int) and h >= 1 for h in hidden))
    assert cfg.mode in ("exact", "feature") and cfg.head_grad in ("own", "weighted")


@FUZZ
@given(train_mappings)
def test_fuzzed_train_config(mapping: dict[str, Any]) -> None:
    try:
        cfg = config_from_mapping(mapping)
    except ConfigError as err:
        assert_clear(err)
        unknown = [k for k in mapping if k not in TRAIN_KEYS]
        if unknown:
            assert "unknown key" in str(err) and all(repr(k) in str(err) for k in unknown)
        return
    _check_valid_train(cfg)


@FUZZ
@given(
    st.sampled_from(
        [
            "epochs",
            "batch_size",
            "lr",
            "missing_rate",
            "hidden",
            "mode",
            "log_every",
            "task_temperature",
            "tasks_per_batch",
            "seed",
            "progress",
        ]
    ),
    values,
)
def test_fuzzed_single_train_value_names_its_key(key: str, value: Any) -> None:
    try:
        cfg = config_from_mapping({key: value})
    except ConfigError as err:
        assert_clear(err, key)
        return
    _check_valid_train(cfg)


@pytest.mark.parametrize(
    "text",
    ["- a\n- b\n", "just a string\n", "lr: [1, 2\n", "{epochs: 1}: 2\n", "\x00\x01"],
    ids=["a list", "a scalar", "unclosed", "mapping as key", "binary"],
)
def test_train_yaml_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    raises_clear(lambda: load_config(path), str(path), kinds=ConfigError)


# ---------------------------------------------------------------------------- merge configs
METHODS = available_methods()


@st.composite
def merge_mappings(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed merge configs with one or more fuzzed parts."""
    method = draw(st.sampled_from([*METHODS, "nope", ""]) | values)
    cls = get_method(method) if isinstance(method, str) and method in METHODS else None
    g_names = (sorted(cls.global_params) if cls else []) or ["lambda"]
    m_names = (sorted(cls.model_params) if cls else []) or ["weight"]
    model_params = st.dictionaries(st.sampled_from(m_names) | keys, values, max_size=3)
    model = st.one_of(
        st.just("some/model"),
        st.fixed_dictionaries({"model": st.just("m"), "parameters": model_params}),
        values,
    )
    data: dict[str, Any] = {
        "merge_method": method,
        "models": draw(st.lists(model, min_size=0, max_size=3) | values),
        "base_model": draw(st.just("base") | values),
        "parameters": draw(
            st.dictionaries(st.sampled_from(g_names) | keys, values, max_size=3) | values
        ),
    }
    extra = draw(st.dictionaries(st.sampled_from(TOP_KEYS) | keys, values, max_size=3))
    data.update(extra)
    return data


@FUZZ
@given(merge_mappings())
def test_fuzzed_merge_config(mapping: dict[str, Any]) -> None:
    try:
        cfg = MergeConfig.from_dict(mapping)
    except (ValueError, TypeError) as err:
        assert_clear(err)
        unknown = [k for k in mapping if k not in TOP_KEYS]
        if unknown:
            assert repr(unknown[0]) in str(err)
        return
    assert cfg.models and cfg.shard_size > 0
    assert isinstance(cfg.allow_pickle, bool) and isinstance(cfg.copy_files, bool)


@FUZZ
@given(
    st.sampled_from(registry.available()),
    st.dictionaries(
        st.sampled_from(
            [
                "c",
                "alpha",
                "T",
                "lr",
                "beta",
                "eps",
                "weights",
                "rescale",
                "every",
                "max_norm",
                "gamma",
                "mu",
            ]
        )
        | st.text(min_size=1, max_size=6),
        values,
        max_size=2,
    ),
)
def test_fuzzed_balancer_params(name: str, params: dict[str, Any]) -> None:
    try:
        make_balancer(name, **params)
    except (ValueError, TypeError) as err:
        assert_clear(err)


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("shard_size", "5 parsecs", "shard_size"),
        ("shard_size", 0, "shard_size"),
        ("dtype", "float8", "dtype"),
        ("allow_pickle", "yes", "allow_pickle"),
        ("embed_mismatch", "ignore", "embed_mismatch"),
        ("merge_methd", "ties", "merge_method"),
    ],
)
def test_bad_merge_key_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: Any, needle: str
) -> None:
    base, models = family(tmp_path)
    config = write_yaml(tmp_path / "merge.yaml", merge_config(base, models, **{key: value}))
    code, err = run_cli(["merge", str(config), str(tmp_path / "out"), "--quiet"], capsys)
    assert_cli_one_line(code, err, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("what", ["missing", "a folder", "not UTF-8"])
def test_unreadable_merge_config_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    path = tmp_path / "merge.yaml"
    if what == "a folder":
        path.mkdir()
    elif what == "not UTF-8":
        path.write_bytes(b"merge_method: \xff\xfe\n")
    code, err = run_cli(["merge", str(path), str(tmp_path / "out"), "--quiet"], capsys)
    assert_cli_one_line(code, err, "merge.yaml")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        ("epochz: 3\n", "epochz"),
        ("lr: .nan\n", "lr"),
        ("lr: -1\n", "lr"),
        ("batch_size: 0\n", "batch_size"),
        ("hidden: [64, -1]\n", "hidden"),
        ("mode: sideways\n", "mode"),
        ("epochs: three\n", "epochs"),
        ("task_temperature: .inf\n", "task_temperature"),
        ("missing_rate: 1.0\n", "missing_rate"),
        ("balancer: nosuch\nepochs: 0\n", "nosuch"),
        ("balancer: cagrad\nbalancer_params: {c: -3}\nepochs: 0\n", "c must be"),
        ("balancer: cagrad\nbalancer_params: {cc: 1}\nepochs: 0\n", "cc"),
    ],
)
def test_bad_train_config_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: str, needle: str
) -> None:
    config = tmp_path / "train.yaml"
    run_dir = tmp_path / "run"
    config.write_text(lines + f"run_dir: {run_dir}\ntrain_size: 64\nprogress: false\n")
    code, err = run_cli(["train", "--config", str(config)], capsys)
    assert_cli_one_line(code, err, needle)
    assert not (run_dir / "checkpoints").exists()
