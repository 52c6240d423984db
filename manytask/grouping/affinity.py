"""Cheap task affinities measured during one joint run: gradient cosine and lookahead.

* **Gradient cosine** ``cos(g_i, g_j)`` of the per-task gradients w.r.t. the shared parameters
  (``mode="exact"``) or the shared features (``mode="feature"``), averaged over the steps where
  it was measured: :class:`GradientCosine`, or :func:`cosine_from_log` for the ``cos/a/b``
  columns a :class:`~manytask.Trainer` run logged (``cosine_every``).
* **Lookahead inter-task affinity** (Fifty et al., 2021, "Efficiently Identifying Task
  Groupings for Multi-Task Learning", NeurIPS, eq. 1-2): at step ``t`` on batch ``X^t``,

      theta_{s|i}^{t+1} = theta_s^t - eta * grad_{theta_s} L_i(X^t, theta_s^t, theta_i^t)
      Z^t_{i->j} = 1 - L_j(X^t, theta_{s|i}^{t+1}, theta_j^t) / L_j(X^t, theta_s^t, theta_j^t)

  (only the shared parameters ``theta_s`` take the lookahead step; the heads stay), and the
  affinity ``Z_{i->j}`` is the mean of ``Z^t_{i->j}`` over the measured steps.
  :class:`LookaheadAffinity` is a callable for a user's own loop: call it on a batch before
  the optimiser step (every few steps, it costs one per-task gradient and K extra forwards).

Both return an :class:`~manytask.grouping.matrix.AffinityMatrix` oriented source (row) ->
target (column).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..engine.gradients import Mode, cosine_similarity, feature_tensors, task_gradients
from ..models.base import MultiTaskModel
from ..tasks import Task, task_losses
from .matrix import AffinityMatrix


class PairMean:
    """Running means of a K x K quantity, each pair counted only when measured."""

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = tuple(tasks)
        k = len(self.tasks)
        self.total = np.zeros((k, k))
        self.count = np.zeros((k, k), dtype=np.int64)

    def add(self, present: Sequence[str], values: np.ndarray) -> None:
        """Add a ``len(present)``-square matrix over the tasks ``present`` (a subset)."""
        idx = [self.tasks.index(t) for t in present]
        block = np.ix_(idx, idx)
        finite = np.isfinite(values)
        self.total[block] += np.where(finite, values, 0.0)
        self.count[block] += finite

    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.total / np.maximum(self.count, 1), np.nan)


class GradientCosine:
    """Mean pairwise cosine of task gradients, fed one Gramian at a time."""

    def __init__(self, tasks: Sequence[str], mode: Mode = "exact") -> None:
        self.mode = mode
        self.pairs = PairMean(tasks)
        self.steps = 0

    def add(self, present: Sequence[str], gramian: Tensor) -> None:
        self.pairs.add(present, cosine_similarity(gramian.double()).cpu().numpy())
        self.steps += 1

    def matrix(self) -> AffinityMatrix:
        kind = "cosine" if self.mode == "exact" else "cosine_feature"
        return AffinityMatrix(
            self.pairs.tasks, self.pairs.mean(), kind, {"steps": self.steps, "mode": self.mode}
        )


def _shared_names(model: nn.Module, shared: Sequence[Tensor]) -> list[str]:
    ids = {id(p): name for name, p in model.named_parameters()}
    names = []
    for p in shared:
        if id(p) not in ids:
            raise ValueError(
                "LookaheadAffinity: a shared parameter is not a parameter of the model"
            )
        names.append(ids[id(p)])
    return names


class LookaheadAffinity:
    """The lookahead inter-task affinity of Fifty et al. (2021, eq. 1-2), see the module.

    Args:
        model: a :class:`~manytask.models.MultiTaskModel` (``forward(x, return_features=True)``
            and ``shared_parameters()``).
        tasks: its tasks.
        lr: the lookahead step size ``eta`` (use the training learning rate, as the paper's
            code does; with Adam the paper still takes a plain gradient step).
        cosine: also accumulate the exact gradient cosine from the same gradients (free).
        precision: dtype of the lookahead forwards. With a small ``lr`` the loss changes are
            tiny (about ``lr * <g_i, g_j>``, often 1e-6 of the loss), below float32's
            resolution, so the forwards before and after the step run on a float64 copy of
            the parameters and inputs (the gradients stay those of the model). If the model
            cannot run in that dtype, its own dtype is used, with a warning.

    Call it with a batch ``(x, targets)``; it returns this step's ``Z`` over the tasks present
    (``{source: {target: value}}``) and adds it to the running mean. It never changes the
    model's parameters or ``.grad``.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: Sequence[Task],
        *,
        lr: float,
        cosine: bool = True,
        precision: torch.dtype | None = torch.float64,
    ) -> None:
        if not lr > 0 or not math.isfinite(lr):
            raise ValueError(f"LookaheadAffinity: lr must be a positive number, got {lr!r}")
        self.model = model
        self.tasks = list(tasks)
        self.lr = float(lr)
        self.shared = [p for p in model.shared_parameters() if p.requires_grad]
        if not self.shared:
            raise ValueError("LookaheadAffinity: the model has no trainable shared parameter")
        self.names = _shared_names(model, self.shared)
        names = [t.name for t in self.tasks]
        self.pairs = PairMean(names)
        self.cosine = GradientCosine(names) if cosine else None
        self.precision = precision
        self.steps = 0

    def __call__(self, x: Any, targets: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
        outputs, features = self.model(x, return_features=True)
        losses = task_losses(self.tasks, outputs, targets)
        present = list(losses)
        if not present:
            return {}
        grads = task_gradients(
            [losses[t] for t in present],
            feature_tensors(features),
            mode="exact",
            shared_params=self.shared,
        )
        if self.cosine is not None:
            self.cosine.add(present, grads.gramian)
        z = self._lookahead(x, targets, present, grads.blocks)
        self.pairs.add(present, z)
        self.steps += 1
        return {
            a: {b: float(z[i, j]) for j, b in enumerate(present)} for i, a in enumerate(present)
        }

    @torch.no_grad()
    def _lookahead(
        self,
        x: Any,
        targets: Mapping[str, Tensor],
        present: Sequence[str],
        blocks: Sequence[Tensor],
    ) -> np.ndarray:
        """``Z[i, j] = 1 - L_j(theta_s - lr g_i) / L_j(theta_s)`` on this batch."""
        if self.precision is not None:
            try:
                return self._z(x, targets, present, blocks, self.precision)
            except (RuntimeError, TypeError) as err:
                warnings.warn(
                    f"LookaheadAffinity: the model does not run in {self.precision} "
                    f"({err}); using its own dtype",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.precision = None
        return self._z(x, targets, present, blocks, None)

    def _z(
        self,
        x: Any,
        targets: Mapping[str, Tensor],
        present: Sequence[str],
        blocks: Sequence[Tensor],
        dtype: torch.dtype | None,
    ) -> np.ndarray:
        state = {n: _cast(t.detach(), dtype) for n, t in self.model.named_parameters()}
        # buffers copied, so no forward here can move the model's own running statistics
        state.update({n: _cast(t.detach().clone(), dtype) for n, t in self.model.named_buffers()})
        inputs = _cast(x, dtype)

        def losses(params: Mapping[str, Tensor]) -> Tensor:
            out = functional_call(self.model, dict(params), (inputs,))
            values = task_losses(self.tasks, out, targets)
            return torch.stack([values[t].double() for t in present])

        # The K + 1 forwards compare one network function before and after a step: in eval
        # mode, so dropout draws no fresh masks (which would swamp the ~1e-6 loss changes) and
        # batch normalisation reads its running statistics.
        was_training = self.model.training
        self.model.eval()
        try:
            before = losses(state)
            z = np.zeros((len(present), len(present)))
            for i in range(len(present)):
                # theta_s - eta * g_i for the shared parameters; the heads keep theirs
                params = dict(state)
                for name, block in zip(self.names, blocks, strict=True):
                    params[name] = state[name] - self.lr * _cast(block[i], dtype)
                z[i] = (1.0 - losses(params) / before).cpu().numpy()
        finally:
            self.model.train(was_training)
        return z

    def matrix(self) -> AffinityMatrix:
        return AffinityMatrix(
            self.pairs.tasks, self.pairs.mean(), "lookahead", {"steps": self.steps, "lr": self.lr}
        )


def _cast(x: Any, dtype: torch.dtype | None) -> Any:
    """``x`` with every floating tensor in it (nested tuples, lists, mappings) in ``dtype``."""
    if dtype is None:
        return x
    if isinstance(x, Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, Mapping):
        return {k: _cast(v, dtype) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a NamedTuple such as TabularX
        return type(x)(*(_cast(v, dtype) for v in x))
    if isinstance(x, list | tuple):
        return type(x)(_cast(v, dtype) for v in x)
    return x


def cosine_from_log(run_dir: str | Path) -> AffinityMatrix:
    """Mean gradient cosine per task pair from a Trainer run's ``steps.csv``/``steps.jsonl``.

    The tasks are those of the ``loss/<task>`` columns, in the log's order. The kind is
    ``"cosine_feature"`` when the run's ``config.yaml`` says ``mode: feature``, else
    ``"cosine"`` (a Trainer without a config file: exact unless you know otherwise). Steps
    where a pair was not measured (empty cells) do not count. A pair never measured is an
    error: train with ``cosine_every`` set (or a gradient-level balancer) to log them.
    """
    run_dir = Path(run_dir)
    columns, rows = _read_steps(run_dir)
    tasks = [c[5:] for c in columns if c.startswith("loss/")]
    if not tasks:
        raise ValueError(f"{run_dir}: the step log has no loss/<task> column")
    pairs = PairMean(tasks)
    steps = 0
    for row in rows:
        values = np.eye(len(tasks))
        seen = np.eye(len(tasks), dtype=bool)
        for i, a in enumerate(tasks):
            for j in range(i + 1, len(tasks)):
                v = row.get(f"cos/{a}/{tasks[j]}")
                if v not in (None, ""):
                    values[i, j] = values[j, i] = float(v)
                    seen[i, j] = seen[j, i] = True
        if seen.sum() > len(tasks):
            steps += 1
            pairs.add(tasks, np.where(seen, values, np.nan))
    mean = pairs.mean()
    if np.isnan(mean).any():
        raise ValueError(
            f"{run_dir}: no gradient cosine logged for some task pair; train with "
            "cosine_every (or a gradient-level balancer) to log them"
        )
    mode = _logged_mode(run_dir)
    kind = "cosine_feature" if mode == "feature" else "cosine"
    return AffinityMatrix(
        tuple(tasks), mean, kind, {"steps": steps, "source": str(run_dir), "mode": mode}
    )


def _logged_mode(run_dir: Path) -> str:
    """The gradient mode of a ``manytask train`` run (its ``config.yaml``); ``"exact"`` when
    the run has no config file (a Trainer used from Python; pass the kind yourself)."""
    from ..files import load_yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return "exact"
    values = load_yaml(path, what="run config") or {}
    return str(values.get("mode", "exact")) if isinstance(values, dict) else "exact"


def _read_steps(run_dir: Path) -> tuple[list[str], list[dict[str, Any]]]:
    csv_path, jsonl_path = run_dir / "steps.csv", run_dir / "steps.jsonl"
    if csv_path.is_file():
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    if jsonl_path.is_file():
        with open(jsonl_path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return (list(rows[0]) if rows else []), rows
    raise FileNotFoundError(f"{run_dir}: no steps.csv or steps.jsonl (a Trainer run directory)")
