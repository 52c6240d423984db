"""From a validated ``dataset:`` section to batches: read, fit on train, convert every split.

Shape (a): one :class:`~manytask.data.TensorBatches` per split over ``{"categorical",
"dense"}`` inputs. Shape (b): each source's training rows mixed by the task sampler
(:class:`~manytask.data.text.MixedTaskBatches`), its validation and test rows stacked, each
labelled for its own task only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...tasks import Task
from ..batching import TensorBatches
from ..text import MixedTaskBatches, TextSplit, TextTask, stacked_batches
from .errors import DataError
from .preprocess import Converted, Features, Labels, Preprocessor
from .read import SplitRows, read_splits
from .spec import SPLITS, DatasetSpec
from .text_columns import TextColumns, texts_of


@dataclass
class DeclaredData:
    """Tasks, batches per split, the input's shape and the fitted preprocessing."""

    tasks: list[Task]
    train: Any
    val: Any
    test: Any
    cardinalities: tuple[int, ...]
    n_dense: int
    preprocessor: Preprocessor


def inputs(conv: Converted, text: Tensor | None) -> dict[str, Tensor]:
    dense = conv.dense if text is None else torch.cat([conv.dense, text.float()], dim=1)
    return {"categorical": conv.categorical, "dense": dense}


def fit(spec: DatasetSpec, splits: list[dict[str, SplitRows]],
        cache_dir: str | Path) -> tuple[Preprocessor, list[TextColumns | None]]:
    """Fit features (on every table's training rows), labels and each table's text
    columns (their names may differ between sources; their embedding width may not)."""
    first = spec.tables[0]
    train = [s["train"] for s in splits]
    features = Features.fit(first.numeric, first.categorical, train, first.transforms)
    labels = {}
    texts: list[TextColumns | None] = []
    for table, parts in zip(spec.tables, splits, strict=True):
        for task in table.tasks:
            labels[task.name] = Labels.fit(task, parts["train"])
        text = None
        if table.text:
            text = TextColumns(table.text, spec.pair_encoding, spec.max_length, cache_dir)
            text.fit([parts["train"]])
        texts.append(text)
    read = {"format": first.format, "options": first.read.to_dict()}
    return Preprocessor(features, labels, read=read), texts


def prepare_declared(spec: DatasetSpec, *, cache_dir: str | Path, batch_size: int,
                     seed: int = 0, tasks_per_batch: int = 4,
                     temperature: float = 2.0) -> DeclaredData:
    """Read and prepare the data of ``spec`` for training."""
    splits = [read_splits(table) for table in spec.tables]
    pre, texts = fit(spec, splits, cache_dir)
    per_table: list[dict[str, dict[str, Any]]] = []
    for t, (table, parts) in enumerate(zip(spec.tables, splits, strict=True)):
        text = texts[t]
        names = [task.name for task in table.tasks]
        out = {}
        for split in SPLITS:
            conv = pre.convert(parts[split], names, strict=True)
            emb = None
            if text is not None:
                # named by the source's task, so that a run on a subset of the tasks finds
                # the embeddings a run on all of them cached
                label = split if spec.shape == "table" else f"{split}-{table.tasks[0].name}"
                text.report(label, parts[split])
                emb = text.embed(parts[split], label)
            out[split] = {"x": inputs(conv, emb), "y": conv.targets}
        per_table.append(out)
    if texts[0] is not None:  # predict and evaluate read one file: the first table's columns
        pre.text = texts[0].state()
    tasks = pre.tasks()
    n_dense = int(per_table[0]["train"]["x"]["dense"].shape[1])
    if spec.shape == "table":
        data = per_table[0]
        batches: dict[str, Any] = {s: TensorBatches(data[s]["x"], data[s]["y"], batch_size,
                                    shuffle=s == "train", seed=seed) for s in SPLITS}
    else:
        feats = {s: {table.tasks[0].name: per_table[i][s]["x"]
                     for i, table in enumerate(spec.tables)} for s in SPLITS}
        labels = {s: {table.tasks[0].name: per_table[i][s]["y"][table.tasks[0].name]
                      for i, table in enumerate(spec.tables)} for s in SPLITS}
        batches = {"train": MixedTaskBatches(
            feats["train"], labels["train"], batch_size,
            tasks_per_batch=min(tasks_per_batch, len(tasks)), temperature=temperature,
            seed=seed)}
        for s in ("val", "test"):
            batches[s] = stacked_batches(feats[s], labels[s], batch_size)
    return DeclaredData(tasks, batches["train"], batches["val"], batches["test"],
                        pre.features.cardinalities, n_dense, pre)


def declared_text_tasks(spec: DatasetSpec, cache_dir: str | Path) -> tuple[list[TextTask],
                                                                          Preprocessor, int]:
    """Each source of ``spec`` as a :class:`~manytask.data.text.TextTask` (its texts, a pair
    as one joined sequence, and its labels per split), for fine-tuning the encoder's top
    layers; with the fitted preprocessing and the texts' ``max_length``."""
    if spec.shape != "sources":
        raise DataError("fine-tuning reads sources: (one per task), not one table")
    for table in spec.tables:
        if table.numeric or table.categorical or not table.text:
            raise DataError(f"{table.where}: fine-tuning takes text columns only")
    if spec.pair_encoding != "joined" and any(len(t.text) == 2 for t in spec.tables):
        raise DataError("dataset: fine-tuning encodes a pair as one joined sequence: set "
                        "pair_encoding: joined")
    splits = [read_splits(table) for table in spec.tables]
    pre, texts = fit(spec, splits, cache_dir)
    out = []
    for table, parts in zip(spec.tables, splits, strict=True):
        task = table.tasks[0]
        labels = pre.labels[task.name]
        per_split = {}
        for split in SPLITS:
            columns = texts_of(parts[split], table.text)
            rows = columns[0] if len(columns) == 1 else list(zip(*columns, strict=True))
            y = labels.transform(parts[split], strict=True)[0]
            per_split[split] = TextSplit(tuple(rows), y)
        out.append(TextTask(task.name, tuple(labels.classes or ()), per_split["train"],
                            per_split["val"], per_split["test"], labels.task()))
    first = texts[0]
    assert first is not None and first.max_length is not None
    return out, pre, first.max_length
