"""UCI Census-Income (KDD) with the task groups of the MMoE paper.

Data: Lane and Kohavi, "Census-Income (KDD)", UCI Machine Learning Repository, 2000
(https://doi.org/10.24432/C5N30T, CC BY 4.0). The loader reads the gzip file
``census-income.test.gz`` (99,762 rows, 42 comma-space separated columns, no header) from the
folder it is given; see that folder's README.

Tasks (Ma et al., KDD 2018, Section 6, the census-income experiments):

* group 1: ``income`` (income > 50K) and ``marital`` (marital status is "Never married");
* group 2: ``education`` (at least some college: any of "Some college but no degree", the two
  associates degrees, bachelors, masters, professional school or doctorate) and ``marital``.

A task's source column is removed from the features (so is the income label, the last column,
and the instance weight, column 24, which is a sampling weight and not a feature).

Features: the 7 continuous columns of census-income.names are dense; the money amounts (wage
per hour, capital gains and losses, dividends) go through ``log1p`` first; every dense
feature is standardised with the training rows' mean and standard deviation. The other columns
are categorical, coded from the training rows' values (code 0 = a value unseen in training).
The rows are split at random with a fixed seed into train / validation / test.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from itertools import islice
from typing import Literal

import numpy as np
import torch

from ..tasks import Task
from .tabular import TabularDataset

FILE_NAME = "census-income.test.gz"
N_COLUMNS = 42
COLUMNS = (
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode",
    "education", "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat",
    "major_industry_code", "major_occupation_code", "race", "hispanic_origin", "sex",
    "member_of_a_labor_union", "reason_for_unemployment", "full_or_part_time_employment_stat",
    "capital_gains", "capital_losses", "dividends_from_stocks", "tax_filer_stat",
    "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household",
    "instance_weight", "migration_code_change_in_msa", "migration_code_change_in_reg",
    "migration_code_move_within_reg", "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer", "family_members_under_18",
    "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self", "citizenship",
    "own_business_or_self_employed", "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits", "weeks_worked_in_year", "year", "income",
)  # fmt: skip
DENSE = (
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "num_persons_worked_for_employer",
    "weeks_worked_in_year",
)
LOG_DENSE = ("wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks")
NOT_FEATURES = ("instance_weight", "income")
COLLEGE = (
    "Some college but no degree", "Associates degree-occup /vocational",
    "Associates degree-academic program", "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)", "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
)  # fmt: skip
GROUPS: dict[int, tuple[str, ...]] = {1: ("income", "marital"), 2: ("education", "marital")}
TASK_COLUMN = {"income": "income", "marital": "marital_stat", "education": "education"}


@dataclass
class CensusData:
    """The three splits, the tasks, and what a :class:`TabularInput` needs."""

    train: TabularDataset
    val: TabularDataset
    test: TabularDataset
    tasks: tuple[Task, ...]
    cardinalities: tuple[int, ...]
    categorical_names: tuple[str, ...]
    dense_names: tuple[str, ...]

    @property
    def n_dense(self) -> int:
        return len(self.dense_names)


def read_census(path: str, max_rows: int | None = None) -> list[np.ndarray]:
    """The raw file as 42 columns, each an array of strings (one per row).

    Fields are split on ", " in one pass over the whole text (no per-row Python work), then
    the columns are strided slices of the flat field list.
    """
    file = os.path.join(path, FILE_NAME) if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise FileNotFoundError(f"census: no {FILE_NAME} at {path!r}")
    with gzip.open(file, "rt", encoding="utf-8") as handle:
        text = handle.read() if max_rows is None else "".join(islice(handle, max_rows))
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"census: {file} holds no rows")
    fields = ", ".join(lines).split(", ")
    if len(fields) != N_COLUMNS * len(lines):
        for line_no, line in enumerate(lines, 1):  # slow path, only to name the bad line
            if len(line.split(", ")) != N_COLUMNS:
                raise ValueError(
                    f"census: row {line_no} of {file} has {len(line.split(', '))} columns, "
                    "expected 42"
                )
    return [np.array(fields[j::N_COLUMNS]) for j in range(N_COLUMNS)]


def _labels(raw: list[np.ndarray], task: str) -> np.ndarray:
    col = raw[COLUMNS.index(TASK_COLUMN[task])]
    if task == "income":
        known = np.isin(col, ("50000+.", "- 50000."))
        if not known.all():
            raise ValueError(f"census: unexpected income label {col[~known][0]!r}")
        return (col == "50000+.").astype(np.float32)
    if task == "marital":
        return (col == "Never married").astype(np.float32)
    return np.isin(col, COLLEGE).astype(np.float32)


def _encode(column: np.ndarray, train_rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Codes 1..n for the values seen in training (sorted), 0 for any other value."""
    vocab = np.unique(column[train_rows])
    pos = np.clip(np.searchsorted(vocab, column), 0, len(vocab) - 1)
    codes = np.where(vocab[pos] == column, pos + 1, 0)
    return codes, len(vocab) + 1


def load_census(
    path: str,
    group: Literal[1, 2] = 1,
    *,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    max_rows: int | None = None,
) -> CensusData:
    """Load Census-Income (KDD) from the folder (or file) ``path`` for task ``group`` 1 or 2.

    ``fractions`` are the train / validation / test shares of the rows (split with ``seed``);
    ``max_rows`` reads only the first rows (for quick tests).
    """
    if group not in GROUPS:
        raise ValueError(f"census: group must be 1 or 2, got {group!r}")
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"census: fractions must be 3 positive shares summing to 1, got {fractions}"
        )
    raw = read_census(path, max_rows)
    n = len(raw[0])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_train, n_val = int(fractions[0] * n), int(fractions[1] * n)
    parts = (perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :])
    if any(len(p) == 0 for p in parts):
        raise ValueError(f"census: {n} rows are too few for a train/validation/test split")
    train_rows = parts[0]

    task_names = GROUPS[group]
    excluded = set(NOT_FEATURES) | {TASK_COLUMN[t] for t in task_names}
    cat_names = tuple(c for c in COLUMNS if c not in excluded and c not in DENSE)
    codes, cards = [], []
    for name in cat_names:
        c, card = _encode(raw[COLUMNS.index(name)], train_rows)
        codes.append(c)
        cards.append(card)
    categorical = torch.from_numpy(np.stack(codes, axis=1).astype(np.int64))

    dense_np = np.stack([raw[COLUMNS.index(c)].astype(np.float64) for c in DENSE], axis=1)
    log_cols = [DENSE.index(c) for c in LOG_DENSE]
    dense_np[:, log_cols] = np.log1p(np.clip(dense_np[:, log_cols], 0, None))
    mean, std = dense_np[train_rows].mean(0), dense_np[train_rows].std(0)
    dense = torch.from_numpy(((dense_np - mean) / np.where(std > 0, std, 1.0)).astype(np.float32))

    targets = {t: torch.from_numpy(_labels(raw, t)) for t in task_names}
    full = TabularDataset(categorical, dense, targets, cards)
    train, val, test = (full.subset(torch.from_numpy(p)) for p in parts)
    return CensusData(
        train=train,
        val=val,
        test=test,
        tasks=tuple(Task.binary(t) for t in task_names),
        cardinalities=tuple(cards),
        categorical_names=cat_names,
        dense_names=DENSE,
    )
