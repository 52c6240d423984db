"""Parameter-efficient multi-task adapters on a frozen Hugging Face model.

Methods are chosen by name from :data:`ADAPTERS` (``lora``, ``lora_per_task``, ``mtl_lora``,
``moa``, ``mor1e``, ``poly``, ``mhr``, ``scalearn``, ``hyperx``, ``mpt``,
``task_prompt_vectors``, ``align_lora``); :class:`AdapterModel` puts one on a model, with
per-task heads, for ``manytask.backward`` and the Trainer. ``transformers`` and ``peft`` are
imported only where used (saving in PEFT's format).
"""

from .base import ADAPTERS, AdapterMethod
from .hyperx import HyperX
from .layer import AdaptedLayer, Context, matches
from .lora import AlignLora, Lora, LoraPerTask, MtlLora
from .mixtures import MixtureOfLoras, MoR1E, intuition
from .model import AdaptedBase, AdapterModel
from .poly import MultiHeadRouting, Poly
from .prompts import MultitaskPromptTuning, TaskPromptVectors, mpt_distillation_loss
from .scalearn import ScaLearn

__all__ = [
    "ADAPTERS",
    "AdaptedBase",
    "AdaptedLayer",
    "AdapterMethod",
    "AdapterModel",
    "AlignLora",
    "Context",
    "HyperX",
    "Lora",
    "LoraPerTask",
    "MixtureOfLoras",
    "MoR1E",
    "MtlLora",
    "MultiHeadRouting",
    "MultitaskPromptTuning",
    "Poly",
    "ScaLearn",
    "TaskPromptVectors",
    "intuition",
    "matches",
    "mpt_distillation_loss",
]
