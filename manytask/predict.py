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
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .config import config_from_mapping
from .data.declared import DataError, Preprocessor, Problem, SplitRows, TextColumns, read_file
from .data.declared.build import inputs
from .data.declared.spec import format_of
from .files import inside
from .locks import process_alive
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


def load_run(run_dir: str | Path, *, allow_outside_links: bool = False) -> LoadedRun:
    """The run folder's configuration, preprocessing and latest checkpoint, each a regular
    file of the folder (a link out of it refused unless ``allow_outside_links``), the
    configuration read with the bounded YAML loader, the weights checked against the model
    (names, shapes, dtypes, finite)."""
    from .files import load_yaml, read_text
    from .models.inputs import TabularInput
    from .training.checkpoint import latest_checkpoint, load_model_weights

    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"--run-dir {str(root)!r} is not a folder (the run folder of "
                        "manytask train)")

    def own(name: str) -> Path:
        if not (root / name).exists() and not (root / name).is_symlink():
            raise DataError(f"{root}: no {name}; is this the run folder of a data: files run?")
        return inside(root, name, what=f"run folder file {name!r}",
                      allow_outside=allow_outside_links,
                      hint="unless you allow links out of the run folder "
                      "(--allow-outside-links)")

    cfg = config_from_mapping(load_yaml(own("config.yaml"), what="run config"),
                              source=str(root / "config.yaml"))
    pre_path = own(PREPROCESSING)
    pre = Preprocessor.from_json(read_text(pre_path, what="preprocessing"), str(pre_path))
    tasks = pre.tasks()
    try:
        text = TextColumns.from_state(pre.text, cfg.cache_dir) if pre.text else None
        n_dense = len(pre.features.numeric) + (_text_width(pre.text) if text else 0)
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{pre_path}: malformed text settings ({type(err).__name__}: "
                        f"{str(err)[:80]})") from None
    cards = pre.features.cardinalities

    def input_layer() -> torch.nn.Module:
        return TabularInput(cards, n_dense, embedding_dim=8)

    model = build_model(cfg, Prepared(tasks, None, None, None, 0, input_layer))
    ckpt = latest_checkpoint(root, allow_outside=allow_outside_links)
    if ckpt is None:
        raise DataError(f"{root}: no checkpoint (checkpoints/latest); did the run finish an "
                        "epoch?")
    load_model_weights(ckpt, model, allow_outside=allow_outside_links)
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


def _check_outputs(outputs: dict[str, torch.Tensor], part: SplitRows, bad: np.ndarray) -> None:
    """Every output of a usable row finite: weights that overflow give inf logits and NaN
    probabilities, which must not be written as predictions or averaged into metrics."""
    keep = torch.from_numpy(~bad)
    for task, out in outputs.items():
        finite = torch.isfinite(out.reshape(out.shape[0], -1)).all(1) | ~keep
        if not bool(finite.all()):
            row = int(part.rows[int((~finite).nonzero()[0])])
            raise DataError(f"{part.file}: row {row}: the model's output for task {task!r} is "
                            "not finite (its weights overflow); nothing written")


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


PARTIAL = ".partial-"  # a write in progress: .NAME.partial-PID-RANDOM beside NAME


def remove_leftovers(out: str | Path) -> list[str]:
    """Remove the temporary files that killed writes of ``out`` left beside it (those of a
    process still running are kept); one note per file removed."""
    out = Path(out)
    notes = []
    found = sorted(out.parent.glob(f".{out.name}{PARTIAL}*")) if out.parent.is_dir() else []
    legacy = out.with_name(f".{out.name}.tmp")  # the name writes of earlier versions used
    for left in [*found, *([legacy] if legacy.is_file() else [])]:
        pid = left.name[len(f".{out.name}{PARTIAL}"):].split("-")[0]
        if left != legacy and pid.isdigit() and process_alive(int(pid)):
            continue
        left.unlink(missing_ok=True)
        notes.append(f"removed {left.name}, left by a killed write of {out.name!r}")
    return notes


def _check_out(out: Path, data: str | Path, overwrite: bool, ours: bool = False) -> None:
    """Refuse, before anything is read, an output that would replace the input file, a
    file of the user's (unless ``overwrite``; ``ours``: the default output, ours to
    replace), or that cannot be written."""
    if not out.parent.is_dir():
        raise DataError(f"{out}: the folder {str(out.parent)!r} does not exist")
    if out.exists() and not out.is_file():
        raise DataError(f"{out}: exists and is not a regular file")
    if out.exists() and out.resolve() == Path(data).resolve():
        raise DataError(f"--out {str(out)!r} is the --data file: it would be replaced; "
                        "choose another output")
    if out.exists() and not (overwrite or ours):
        raise DataError(f"--out {str(out)!r} exists; pass --overwrite to replace it, or "
                        "choose another output")


def _write_atomic(path: Path, write: Any) -> None:
    """``write(tmp)`` into a temporary sibling, then renamed over ``path``: ``path`` is the
    old file or the whole new one, never a part; a failed write leaves nothing."""
    tmp = path.with_name(f".{path.name}{PARTIAL}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def predict(run_dir: str | Path, data: str | Path, out: str | Path, *,
            overwrite: bool = False, allow_outside_links: bool = False) -> list[Problem]:
    """Write per-task predictions for every row of ``data``, in input order, to ``out`` (CSV,
    or Parquet / JSON lines by its name); return the rows left out, with why. An existing
    ``out`` is replaced only if ``overwrite`` (never the ``data`` file itself); a file of
    ``run_dir`` linking out of it is refused unless ``allow_outside_links``. A file none of
    whose rows is usable is an error (nothing to predict), not an empty output."""
    from pyarrow import csv

    out = Path(out)
    fmt = format_of(out, None, "--out")
    if fmt not in ("csv", "parquet", "jsonl"):
        raise DataError(f"{out}: predictions are written as .csv, .parquet or .jsonl")
    _check_out(out, data, overwrite)
    run = load_run(run_dir, allow_outside_links=allow_outside_links)
    part, conv = _read(run, data, with_labels=False)
    _check_usable(part, conv)
    outputs = _outputs(run, part, conv)
    _check_outputs(outputs, part, conv.bad)
    columns = {"row": pa.array(part.rows)}
    columns.update(_columns(run, outputs, conv.bad))
    table = pa.table(columns)

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


def _check_usable(part: SplitRows, conv: Any) -> None:
    if bool(conv.bad.all()):
        first = f" (first: {conv.problems[0]})" if conv.problems else ""
        raise DataError(f"{part.file}: none of its {len(part)} rows is usable{first}; "
                        "nothing written")


def _labelled(y: torch.Tensor) -> torch.Tensor:
    """Rows whose target is given: a class index >= 0, or a finite value."""
    if not y.is_floating_point():
        return y.reshape(len(y), -1).ge(0).any(1)
    return ~torch.isnan(y.reshape(len(y), -1)).all(1)


def evaluate(run_dir: str | Path, data: str | Path, out: str | Path | None = None, *,
             overwrite: bool = False, allow_outside_links: bool = False,
             ) -> tuple[dict[str, dict[str, float]], list[Problem], Path]:
    """Per-task loss and metrics of the run on the labelled rows of ``data`` (rows with an
    unusable value left out and returned); written as JSON to ``out`` (default: the run
    folder's ``evaluate-<file stem>.json``, replaced on a re-run; an ``out`` of the user's
    only with ``overwrite``). A task with no usable labelled row is an error, not a metric
    of nothing."""
    target = Path(out) if out else Path(run_dir) / f"evaluate-{Path(data).stem}.json"
    _check_out(target, data, overwrite, ours=out is None)
    run = load_run(run_dir, allow_outside_links=allow_outside_links)
    part, conv = _read(run, data, with_labels=True)
    _check_usable(part, conv)
    keep = torch.from_numpy(~conv.bad)
    for task, y in conv.targets.items():
        if not bool(_labelled(y[keep]).any()):
            raise DataError(f"{part.file}: task {task!r} has no usable labelled row; "
                            "nothing to evaluate, nothing written")
    outputs = _outputs(run, part, conv)
    _check_outputs(outputs, part, conv.bad)
    evaluator = TaskEvaluator(run.tasks)
    evaluator.update({k: v[keep] for k, v in outputs.items()},
                     {k: v[keep] for k, v in conv.targets.items()})
    results = evaluator.compute()
    payload = {"data": str(data), "rows": len(part), "rows_left_out": int(conv.bad.sum()),
               "metrics": {t: {m: (None if math.isnan(v) else v) for m, v in r.items()}
                           for t, r in results.items()}}
    _write_atomic(target, lambda tmp: tmp.write_text(json.dumps(payload, indent=1)))
    return results, conv.problems, target
