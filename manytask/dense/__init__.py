"""Dense prediction tasks: per-pixel kinds (segmentation, depth, normals, edges, saliency),
their losses on valid pixels, and streaming metrics correct under ``torchrun``."""

from .evaluate import directions, evaluate_dense
from .fmeasure import FMeasureMeter
from .metrics import DepthMeter, Meter, NormalMeter, SegmentationMeter
from .tasks import MAIN_METRIC, DenseTargetError, DenseTask

__all__ = ["MAIN_METRIC", "DenseTargetError", "DenseTask", "DepthMeter", "FMeasureMeter", "Meter",
           "NormalMeter", "SegmentationMeter", "directions", "evaluate_dense"]
