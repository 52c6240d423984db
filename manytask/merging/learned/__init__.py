"""Learned merges: in memory, on modules, with a few batches of data per task.

Apart from the streaming engine (which merges files tensor by tensor with no data), these need
the models' forwards: Fisher and RegMean merging, AdaMerging, Representation Surgery, and the
merge methods of the papers we build on that learn or search coefficients.
"""

from .adagd import AdaGDResult, adagd_merge
from .adamerging import AdaMergingResult, adamerging, prediction_entropy
from .atlas import AtlasResult, atlas
from .batches import BatchCycle
from .cold_fusion import ColdFusionResult, cold_fusion, fuse_average
from .concrete import ConcreteResult, concrete_mask, concrete_task_arithmetic
from .dam import DAMResult, dam
from .divmerge import DivMergeResult, divmerge, js_divergence
from .fisher_regmean import DataAwareResult, diagonal_fisher, fisher_merge, regmean_merge
from .fw_merging import FWResult, fw_merging
from .stf import stf_merge
from .surgery import SurgeryModule, SurgeryResult, representation_surgery
from .taskvectors import TaskVectors

__all__ = [
    "AdaGDResult",
    "AdaMergingResult",
    "AtlasResult",
    "BatchCycle",
    "ColdFusionResult",
    "ConcreteResult",
    "DAMResult",
    "DataAwareResult",
    "DivMergeResult",
    "FWResult",
    "SurgeryModule",
    "SurgeryResult",
    "TaskVectors",
    "adagd_merge",
    "adamerging",
    "atlas",
    "cold_fusion",
    "concrete_mask",
    "concrete_task_arithmetic",
    "dam",
    "diagonal_fisher",
    "divmerge",
    "fisher_merge",
    "fuse_average",
    "fw_merging",
    "js_divergence",
    "prediction_entropy",
    "regmean_merge",
    "representation_surgery",
    "stf_merge",
]
