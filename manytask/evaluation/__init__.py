"""Evaluation: multi-task gain, ranks and Pareto fronts."""

from .measures import delta_m, directions_of, mean_rank, pareto_front

__all__ = ["delta_m", "directions_of", "mean_rank", "pareto_front"]
