"""Data declared in YAML: files (CSV, TSV, JSON lines, Parquet, HF datasets folders), their
columns, splits and tasks; preprocessing fitted on the training split and saved with the run.
"""

from .build import DeclaredData, prepare_declared
from .columns import Problem
from .preprocess import Preprocessor
from .read import SplitRows, read_file
from .spec import FORMATS, DataError, DatasetSpec, TableSpec, TaskSpec, parse_dataset
from .text_columns import TextColumns

__all__ = ["FORMATS", "DataError", "DatasetSpec", "DeclaredData", "Preprocessor", "Problem",
           "SplitRows", "TableSpec", "TaskSpec", "TextColumns", "parse_dataset",
           "prepare_declared", "read_file"]
