"""The merge configuration: a YAML format close to mergekit's, validated strictly.

.. code-block:: yaml

    merge_method: ties
    base_model: path/to/base              # a folder, a .safetensors file, or {model: path}
    models:
      - model: path/to/finetuned_a        # a folder, a file, or a PEFT LoRA adapter folder
        parameters: {weight: 1.0, density: 0.2}
      - model: path/to/finetuned_b
        parameters: {weight: 0.5, density: 0.2}
    parameters: {lambda: 1.0}             # the method's global parameters
    dtype: bfloat16                       # output dtype; default: each tensor's input dtype
    # manytask options (all optional):
    embed_mismatch: error                 # or "base": cut/pad vocabulary rows to the base's
    dtype_mismatch: error                 # or "cast": inputs of different float dtypes
    allow_pickle: false                   # load PyTorch .bin/.pt with torch.load(weights_only)
    shard_size: 5GB                       # largest output shard
    copy_files: true                      # copy config/tokenizer files from the base

mergekit's configuration language is accepted as mergekit 0.1.5 reads it (see
:mod:`~manytask.merging.settings` and :mod:`~manytask.merging.slices`): per-layer gradients
(``t: [0, 0.5, 1]``) and ``{filter, value}`` lists for any parameter, per-model parameters
given once in ``parameters``, ``slices`` instead of ``models``, ``out_dtype`` (then ``dtype``
only names mergekit's compute dtype: manytask computes in float32, or float64 for float64
inputs, and rounds once), ``tokenizer_source`` and ``random_seed`` (the ``seed`` of random
methods). ``convention: mergekit`` (or ``manytask merge --like mergekit``) gives every method
mergekit's meaning; without it, each parameter whose meaning differs is reported in one line.

Relative paths are resolved against the current directory (as mergekit does). Every unknown
key, wrong type or out-of-range value raises an error naming it.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..files import load_yaml
from ..registry import short
from .methods import MergeMethod, get_method
from .settings import check_settings, resolve_settings
from .slices import SliceDef, parse_slices

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64"}
TOP_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "embed_mismatch",
    "dtype_mismatch",
    "allow_pickle",
    "shard_size",
    "copy_files",
    "slices",
    "out_dtype",
    "tokenizer_source",
    "random_seed",
    "convention",
)
MODEL_KEYS = ("model", "parameters")
# mergekit keys manytask does not read, with what to write instead.
_UNSUPPORTED = {
    "modules": "list the layers with 'slices' (one module) instead",
    "tokenizer": "use tokenizer_source: base, union or a model path",
    "chat_template": "copy the chat template into the output's tokenizer_config.json",
}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def _unknown(keys: Any, allowed: tuple[str, ...], where: str) -> None:
    extra = [k for k in keys if k not in allowed]
    if extra:
        hints = []
        for k in extra:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hints.append(short(k) + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{where}: unknown key(s) {', '.join(hints)}; allowed: {list(allowed)}")


def parse_size(value: Any, where: str) -> int:
    """Bytes from an int or a string like ``"5GB"`` / ``"500MiB"``."""
    if isinstance(value, bool):
        raise TypeError(f"{where} must be a size, got {short(value)}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", value.upper())
        if m is None:
            raise ValueError(f"{where} must look like 5GB or 500MiB, got {short(value)}")
        size = int(float(m.group(1)) * _UNITS[m.group(2) or ""])
    else:
        raise TypeError(f"{where} must be a size, got {short(value)}")
    if size <= 0:
        raise ValueError(f"{where} must be positive, got {value!r}")
    return size


def parse_dtype(value: Any, where: str) -> torch.dtype:
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a dtype name, got {short(value)}")
    name = _DTYPE_ALIASES.get(value, value)
    if name not in DTYPES:
        raise ValueError(f"{where} must be one of {list(DTYPES)}, got {short(value)}")
    return DTYPES[name]


@dataclass
class ModelEntry:
    """One input model and its per-model parameters."""

    model: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class MergeConfig:
    """A validated merge configuration (see the module docstring for the YAML form)."""

    merge_method: str
    models: list[ModelEntry]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    embed_mismatch: str = "error"
    dtype_mismatch: str = "error"
    allow_pickle: bool = False
    shard_size: int = 5 * 10**9
    copy_files: bool = True
    slices: list[SliceDef] | None = None
    out_dtype_name: str | None = None
    tokenizer_source: str | None = None
    random_seed: int | None = None
    convention: str | None = None

    def __post_init__(self) -> None:
        cls = get_method(self.merge_method)
        for key in ("dtype", "out_dtype_name"):
            if getattr(self, key) is not None:
                parse_dtype(getattr(self, key), key.removesuffix("_name"))
        if self.convention not in (None, "paper", "mergekit"):
            raise ValueError(f"convention must be 'paper' or 'mergekit', got {self.convention!r}")
        if self.random_seed is not None and (isinstance(self.random_seed, bool) or
                                             not isinstance(self.random_seed, int) or
                                             self.random_seed < 0):
            raise ValueError(f"random_seed must be a non-negative integer, got "
                             f"{self.random_seed!r}")
        if self.tokenizer_source is not None and not isinstance(self.tokenizer_source, str):
            raise TypeError(f"tokenizer_source must be 'base', 'union' or a model path, got "
                            f"{self.tokenizer_source!r}")
        if self.base_model is not None and cls.base in ("required", "optional"):
            # mergekit lists the base among the models (SLERP does): it is the base, not a
            # task model, there.
            # (Kept when every model is the base: zero task vectors merge to the base.)
            rest = [m for m in self.models if not _same(m.model, self.base_model)]
            self.models = rest or self.models
        if (self.convention == "mergekit" and cls.base == "reference" and self.base_model
                and cls.name == "karcher"
                and not any(_same(m.model, self.base_model) for m in self.models)):
            self.models.append(ModelEntry(self.base_model))  # mergekit averages it too
        for key, choices in (("embed_mismatch", ("error", "base")),
                             ("dtype_mismatch", ("error", "cast"))):
            value = getattr(self, key)
            if value not in choices:
                raise ValueError(f"{key} must be one of {list(choices)}, got {short(value)}")
        for key in ("allow_pickle", "copy_files"):
            if not isinstance(getattr(self, key), bool):
                raise TypeError(f"{key} must be true or false, got {short(getattr(self, key))}")
        self.build_method()  # validates every method parameter now, before any I/O

    @property
    def out_dtype(self) -> torch.dtype | None:
        name = self.out_dtype_name or self.dtype
        return None if name is None else parse_dtype(name, "dtype")

    def global_settings(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The global parameters with the top-level convention and seed filled in."""
        cls = get_method(self.merge_method)
        out = {**self.parameters, **(extra or {})}
        if self.convention is not None and "convention" in cls.global_params:
            out.setdefault("convention", self.convention)
        if self.random_seed is not None and "seed" in cls.global_params:
            out.setdefault("seed", self.random_seed)
        return out

    def method_for(self, name: str | None, x: float, model_settings: list[dict[str, Any]],
                   extra: dict[str, Any] | None = None) -> MergeMethod:
        """The method with its parameters as they resolve for tensor ``name`` at layer
        position ``x`` (``name=None``: a representative value, for validation)."""
        cls = get_method(self.merge_method)
        where = f"merge ({self.merge_method})"
        settings = self.global_settings(extra)
        check_settings(cls.global_params, cls.model_params, settings, model_settings, where)
        g, per_model = resolve_settings(cls.global_params, cls.model_params, settings,
                                        model_settings, name, x)
        if name is not None:
            where += f": tensor {name!r}"
        return cls(g, per_model, where=where)

    def build_method(self) -> MergeMethod:
        cls = get_method(self.merge_method)
        if cls.base == "required" and self.base_model is None:
            raise ValueError(f"merge method {short(self.merge_method)} needs a base_model")
        if self.slices is None:
            return self.method_for(None, 0.0, [m.parameters for m in self.models])
        method = None
        for s in self.slices:
            sources = [x for x in s.sources if not _same(x.model, self.base_model)]
            method = self.method_for(None, 0.0, [x.parameters for x in sources], s.parameters)
        assert method is not None
        return method

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MergeConfig:
        if not isinstance(data, Mapping):
            raise TypeError(f"merge config must be a mapping, got {type(data).__name__}")
        for key, hint in _UNSUPPORTED.items():
            if key in data:
                raise ValueError(f"merge config: {key!r} (mergekit) is not supported; {hint}")
        _unknown(data, TOP_KEYS, "merge config")
        if "merge_method" not in data:
            raise ValueError("merge config: 'merge_method' is required")
        method = data["merge_method"]
        if not isinstance(method, str):
            raise TypeError(f"merge config: merge_method must be a string, got {short(method)}")
        raw_models = data.get("models")
        slices = None
        if ("slices" in data) == ("models" in data):
            raise ValueError("merge config: give either 'models' or 'slices' (exactly one)")
        if "slices" in data:
            slices = parse_slices(data["slices"])
            models = [ModelEntry(x.model, x.parameters) for x in slices[0].sources]
        elif not isinstance(raw_models, list) or not raw_models:
            raise ValueError("merge config: 'models' must be a non-empty list")
        else:
            models = [_model_entry(m, f"models[{i}]") for i, m in enumerate(raw_models)]
        base = data.get("base_model")
        if base is not None:
            base_entry = _model_entry(base, "base_model")
            if base_entry.parameters:
                raise ValueError("base_model: takes no parameters")
            base = base_entry.model
        params = data.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise TypeError(f"parameters must be a mapping, got {short(params)}")
        kwargs: dict[str, Any] = {k: data[k] for k in
                                  ("dtype", "embed_mismatch", "dtype_mismatch", "allow_pickle",
                                   "copy_files") if k in data}
        if "shard_size" in data:
            kwargs["shard_size"] = parse_size(data["shard_size"], "shard_size")
        for key in ("tokenizer_source", "random_seed", "convention"):
            if key in data:
                kwargs[key] = data[key]
        if "out_dtype" in data:
            kwargs["out_dtype_name"] = data["out_dtype"]
        if isinstance(kwargs.get("tokenizer_source"), Mapping):  # {model: path}
            kwargs["tokenizer_source"] = _model_entry(kwargs["tokenizer_source"],
                                                      "tokenizer_source").model
        return cls(method, models, base, dict(params), slices=slices, **kwargs)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> MergeConfig:
        return cls.from_dict(cls.read_yaml(path))

    @staticmethod
    def read_yaml(path: str | os.PathLike[str]) -> Any:
        """The YAML file's contents, bounded (a regular file, no alias bomb, no deep nesting),
        or a one-line ``ValueError``."""
        return load_yaml(path, what="merge config")


def _model_entry(value: Any, where: str) -> ModelEntry:
    if isinstance(value, str | os.PathLike):
        return ModelEntry(os.fspath(value))
    if not isinstance(value, Mapping):
        raise TypeError(f"{where}: expected a path or {{model: path, parameters: ...}}")
    _unknown(value, MODEL_KEYS, where)
    if "model" not in value:
        raise ValueError(f"{where}: 'model' (its path) is required")
    model = value["model"]
    if not isinstance(model, str | os.PathLike):
        raise TypeError(f"{where}: model must be a path, got {short(model)}")
    params = value.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise TypeError(f"{where}: parameters must be a mapping, got {short(params)}")
    return ModelEntry(os.fspath(model), dict(params))


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)
