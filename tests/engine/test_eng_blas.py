"""The balancers' K x K linear algebra runs on one BLAS thread, and the limit is undone."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from manytask.engine.blas import one_blas_thread


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_one_blas_thread_inside_and_restored_after() -> None:
    np.linalg.eigh(np.eye(3))  # make sure NumPy's BLAS is loaded
    if not _blas_threads():
        pytest.skip("no BLAS library that threadpoolctl can see")
    with threadpool_limits(2, user_api="blas"):  # a known setting to come back to
        before = _blas_threads()
        with one_blas_thread():
            assert _blas_threads() == [1] * len(before)
        assert _blas_threads() == before
