"""``manytask predict`` and ``manytask evaluate``: a trained run applied to a new file.

The run folder holds what the data went through in training (``preprocessing.json``: the
scaling, vocabularies, label classes and text settings fitted on its training split), the
configuration and the checkpoints. A new file is read with the same columns and converted
the same way; a row with an unusable value (a number column holding text, a class never seen
in training) is reported as ``file: row R, column 'C': why`` and left out (its predictions
are empty; evaluate does not count it), never a crash.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .config import ConfigError, config_from_mapping
from .data.declared import DataError, Preprocessor, Problem, SplitRows, TextColumns, read_file
from .data.declared.build import inputs
from .data.declared.spec import format_of
from .metrics import TaskEvaluator
from .models import MultiTaskModel
from .run import PREPROCESSING, Prepared, build_model
from .tasks import Task


@dataclass
class LoadedRun:
    """A run folder's preprocessing, tasks and model (weights of its latest checkpoint)."""

    preprocessor: Preprocessor
    tasks: list[Task]
    model: MultiTaskModel
    text: TextColumns | None


def load_run(run_dir: str | Path) -> LoadedRun:
    import yaml
    from safetensors.torch import load_file

    from .models.inputs import TabularInput
    from .training.checkpoint import latest_checkpoint

    root = Path(run_dir)
    for name in ("config.yaml", PREPROCESSING):
        if not (root / name).is_file():
            raise DataError(f"{root}: no {name}; is this the run folder of a data: files run?")
    try:
        values = yaml.safe_load((root / "config.yaml").read_text())
        cfg = config_from_mapping(values, source=str(root / "config.yaml"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{root / 'config.yaml'} is not valid YAML: {err}") from None
    pre = Preprocessor.from_json((root / PREPROCESSING).read_text(), str(root / PREPROCESSING))
    tasks = pre.tasks()
    text = TextColumns.from_state(pre.text, cfg.cache_dir) if pre.text else None
    n_dense = len(pre.features.numeric) + (_text_width(pre.text) if text else 0)
    cards = pre.features.cardinalities

    def input_layer() -> torch.nn.Module:
        return TabularInput(cards, n_dense, embedding_dim=8)

    model = build_model(cfg, Prepared(tasks, None, None, None, 0, input_layer))
    ckpt = latest_checkpoint(root)
    if ckpt is None:
        raise DataError(f"{root}: no checkpoint (checkpoints/latest); did the run finish an "
                        "epoch?")
    state = load_file(ckpt / "model.safetensors")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise DataError(f"{ckpt}: tensor {bad[0]!r} holds non-finite values")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise DataError(f"{ckpt}: does not match the run's model: "
                        f"{str(err).splitlines()[0]}") from None
    return LoadedRun(pre, tasks, model.eval(), text)


def _text_width(state: dict[str, Any]) -> int:
    pair = len(state["columns"]) == 2 and state["pair_encoding"] == "combine"
    return 384 * (4 if pair else 1)


def _read(run: LoadedRun, data: str | Path, with_labels: bool) -> tuple[SplitRows, Any]:
    path = Path(data)
    try:
        named: str | None = format_of(path, None, "--data")
    except DataError:  # a name that does not tell (census-income.test.gz): as in training
        named = None
    try:
        fmt, options = run.preprocessor.read_as_trained(named)
    except DataError as err:
        raise DataError(f"--data {str(path)!r}: {err}") from None
    if fmt == "hf":
        raise DataError(f"{path}: predict and evaluate read one file (csv, tsv, jsonl, "
                        "parquet), not a datasets folder")
    features = (*run.preprocessor.features.numeric, *run.preprocessor.features.vocabularies,
                *(run.text.columns if run.text else ()))
    labels = tuple(c for lab in run.preprocessor.labels.values() for c in lab.spec.label)
    columns = tuple(dict.fromkeys((*features, *labels)))
    table = read_file(path, fmt, columns, "--data",
                      required=tuple(dict.fromkeys((*features, *(labels if with_labels
                                                                 else ())))),
                      options=options)
    part = SplitRows(table, str(path), np.arange(1, table.num_rows + 1))
    if len(part) == 0:
        raise DataError(f"{path}: no rows")
    names = [t.name for t in run.tasks]
    conv = run.preprocessor.convert(part, names, strict=False, with_labels=with_labels)
    return part, conv


@torch.no_grad()
def _outputs(run: LoadedRun, part: SplitRows, conv: Any,
             batch_size: int = 1024) -> dict[str, torch.Tensor]:
    emb = run.text.embed(part, "predict") if run.text else None
    x = inputs(conv, emb)
    parts: dict[str, list[torch.Tensor]] = {t.name: [] for t in run.tasks}
    for start in range(0, len(part), batch_size):
        batch = {k: v[start:start + batch_size] for k, v in x.items()}
        out = run.model(batch)
        for t in run.tasks:
            parts[t.name].append(out[t.name].float())
    return {k: torch.cat(v) for k, v in parts.items()}


def _columns(run: LoadedRun, outputs: dict[str, torch.Tensor],
             bad: np.ndarray) -> dict[str, pa.Array]:
    cols: dict[str, pa.Array] = {}

    def put(name: str, values: np.ndarray | list[Any]) -> None:
        cols[name] = pa.array(np.asarray(values), mask=bad)

    for task in run.tasks:
        out = outputs[task.name]
        labels = run.preprocessor.labels[task.name]
        if task.kind == "classification":
            probs = out.softmax(-1).numpy()
            assert labels.classes is not None
            put(task.name, [labels.classes[i] for i in probs.argmax(1)])
            for j, cls in enumerate(labels.classes):
                put(f"{task.name}:p({cls})", probs[:, j])
        elif task.kind in ("binary", "multilabel"):
            probs = out.reshape(out.shape[0], -1).sigmoid().numpy()
            for j, col in enumerate(labels.spec.label):
                key = task.name if task.kind == "binary" else f"{task.name}:{col}"
                put(key, (probs[:, j] > 0.5).astype(np.int64))
                put(f"{key}:p", probs[:, j])
        else:
            values = out.reshape(out.shape[0], -1).numpy()
            for j, col in enumerate(labels.spec.label):
                put(task.name if values.shape[1] == 1 else f"{task.name}:{col}", values[:, j])
    return cols


def _write_atomic(path: Path, write: Any) -> None:
    if not path.parent.is_dir():
        raise DataError(f"{path}: the folder {str(path.parent)!r} does not exist")
    if path.exists() and not path.is_file():
        raise DataError(f"{path}: exists and is not a regular file")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def predict(run_dir: str | Path, data: str | Path, out: str | Path) -> list[Problem]:
    """Write per-task predictions for every row of ``data``, in input order, to ``out`` (CSV,
    or Parquet / JSON lines by its name); return the rows left out, with why."""
    from pyarrow import csv

    out = Path(out)
    fmt = format_of(out, None, "--out")
    if fmt not in ("csv", "parquet", "jsonl"):
        raise DataError(f"{out}: predictions are written as .csv, .parquet or .jsonl")
    run = load_run(run_dir)
    part, conv = _read(run, data, with_labels=False)
    columns = {"row": pa.array(part.rows)}
    columns.update(_columns(run, _outputs(run, part, conv), conv.bad))
    table = pa.table(columns)
    for name, col in columns.items():
        if pa.types.is_floating(col.type):
            vals = col.to_numpy(zero_copy_only=False)
            if np.isinf(vals).any():
                raise DataError(f"{out}: column {name!r}: the model gave a non-finite value")

    def write(tmp: Path) -> None:
        if fmt == "csv":
            csv.write_csv(table, tmp)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
        else:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))

    _write_atomic(out, write)
    return conv.problems


def evaluate(run_dir: str | Path, data: str | Path,
             out: str | Path | None = None) -> tuple[dict[str, dict[str, float]], list[Problem],
                                                     Path]:
    """Per-task loss and metrics of the run on the labelled rows of ``data`` (rows with an
    unusable value left out and returned); written as JSON to ``out`` (default: the run
    folder's ``evaluate-<file stem>.json``)."""
    run = load_run(run_dir)
    part, conv = _read(run, data, with_labels=True)
    outputs = _outputs(run, part, conv)
    keep = torch.from_numpy(~conv.bad)
    evaluator = TaskEvaluator(run.tasks)
    evaluator.update({k: v[keep] for k, v in outputs.items()},
                     {k: v[keep] for k, v in conv.targets.items()})
    results = evaluator.compute()
    target = Path(out) if out else Path(run_dir) / f"evaluate-{Path(data).stem}.json"
    payload = {"data": str(data), "rows": len(part), "rows_left_out": int(conv.bad.sum()),
               "metrics": {t: {m: (None if math.isnan(v) else v) for m, v in r.items()}
                           for t, r in results.items()}}
    _write_atomic(target, lambda tmp: tmp.write_text(json.dumps(payload, indent=1)))
    return results, conv.problems, target
