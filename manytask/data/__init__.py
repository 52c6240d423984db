"""Data: MultiDigits (bundled), text tasks over MiniLM, Census-Income and other tabular data,
the MMoE synthetic generator, multi-task batching and task samplers."""

from .batching import TensorBatches, collate_multitask
from .census import CensusData, load_census
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
from .text import TEXT_TASKS, MixedTaskBatches, load_text_task, stacked_batches

__all__ = [
    "SAMPLERS",
    "TEXT_TASKS",
    "CensusData",
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
    "TwoPhaseSampler",
    "collate_multitask",
    "dataset_sizes",
    "digit_task",
    "load_census",
    "load_minilm",
    "load_text_task",
    "loss_drop_reward",
    "make_sampler",
    "mmoe_synthetic",
    "multitab_bench",
    "source_split",
    "stacked_batches",
]
