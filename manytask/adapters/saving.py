"""Saving, loading and folding multi-task adapters.

Every method is saved in our own format: ``manytask_adapter.json`` (method, its parameters,
targets, pooling, tasks, heads) and ``manytask_adapter.safetensors`` (the adapter's and
heads' tensors); nothing is pickled. Where PEFT has the method, the folder also holds PEFT's
files, so that ``peft.PeftModel.from_pretrained(base, folder)`` gives the same outputs:
``lora`` and ``align_lora`` as one LoRA adapter (``adapter_config.json`` and
``adapter_model.safetensors`` at the top, also what ``manytask merge`` reads as a LoRA
source), ``lora_per_task`` as one LoRA adapter per task in ``peft/<task>/``, ``poly`` and
``mhr`` as PEFT's ``POLY`` adapter (call it with ``task_ids=``; PEFT's Poly adapts
``nn.Linear`` only, so a Poly on GPT-2's ``Conv1D`` is saved in our format alone, and the
JSON says ``"peft": false``). Nothing non-finite is
written or loaded; every file is written to a temporary name and renamed into place, and
a refused save writes nothing.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..tasks import Task
from .base import ADAPTERS
from .layer import AdaptedLayer, dense_weight, is_conv1d
from .model import AdapterModel

CONFIG = "manytask_adapter.json"
TENSORS = "manytask_adapter.safetensors"
PEFT_CONFIG, PEFT_TENSORS, PEFT_PREFIX = "adapter_config.json", "adapter_model.safetensors", \
    "base_model.model."
MAX_JSON = 1 << 20
FORMAT = 1


def adapter_state(model: AdapterModel) -> dict[str, Tensor]:
    """The adapter's tensors (trainable parameters and the methods' buffers) and the heads';
    the frozen base's own weights are left out."""
    return {k: v.detach() for k, v in model.state_dict().items()
            if _is_adapter_key(k) or k.startswith("heads.")}


def _is_adapter_key(name: str) -> bool:
    return ".delta." in name or name.startswith("shared.method.")


def _delta(layer: AdaptedLayer) -> Any:
    return layer.delta


def check_finite(tensors: Mapping[str, Tensor], where: str) -> None:
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FloatingPointError(f"{where}: tensor {name} holds NaN or inf; nothing written")


def _safe_name(name: str, what: str) -> str:
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or len(name) > 200:
        raise ValueError(f"{what} {name!r} cannot be a folder name")
    return name


def _write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _tensors_bytes(tensors: Mapping[str, Tensor], meta: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)


def peft_files(model: AdapterModel, task_names: Sequence[str]) -> dict[str, bytes]:
    """PEFT's files of the adapter, by path relative to the folder (none if PEFT lacks it)."""
    method = model.method
    layers = model.adapted.layers
    targets = sorted(layers)
    fan = any(is_conv1d(layer.base_layer) for layer in layers.values())
    lora_config = {"peft_type": "LORA", "r": getattr(method, "r", 8),
                   "lora_alpha": getattr(method, "alpha", 8), "target_modules": targets,
                   "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": fan,
                   "use_rslora": False, "init_lora_weights": True, "inference_mode": True,
                   "task_type": None, "base_model_name_or_path": None}
    out: dict[str, bytes] = {}
    if method.name in ("lora", "align_lora"):
        tensors = {}
        for name, layer in layers.items():
            tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = _delta(layer).lora_A
            tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = _delta(layer).lora_B
        out[PEFT_CONFIG] = json.dumps(lora_config, indent=2).encode()
        out[PEFT_TENSORS] = _tensors_bytes(tensors, {"format": "pt"})
    elif method.name == "lora_per_task":
        for k, task in enumerate(task_names):
            tensors = {}
            for name, layer in layers.items():
                a, b = _delta(layer).factors(k)
                tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a
                tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b
            folder = f"peft/{_safe_name(task, 'task name')}/"
            out[folder + PEFT_CONFIG] = json.dumps(lora_config, indent=2).encode()
            out[folder + PEFT_TENSORS] = _tensors_bytes(tensors, {"format": "pt"})
    elif method.name in ("poly", "mhr") and not fan:  # PEFT's poly takes nn.Linear only
        config = {"peft_type": "POLY", "r": method.r, "target_modules": targets,
                  "n_tasks": method.n_tasks, "n_skills": method.n_skills,
                  "n_splits": method.n_splits, "poly_type": "poly", "init_weights": True,
                  "task_type": None, "inference_mode": True, "base_model_name_or_path": None}
        tensors = {}
        for name, layer in layers.items():
            tensors[f"{PEFT_PREFIX}{name}.poly_lora_A"] = _delta(layer).poly_lora_A
            tensors[f"{PEFT_PREFIX}{name}.poly_lora_B"] = _delta(layer).poly_lora_B
            tensors[f"{PEFT_PREFIX}{name}.poly_router.module_logits"] = _delta(layer).task_logits
        out[PEFT_CONFIG] = json.dumps(config, indent=2).encode()
        out[PEFT_TENSORS] = _tensors_bytes(tensors, {"format": "pt"})
    return out


def save_adapter(model: AdapterModel, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model``'s adapter and heads to ``folder`` (see the module docstring)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not overwrite)):
        raise FileExistsError(f"save_adapter: {folder} exists and is not an empty folder "
                              "(pass overwrite=True to replace its adapter files)")
    tasks = list(model.task_index)
    state = adapter_state(model)
    check_finite(state, f"save_adapter({folder})")
    first: Any = next(iter(model.heads.values()))
    heads_hidden = [m.out_features for m in first if isinstance(m, nn.Linear)][:-1]
    config = {"format": FORMAT, "method": model.method.name, "params": model.method.config(),
        "target_modules": model.adapted.target_modules, "pooling": model.adapted.pooling,
        "tasks": [{"name": t, "out_features": _out_features(model.heads[t])}
                        for t in tasks],
        "head_hidden": heads_hidden}
    peft = peft_files(model, tasks)
    config["peft"] = bool(peft)
    files = {CONFIG: json.dumps(config, indent=2).encode(),
             TENSORS: _tensors_bytes(state, {"format": "pt"}), **peft}
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, data)
    return folder


def _out_features(head: Any) -> int:
    return int(list(head)[-1].out_features)


def _read_json(path: Path) -> Any:
    if path.is_symlink() or not path.is_file():
        raise ValueError(f"{path} must be a regular file (not a link or a folder)")
    if path.stat().st_size > MAX_JSON:
        raise ValueError(f"{path} is larger than {MAX_JSON} bytes")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def load_adapter(folder: str | Path, base: nn.Module, tasks: Sequence[Task]) -> AdapterModel:
    """The :class:`AdapterModel` saved in ``folder``, rebuilt on ``base`` (a fresh copy of
    the frozen model it was trained on) for ``tasks`` (the same names, in the same order)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = _read_json(folder / CONFIG)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG}: not a manytask adapter (format {FORMAT})")
    saved = [t.get("name") for t in config.get("tasks", []) if isinstance(t, dict)]
    if saved != [t.name for t in tasks]:
        raise ValueError(f"{folder}: saved for tasks {saved}, got {[t.name for t in tasks]}")
    method = ADAPTERS.build(config["method"], len(tasks), **dict(config.get("params") or {}))
    model = AdapterModel(base, tasks, method, target_modules=config.get("target_modules"),
                         pooling=config.get("pooling", "mean"),
                         head_hidden=tuple(config.get("head_hidden") or ()))
    path = folder / TENSORS
    if path.is_symlink() or not path.is_file():
        raise ValueError(f"{path} must be a regular file")
    state = load_file(str(path))
    check_finite(state, f"load_adapter({folder})")
    expected = adapter_state(model)
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"{path}: tensors do not match the adapter (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise ValueError(f"{path}: {name} has shape {tuple(value.shape)}, expected "
                             f"{tuple(expected[name].shape)}")
    model.load_state_dict(state, strict=False)
    return model


def fold(model: AdapterModel, task: str) -> nn.Module:
    """A copy of the base model with ``task``'s adapter added into its weights and the
    adapter layers removed (PEFT's ``merge_and_unload``); the adapter model is unchanged.
    Raises ``TypeError`` for methods whose increment is not a fixed weight change."""
    if task not in model.task_index:
        raise ValueError(f"fold: no task {task!r}; tasks are {list(model.task_index)}")
    k = model.task_index[task]
    adapted = model.adapted
    if not adapted.method.uses_layers:
        raise TypeError(f"{adapted.method.name} cannot be folded into the base weights: a soft "
                        "prompt adds input positions, not a weight change")
    was_training = adapted.training
    adapted.eval()
    try:
        with torch.no_grad():
            changes = {n: adapted.method.fold(layer, k) for n, layer in adapted.layers.items()}
    finally:
        adapted.train(was_training)
    base = copy.deepcopy(adapted.base)
    for name, change in changes.items():
        layer = base.get_submodule(name)
        assert isinstance(layer, AdaptedLayer)
        inner: Any = layer.base_layer
        with torch.no_grad():
            dense_weight(inner).add_(change.to(inner.weight.dtype))
        parent, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent) if parent else base, child, inner)
    return base
