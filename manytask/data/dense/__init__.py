"""Dense data: procedural scenes with exact targets, the NYUv2 and Cityscapes layouts,
batches and augmentation consistent across tasks."""

from .batches import Augment, DenseBatches, DenseData
from .layouts import LAYOUTS, LayoutError, read_layout
from .scenes import CLASSES, Scene, render_scene

__all__ = ["CLASSES", "LAYOUTS", "Augment", "DenseBatches", "DenseData", "LayoutError", "Scene",
           "read_layout", "render_scene"]
