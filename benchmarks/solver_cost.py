"""Cost of one decision of the Gramian methods on degenerate inputs, ours vs torchjd 0.18.

Inputs (float32 gradients, as training produces them): ``20x10 rank 5`` (more tasks than rank,
issue 13's case), ``20x10 noisy`` (the same Jacobian with its Gramian formed in float32, which
rounding makes full rank and indefinite: the input our former float32 accumulation produced),
``40x64`` (full rank), and ``step-cost 40``: the feature-level input of the step-cost reference
model with 40 linear heads (``benchmarks/step_cost.py``, first step: the 40 per-task gradients
w.r.t. the 256 x 512 features, and our Gramian of them from the linear-head identity). Ours is
the balancer's ``decide`` on the float64 Gramian from :func:`manytask.engine.gradients.gramian_of`
(for ``noisy``, on the float32 product); torchjd's is its aggregator on the Jacobian (it forms
its own Gramian: for ``step-cost 40`` a 40 x 131,072 product, most of its time). Median of
``--repeats`` calls after one warm-up, in milliseconds, with one BLAS thread (a call over
0.5 s is timed once, the warm-up).

    OMP_NUM_THREADS=1 python benchmarks/solver_cost.py --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from manytask.balancers import make_balancer
from manytask.engine.gradients import gramian_of
from manytask.engine.linear_heads import linear_heads

# Our name -> torchjd's class and its arguments for K tasks (same method and defaults; the
# conventions may differ by a constant factor, which costs nothing). MoDo and SDMGrad are
# torchjd weightings: they take the Gramian, as ours do.
PEERS: dict[str, tuple[str, Callable[[int], dict[str, object]], bool]] = {
    "upgrad": ("UPGrad", lambda k: {}, False),
    "dualproj": ("DualProj", lambda k: {}, False),
    "mgda": ("MGDA", lambda k: {}, False),
    "cagrad": ("CAGrad", lambda k: {"c": 0.4}, False),
    "imtl_g": ("IMTLG", lambda k: {}, False),
    "aligned_mtl": ("AlignedMTL", lambda k: {}, False),
    "config": ("ConFIG", lambda k: {}, False),
    "nash_mtl": ("NashMTL", lambda k: {"n_tasks": k}, False),
    "fairgrad": ("FairGrad", lambda k: {"alpha": 1.0}, False),
    "modo": ("MoDoWeighting", lambda k: {}, True),
    "sdmgrad": ("SDMGradWeighting", lambda k: {}, True),
}


def step_cost_input() -> tuple[torch.Tensor, torch.Tensor]:
    """The step-cost model's feature Jacobian (K = 40, linear heads) and our Gramian of it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from step_cost import Problem

    problem = Problem.build(40, heads="linear")
    losses, features = problem.forward(problem.model)
    rows = [torch.autograd.grad(loss, features, retain_graph=True)[0].reshape(-1)
            for loss in losses]
    heads = linear_heads(losses, [features])
    assert heads is not None
    return torch.stack(rows).detach(), heads.gramian()


def inputs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    low = torch.randn(20, 5, generator=gen) @ torch.randn(5, 10, generator=gen)
    full = torch.randn(40, 64, generator=gen)
    return {
        "20x10 rank 5": (low, gramian_of([low])),
        "20x10 noisy": (low, (low @ low.T).double()),
        "40x64": (full, gramian_of([full])),
        "step-cost 40": step_cost_input(),
    }


def median_ms(call: Callable[[], object], repeats: int) -> float:
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    if first > 0.5:  # a slow call is timed once, so that the script stays within minutes
        return 1e3 * first
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        from torchjd import aggregation
    except ImportError:  # the table then has our column only
        aggregation = None
    data = inputs()
    print("| method | " + " | ".join(f"{n}: ours / torchjd (ms)" for n in data) + " |")
    print("|---|" + "---|" * len(data))
    for name, (peer, kwargs, on_gramian) in PEERS.items():
        cells = []
        for J, G in data.values():
            k = J.shape[0]
            tasks = tuple(f"t{i}" for i in range(k))
            method = make_balancer(name)
            method.setup(tasks)
            losses = torch.ones(k)
            ours = median_ms(lambda m=method, t=tasks, g=G, lo=losses: m.decide(lo, t, g),
                             args.repeats)
            theirs = "-"
            if aggregation is not None:
                agg = getattr(aggregation, peer)(**kwargs(k))
                x = G if on_gramian else J
                try:
                    theirs = f"{median_ms(lambda a=agg, x=x: a(x), args.repeats):.2f}"
                except Exception as err:  # a peer's failure is a result here
                    theirs = f"fails ({type(err).__name__})"
            cells.append(f"{ours:.2f} / {theirs}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
