"""Learned merges: in memory, on modules, with a few batches of data per task.

Apart from the streaming engine (which merges files tensor by tensor with no data), these need
the models' forwards: Fisher and RegMean merging, AdaMerging, Representation Surgery, and the
merge methods of the papers we build on that learn or search coefficients.
"""

from .adamerging import AdaMergingResult, adamerging, prediction_entropy
from .batches import BatchCycle
from .fisher_regmean import DataAwareResult, diagonal_fisher, fisher_merge, regmean_merge
from .surgery import SurgeryModule, SurgeryResult, representation_surgery

__all__ = [
    "AdaMergingResult",
    "BatchCycle",
    "DataAwareResult",
    "SurgeryModule",
    "SurgeryResult",
    "adamerging",
    "diagonal_fisher",
    "fisher_merge",
    "prediction_entropy",
    "regmean_merge",
    "representation_surgery",
]
