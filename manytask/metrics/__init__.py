"""Metrics chosen by name, computed by torchmetrics (streaming, synchronised across processes).

``METRICS`` maps a name (``accuracy``, ``f1_macro``, ``auroc``, ``rmse``, ...) to a
:class:`MetricDef`: its direction and how to build the torchmetrics object for a task kind.
:class:`TaskEvaluator` streams a model's outputs through the metrics of several tasks.
"""

from .catalogue import KINDS, METRICS, MetricDef, build_metric, metric_names_for
from .stream import TaskEvaluator

__all__ = ["KINDS", "METRICS", "MetricDef", "TaskEvaluator", "build_metric", "metric_names_for"]
