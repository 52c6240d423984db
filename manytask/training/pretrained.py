"""A trained multi-task model saved for inference, loadable without its run folder.

``save_pretrained(model, folder, tasks=..., build=...)`` writes two files, never a pickle:

* ``model.safetensors``: the model's state dict (plain tensors; ``manytask merge`` reads it as
  a checkpoint like any other);
* ``manytask.json``: the format version, the tasks (name, kind, output width), how to build
  the architecture (``build``: ``arch``, ``arch_params``, ``hidden``, ``in_features``, and
  ``input`` for a tabular input layer) and ``preprocessing`` (what the inputs must be: the
  data set and its encoding, for information and for ``manytask predict``).

``from_pretrained(folder)`` rebuilds the architecture from ``manytask.json``, checks that
the weights match it name for name and shape for shape, and loads them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..models import MultiTaskModel, make_model
from ..tasks import Task
from .checkpoint import CheckpointError, load_model_weights

FORMAT = 1
META = "manytask.json"
WEIGHTS = "model.safetensors"


def task_record(task: Task) -> dict[str, Any]:
    return {"name": task.name, "kind": task.kind, "out_features": task.out_features}


def task_from_record(record: Mapping[str, Any]) -> Task:
    kind, name, width = record.get("kind"), record.get("name"), record.get("out_features")
    if not isinstance(name, str) or not isinstance(width, int):
        raise CheckpointError(f"{META}: a task needs a name and an integer out_features")
    if kind == "classification":
        return Task.classification(name, width)
    if kind == "binary":
        return Task.binary(name)
    if kind == "regression":
        return Task.regression(name, width)
    raise CheckpointError(f"{META}: task {name!r} has unknown kind {kind!r}")


def build_model(build: Mapping[str, Any], tasks: Sequence[Task]) -> MultiTaskModel:
    """The untrained architecture that ``build`` (from ``manytask.json``) describes."""
    arch = build.get("arch", "hard_sharing")
    params = dict(build.get("arch_params") or {})
    if build.get("hidden"):  # a top-level "hidden" (the trunk widths) also names them
        params.setdefault("hidden", list(build["hidden"]))
    inp = build.get("input")
    input_layer = None
    if inp is not None:
        if inp.get("kind") != "tabular":
            raise CheckpointError(f"{META}: unknown input layer {inp.get('kind')!r}")
        from ..models.inputs import TabularInput

        input_layer = TabularInput(inp["cardinalities"], inp["n_dense"],
                                   embedding_dim=inp["embedding_dim"])
    try:
        if input_layer is None:
            return make_model(arch, tasks, in_features=int(build["in_features"]), **params)
        return make_model(arch, tasks, input_layer=input_layer, **params)
    except (TypeError, KeyError, ValueError) as err:
        raise CheckpointError(f"{META}: cannot build architecture {arch!r}: {err}") from None


def save_pretrained(
    model: MultiTaskModel,
    folder: str | Path,
    *,
    tasks: Sequence[Task],
    build: Mapping[str, Any],
    preprocessing: Mapping[str, Any] | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` to ``folder`` (replaced whole: written beside it, then renamed).
    ``state``: the model's whole state dict where ``model.state_dict()`` holds shards (a
    Trainer with ``shard="fsdp"``: :meth:`~manytask.training.sharding.WholeState.model_state`)."""
    folder = Path(folder)
    source = model.state_dict() if state is None else state
    state = {k: v.detach().cpu().clone().contiguous() for k, v in source.items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise ValueError(f"save_pretrained: non-finite values in {bad[:3]}; nothing written")
    meta = {
        "format": FORMAT,
        "tasks": [task_record(t) for t in tasks],
        "build": dict(build),
        "preprocessing": dict(preprocessing or {}),
    }
    text = json.dumps(meta, indent=1)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".tmp-{folder.name}-"))
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / META).write_text(text)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if folder.exists():
            old = folder.with_name(f".tmp-old-{folder.name}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META
    try:
        if path.stat().st_size > 1 << 20:
            raise CheckpointError(f"{path} is larger than 1 MiB: not a manytask.json")
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a manytask model of format {FORMAT}")
    if not isinstance(meta.get("tasks"), list) or not isinstance(meta.get("build"), dict):
        raise CheckpointError(f"{path}: tasks or build missing")
    return meta


def from_pretrained(folder: str | Path) -> tuple[MultiTaskModel, list[Task]]:
    """Rebuild the model saved in ``folder`` and load its weights; returns it (in eval
    mode) and its tasks."""
    meta = read_meta(folder)
    tasks = [task_from_record(r) for r in meta["tasks"]]
    model = build_model(meta["build"], tasks)
    if not (Path(folder) / WEIGHTS).is_file():
        raise CheckpointError(f"{folder}: {WEIGHTS} is missing")
    load_model_weights(Path(folder), model)
    return model.eval(), tasks


def weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The raw tensors of a saved model (for merging)."""
    try:
        return load_file(str(Path(folder) / WEIGHTS))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"cannot read {folder}/{WEIGHTS}: {err}") from None
