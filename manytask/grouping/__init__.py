"""Which tasks belong together: task affinities and grouping under a budget of models.

Measure (:mod:`.affinity`, :mod:`.datamaps`, :mod:`.driver`, :mod:`.pairwise`), then choose
(:mod:`.search`, :mod:`.clustering`), then look (:mod:`.plots`). Every matrix is an
:class:`AffinityMatrix` oriented source (row) -> target (column).
"""

from .affinity import GradientCosine, LookaheadAffinity, cosine_from_log
from .clustering import cluster_tasks, fuzzy_membership, kmeans
from .datamaps import DataMap, DataMapRecorder, datamap_affinity, task_vectors
from .driver import AffinityRun, measure_affinity
from .matrix import AffinityMatrix, read_matrices, write_matrices
from .pairwise import (
    PairwiseResult,
    config_trainer,
    grouping_scores,
    main_score,
    pairwise_transfer,
    rank_correlation,
)
from .search import Grouping, group_gains, score_grouping, search_groups, set_partitions

__all__ = [
    "AffinityMatrix",
    "AffinityRun",
    "DataMap",
    "DataMapRecorder",
    "GradientCosine",
    "Grouping",
    "LookaheadAffinity",
    "PairwiseResult",
    "cluster_tasks",
    "config_trainer",
    "cosine_from_log",
    "datamap_affinity",
    "fuzzy_membership",
    "group_gains",
    "grouping_scores",
    "kmeans",
    "main_score",
    "measure_affinity",
    "pairwise_transfer",
    "rank_correlation",
    "read_matrices",
    "score_grouping",
    "search_groups",
    "set_partitions",
    "task_vectors",
    "write_matrices",
]
