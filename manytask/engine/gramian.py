"""The K x K Gramian ``G = sum_b B_b B_b^T`` of per-task gradient blocks, float64.

Two ways to form it, and a certificate that picks between them:

* **float32 products** (fast): each block is multiplied in float32, ``CHUNK`` columns at a
  time, and the products are accumulated in float64. A float32 dot product of length ``n``
  errs by at most ``gamma_n ||x|| ||y||`` with ``gamma_n = n u / (1 - n u)``, ``u = 2^-24``
  (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, Section 3.1, whatever the
  summation order), so with chunks of ``CHUNK`` and float64 sums across them (Cauchy-Schwarz
  over the chunks) every entry of the cosine matrix ``C = S^-1 G S^-1`` (``S = diag(||g_k||)``)
  errs by at most ``GAMMA = gamma_CHUNK`` (2.4e-4), and ``||E_C||_2 <= K GAMMA``. Rounding is
  rarely that bad: on the step-cost model (K = 10 and 40, both head kinds, exact and feature
  level; blocks of up to 262,144 values per task) the error in ``C`` was at most 2.4e-7, and
  the weights of MGDA, IMTL-G, Aligned-MTL, UPGrad, DualProj, CAGrad, Nash-MTL and ConFIG
  agreed with those on the float64 product to 1.3e-7 relative.
* **float64 products** (exact up to 1e-16): each block is cast to float64 ``CHUNK`` columns at
  a time (the extra memory is one chunk) before its product. About 3x the time of the float32
  products on CPU; much more on GPUs with slow float64.

The float32 Gramian is kept only when it is certified: finite, every squared norm at least
``FLOOR`` (no float32 product underflowed materially, no zero gradient), and
``lambda_min(C) > TAU_PER_TASK * K = 4 K GAMMA`` (a Cholesky factorisation of ``C - tau I``).
Then even the worst-case error moves ``C`` by less than a quarter of its smallest eigenvalue,
so the Jacobian certainly has full rank K, and a method's weights, which move by about
``||E_C|| / lambda_min(C)``, move by at most 1/4 in the worst case and by less than 4e-3 with
errors of the usual size (``u sqrt(CHUNK)`` per entry rather than ``CHUNK u``).

Everywhere else -- more tasks than the rank, duplicate or opposite tasks, a zero gradient,
gradients near 1e19 (overflow) or 1e-19 (underflow) -- the float64 product decides: there a
float32 product has noise of 1e-7 relative that makes a rank-deficient Jacobian full rank, and
IMTL-G, ConFIG and Aligned-MTL then solve for the noise (issue 13). Small inputs (up to
``SMALL`` values in all) and blocks in other dtypes always take the float64 product, which
costs nothing there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

CHUNK = 4096
_U = 2.0**-24
GAMMA = CHUNK * _U / (1 - CHUNK * _U)
TAU_PER_TASK = 4 * GAMMA
# A float32 product below 2^-126 is subnormal or zero: it errs by at most 2^-149, so over
# D < 2^31 values by less than 2^-118, below 2^-18 of ||g_i|| ||g_j|| when every squared
# norm is at least FLOOR (and far below GAMMA).
FLOOR = 2.0**-100
SMALL = 1 << 18


def gramian_of(blocks: Sequence[Tensor]) -> Tensor:
    """``sum_b B_b B_b^T`` over blocks of shape (K, ...), float64 (see the module docstring)."""
    k = blocks[0].shape[0]
    flats = [b.reshape(k, -1) for b in blocks]
    fast = all(f.dtype == torch.float32 for f in flats) and sum(f.numel() for f in flats) > SMALL
    if fast:
        gram = _product(flats, torch.float32)
        gram = 0.5 * (gram + gram.T)  # a float32 GEMM's A A^T need not be symmetric
        if certified(gram):
            return gram
    return _product(flats, torch.float64)


def _product(flats: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """``sum F F^T`` with products in ``dtype``, ``CHUNK`` columns at a time, float64 sums."""
    k = flats[0].shape[0]
    gram = torch.zeros((k, k), dtype=torch.float64, device=flats[0].device)
    for flat in flats:
        for chunk in flat.split(CHUNK, dim=1):
            part = chunk.to(dtype)
            gram += (part @ part.T).to(torch.float64)
    return gram


def certified(gram: Tensor) -> bool:
    """Whether a Gramian formed from float32 products is as good as the float64 one: finite,
    no squared norm below ``FLOOR``, and ``lambda_min(C) > TAU_PER_TASK * K``."""
    k = gram.shape[0]
    g = gram.detach().to("cpu")
    if not bool(torch.isfinite(g).all()):
        return False
    diag = g.diagonal()
    if bool((diag < FLOOR).any()):
        return False
    inv = diag.rsqrt()
    cos = g * inv[:, None] * inv[None, :]
    shifted = cos - TAU_PER_TASK * k * torch.eye(k, dtype=torch.float64)
    _, info = torch.linalg.cholesky_ex(shifted)
    return int(info) == 0
