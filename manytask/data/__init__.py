"""Data: MultiDigits (bundled), files declared in YAML (:mod:`manytask.data.declared`), text
tasks over MiniLM, tabular data, the MMoE synthetic generator, multi-task batching and task
samplers."""

from .batching import TensorBatches, collate_multitask
from .encoders import EmbeddingCache, SentenceEncoder, load_minilm
from .multidigits import MultiDigits, digit_task, source_split
from .multitab_bench import MultiTabBench, multitab_bench
from .sampling import (
    SAMPLERS,
    EXP3Sampler,
    MultiTaskBatches,
    ProportionalSampler,
    RoundRobinSampler,
    TaskSampler,
    TemperatureSampler,
    TwoPhaseSampler,
    dataset_sizes,
    loss_drop_reward,
    make_sampler,
)
from .synthetic import mmoe_synthetic
from .tabular import TabularBatch, TabularDataset, TabularX
from .text import MixedTaskBatches, TextSplit, TextTask, stacked_batches

__all__ = [
    "SAMPLERS",
    "EXP3Sampler",
    "EmbeddingCache",
    "MixedTaskBatches",
    "MultiDigits",
    "MultiTabBench",
    "MultiTaskBatches",
    "ProportionalSampler",
    "RoundRobinSampler",
    "SentenceEncoder",
    "TabularBatch",
    "TabularDataset",
    "TabularX",
    "TaskSampler",
    "TemperatureSampler",
    "TensorBatches",
    "TextSplit",
    "TextTask",
    "TwoPhaseSampler",
    "collate_multitask",
    "dataset_sizes",
    "digit_task",
    "load_minilm",
    "loss_drop_reward",
    "make_sampler",
    "mmoe_synthetic",
    "multitab_bench",
    "source_split",
    "stacked_batches",
]
