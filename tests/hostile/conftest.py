"""Session fixtures of the hostile suite: runs trained once, copied by each case."""

from __future__ import annotations

from pathlib import Path

import pytest
from hos_runs import copy_run, tiny_bench, trained_files_run


@pytest.fixture(scope="session")
def files_run_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_files_run(tmp_path_factory.mktemp("files-run"))


@pytest.fixture
def files_run(files_run_source: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A fresh copy of the trained ``data: files`` run: ``(run folder, data folder)``."""
    return copy_run(files_run_source, tmp_path)


@pytest.fixture(scope="session")
def bench_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bench(tmp_path_factory.mktemp("bench"))
