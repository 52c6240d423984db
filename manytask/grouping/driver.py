"""One joint training run that measures every cheap affinity at once.

:func:`measure_affinity` trains all tasks together (any balancer, Adam) and, every ``every``
steps, before the optimiser step, measures on the current batch

* the lookahead inter-task affinity of Fifty et al. (2021, eq. 1-2) and, from the same exact
  per-task gradients, their cosine (:class:`~manytask.grouping.affinity.LookaheadAffinity`);
* the feature-level gradient cosine (gradients w.r.t. the shared features, MGDA-UB style);

and, after every epoch, the true-label probability of every probe example for the data maps of
STG-MTL (:class:`~manytask.grouping.datamaps.DataMapRecorder`). This is the "one joint run" of
both papers; the :class:`~manytask.Trainer` logs the cosine too (``cosine_every``), but not
the lookahead or the data maps, hence this small loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..balancers import Balancer, make_balancer
from ..engine.backward import backward
from ..engine.gradients import Mode, feature_tensors, task_gradients
from ..models.base import MultiTaskModel
from ..tasks import Task, task_losses
from .affinity import GradientCosine, LookaheadAffinity
from .datamaps import DataMap, DataMapRecorder, VectorKind, _split_batch, datamap_affinity
from .matrix import AffinityMatrix


@dataclass
class AffinityRun:
    """The matrices measured (by kind), the data maps, and what the run cost."""

    matrices: dict[str, AffinityMatrix]
    maps: dict[str, DataMap] | None
    steps: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def measure_affinity(
    model: MultiTaskModel,
    tasks: list[Task],
    train_data: Iterable[Any],
    *,
    epochs: int,
    lr: float = 1e-3,
    every: int = 5,
    lookahead_lr: float | None = None,
    balancer: Balancer | str = "equal",
    mode: Mode = "exact",
    probe: Iterable[Any] | None = None,
    datamap_vectors: VectorKind = "auto",
) -> AffinityRun:
    """Train ``model`` on ``tasks`` for ``epochs`` and measure the affinities (see module).

    Args:
        train_data: batches ``(x, {task: target})`` (or objects with ``.x``/``.targets``);
            re-iterated each epoch (``set_epoch(e)`` is called when it has one).
        lr: Adam's learning rate, also the lookahead step size.
        every: measure every this many steps (the first step included).
        lookahead_lr: the lookahead step size ``eta`` (default: ``lr``, as in the paper).
        balancer: the training method of the joint run (Fifty et al. use the plain sum).
        mode: how a gradient-level balancer gets its Gramian (``"exact"`` or ``"feature"``);
            the measurements are always taken as described in the module docstring.
        probe: fixed-order batches for the data maps (none: no data maps).
        datamap_vectors: how data maps become task vectors (see :func:`task_vectors`).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"measure_affinity: epochs must be a positive integer, got {epochs!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"measure_affinity: every must be a positive integer, got {every!r}")
    began = time.perf_counter()
    names = [t.name for t in tasks]
    model.check_tasks(tasks)
    method = make_balancer(balancer) if isinstance(balancer, str) else balancer
    method.setup(names)
    optimizer = torch.optim.Adam([*model.parameters(), *method.parameters()], lr=lr)
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    lookahead = LookaheadAffinity(model, tasks, lr=lr if lookahead_lr is None else lookahead_lr)
    feature_cos = GradientCosine(names, mode="feature")
    recorder = DataMapRecorder(tasks) if probe is not None else None
    step = 0
    for epoch in range(epochs):
        set_epoch = getattr(train_data, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        for batch in train_data:
            x, targets = _split_batch(batch)
            model.train()
            measure = step % every == 0
            if measure:
                lookahead(x, targets)
            outputs, features = model(x, return_features=True)
            losses = task_losses(tasks, outputs, targets)
            if not losses:
                continue
            if measure and len(losses) > 1:
                gram = task_gradients(
                    list(losses.values()), feature_tensors(features), mode="feature"
                ).gramian
                feature_cos.add(list(losses), gram)
            optimizer.zero_grad(set_to_none=True)
            backward(losses, method, features=features, shared_params=shared, mode=mode, step=step)
            optimizer.step()
            step += 1
        method.end_epoch()
        if recorder is not None and probe is not None:
            recorder.record(model, probe)
    assert lookahead.cosine is not None
    matrices = {
        m.kind: m for m in (lookahead.matrix(), lookahead.cosine.matrix(), feature_cos.matrix())
    }
    maps = recorder.maps() if recorder is not None else None
    if maps is not None:
        matrices["datamap"] = datamap_affinity(maps, datamap_vectors)
    return AffinityRun(
        matrices,
        maps,
        step,
        time.perf_counter() - began,
        {"epochs": epochs, "every": every, "lr": lr, "balancer": type(method).__name__},
    )
