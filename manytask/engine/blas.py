"""Run the balancers' small NumPy linear algebra on one BLAS thread.

The K x K problems of the Gramian methods (eigendecompositions, least squares, linear solves)
take microseconds, but right after torch's parallel kernels NumPy's OpenBLAS starts threads of
its own beside torch's OpenMP threads, which are still spinning: on 2 cores a 40 x 40
``numpy.linalg.eigh`` then took 10 ms instead of 0.1 ms (measured). One BLAS thread for these
calls avoids that; setting and restoring the limit costs about 10 microseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_controller: Any = None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Limit the BLAS libraries loaded in this process to one thread inside the block."""
    global _controller
    if _controller is None:  # finding the loaded libraries takes a few ms: do it once
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield
