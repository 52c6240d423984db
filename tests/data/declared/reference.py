"""Independent readers of the shared text and census files, written from each folder's
README (the dedicated loaders the library had before configs/text.yaml and census*.yaml):
plain line splitting, no pyarrow, no files route. The tests compare the configs with them."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

Rows = tuple[list[object], list[str]]  # texts (or pairs), label strings


def _lines(path: Path, encoding: str = "utf-8") -> list[str]:
    with open(path, encoding=encoding, newline="") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def text_file(task: str, path: Path) -> Rows:
    """A file of one of the eight tasks, parsed as its README describes it."""
    texts: list[object] = []
    labels: list[str] = []
    if task == "trec":  # COARSE:fine question, latin-1
        for line in _lines(path, "latin-1"):
            head, _, text = line.partition(" ")
            texts.append(text)
            labels.append(head.partition(":")[0])
        return texts, labels
    for line in _lines(path):
        parts = line.split("\t")
        if task == "cola":  # source, label, mark, sentence
            labels.append(parts[1])
            texts.append(parts[3])
        elif task == "rte":  # index, sentence1, sentence2, label; some files have a header
            if parts[0] == "index":
                continue
            texts.append((parts[1], parts[2]))
            labels.append(parts[3])
        else:  # label, sentence
            assert len(parts) == 2
            labels.append(parts[0])
            texts.append(parts[1])
    return texts, labels


def text_splits(root: Path, task: str, caps: tuple[int, int, int] | None) -> dict[str, Rows]:
    """train / val / test: a val file where there is one, else 10 % of train held out with
    ``default_rng(0).permutation``; each split then capped to a ``default_rng([0, k])`` sample."""
    folder = root / task
    if task == "trec":
        train, test = folder / "train_5500.label", folder / "TREC_10.label"
    else:
        train, test = folder / "train.tsv", folder / "dev.tsv"
    out = {"train": text_file(task, train), "test": text_file(task, test)}
    if (folder / "val.tsv").exists():
        out["val"] = text_file(task, folder / "val.tsv")
    else:
        texts, labels = out["train"]
        order = np.random.default_rng(0).permutation(len(texts))
        n_val = max(1, round(0.1 * len(texts)))
        keep, held = np.sort(order[n_val:]), np.sort(order[:n_val])
        out["train"] = ([texts[i] for i in keep], [labels[i] for i in keep])
        out["val"] = ([texts[i] for i in held], [labels[i] for i in held])
    if caps is not None:
        for k, (split, cap) in enumerate(zip(("train", "val", "test"), caps, strict=True)):
            texts, labels = out[split]
            if cap < len(texts):
                idx = np.sort(np.random.default_rng([0, k]).choice(len(texts), cap,
                                                                   replace=False))
                out[split] = ([texts[i] for i in idx], [labels[i] for i in idx])
    return {s: out[s] for s in ("train", "val", "test")}


def census_columns(path: Path) -> list[np.ndarray]:
    """The 42 ", "-separated columns of census-income.test.gz, as strings."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [line.split(", ") for line in f.read().splitlines() if line.strip()]
    assert all(len(r) == 42 for r in rows)
    return [np.array([r[j] for r in rows]) for j in range(42)]


def census_split(n: int) -> dict[str, np.ndarray]:
    """Rows of train / val / test: ``torch.randperm(n)`` seeded 0, cut at 60 % and 80 %."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).numpy()
    a, b = int(0.6 * n), int(0.6 * n) + int(0.2 * n)
    return {"train": perm[:a], "val": perm[a:b], "test": perm[b:]}


def standardised(values: np.ndarray, log: bool, train: np.ndarray) -> np.ndarray:
    """(f(x) - mean) / std over the training rows, f = log1p(max(x, 0)) or the identity."""
    x = values.astype(np.float64)
    if log:
        x = np.log1p(np.clip(x, 0, None))
    mean, std = x[train].mean(), x[train].std()
    return (x - mean) / (std if std > 0 else 1.0)
