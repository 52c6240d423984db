"""Cost of one training step of each balancer, relative to equal weighting in the same process.

The reference model: input 256, a shared trunk of three 512-unit ReLU layers, one linear head
per task (``--heads linear``, default) or one two-layer head per task (``--heads mlp``: 512 ->
64 -> ReLU -> 1), batch 256, MSE on random regression targets, 2 CPU threads. A step is
``zero_grad``, forward, ``manytask.backward`` and ``optimizer.step`` (plain SGD). Every method
starts from the same initial weights. Each row is timed **interleaved** with equal weighting
(and with torchjd's step for the same method, when there is one): ``--warmup`` untimed rounds,
then ``--steps`` rounds of one step of each in turn; the ratio is the median over the rounds of
the row's step time divided by equal weighting's in the same round, so that the drifts of a
shared machine's speed hit both alike. The ``equal`` row is equal weighting against a second
copy of itself: its distance from 1.00, and the spread of its per-round ratios given under the
table, show the noise.

Gradient-level methods (``requires`` "gramian" or "jacobian") are timed in both modes: ``exact``
(Gramian of the gradients w.r.t. the trunk's parameters) and ``feature`` (w.r.t. the trunk's
output). When torchjd is installed, torchjd's implementation of the same method is timed too,
with ``torchjd.autojac.mtl_backward`` then ``jac_to_grad`` over the trunk's parameters (its
documented multi-task usage, gradients w.r.t. the shared parameters like our exact mode); its
ratio is also against OUR equal-weighting step, in the same rounds. A row whose rounds exceed
``--budget`` seconds stops after at least 5 rounds; the table says so where it happens.

Usage::

    python benchmarks/step_cost.py --out step_cost.md            # K = 2, 10, 40; every method
    python benchmarks/step_cost.py --tasks 2 --steps 3            # smoke run
    python benchmarks/step_cost.py --methods equal mgda cagrad --tasks 10
    python benchmarks/step_cost.py --heads mlp --methods equal mgda --tasks 40
"""

from __future__ import annotations

import argparse
import copy
import inspect
import platform
import statistics
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import manytask
from manytask import HardSharing, Task
from manytask.balancers import Balancer, registry

IN_FEATURES, HIDDEN, BATCH = 256, (512, 512, 512), 256
HEAD_HIDDEN = {"linear": (), "mlp": (64,)}

# Values for parameters a balancer requires (no default); a method absent here and with a
# required parameter is skipped, with a note.
REQUIRED_PARAMS: dict[str, dict[str, Any]] = {}


# ---------------------------------------------------------------------------- the reference step
@dataclass
class Problem:
    """The reference model and one fixed batch, for ``k`` regression tasks."""

    k: int
    model: HardSharing
    x: Tensor
    y: Tensor

    @classmethod
    def build(cls, k: int, seed: int = 0, heads: str = "linear") -> Problem:
        gen = torch.Generator().manual_seed(seed)
        tasks = [Task.regression(f"t{i}") for i in range(k)]
        torch.manual_seed(seed)
        model = HardSharing(tasks, IN_FEATURES, hidden=HIDDEN, head_hidden=HEAD_HIDDEN[heads])
        x = torch.randn(BATCH, IN_FEATURES, generator=gen)
        y = torch.randn(BATCH, k, generator=gen)
        return cls(k, model, x, y)

    @property
    def names(self) -> list[str]:
        return [f"t{i}" for i in range(self.k)]

    def fresh_model(self) -> HardSharing:
        return copy.deepcopy(self.model)  # same initial weights for every method

    def forward(self, model: HardSharing) -> tuple[list[Tensor], Tensor]:
        outputs, features = model(self.x, return_features=True)
        losses = [
            F.mse_loss(outputs[t].squeeze(-1), self.y[:, i]) for i, t in enumerate(self.names)
        ]
        return losses, features


def manytask_step(problem: Problem, balancer: Balancer, mode: str) -> Callable[[], None]:
    model = problem.fresh_model()
    balancer.setup(problem.names)  # before the optimizer: some balancers create parameters here
    params = list(model.parameters()) + list(balancer.parameters())
    opt = torch.optim.SGD(params, lr=1e-4)
    shared = list(model.shared_parameters())
    names = problem.names

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        losses, features = problem.forward(model)
        manytask.backward(
            dict(zip(names, losses, strict=True)),
            balancer,
            features=features,
            shared_params=shared,
            mode=mode,  # type: ignore[arg-type]
        )
        opt.step()

    return step


def torchjd_step(problem: Problem, aggregator: Any) -> Callable[[], None]:
    from torchjd.autojac import jac_to_grad, mtl_backward

    model = problem.fresh_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    shared = list(model.shared_parameters())

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        losses, features = problem.forward(model)
        mtl_backward(losses, features=features)
        jac_to_grad(shared, aggregator)
        opt.step()

    return step


# ---------------------------------------------------------------------------- torchjd peers
def torchjd_peer(name: str, balancer: Balancer, k: int) -> Any | None:
    """torchjd's aggregator for our method ``name`` (same hyper-parameters), or ``None``."""
    try:
        from torchjd import aggregation as agg
    except ImportError:
        return None
    hp = balancer.hparams()
    makers: dict[str, Callable[[], Any]] = {
        "equal": agg.Mean,
        "mgda": agg.MGDA,
        "pcgrad": agg.PCGrad,
        "cagrad": lambda: agg.CAGrad(c=float(hp.get("c", 0.4))),  # type: ignore[arg-type]
        "upgrad": agg.UPGrad,
        "imtl_g": agg.IMTLG,
        "aligned_mtl": agg.AlignedMTL,
        "dualproj": agg.DualProj,
        "nash_mtl": lambda: agg.NashMTL(n_tasks=k),
        "config": agg.ConFIG,
        "gradvac": lambda: agg.GradVac(beta=float(hp.get("beta", 0.5))),  # type: ignore[arg-type]
        "fairgrad": lambda: agg.FairGrad(alpha=float(hp.get("alpha", 1.0))),  # type: ignore[arg-type]
        "graddrop": agg.GradDrop,
        "excess_mtl": agg.ExcessMTL,
    }
    maker = makers.get(name)
    return None if maker is None else maker()


# ---------------------------------------------------------------------------- timing
@dataclass
class Timing:
    median_ms: float
    steps: int
    ratio: float  # median over rounds of this step's time / equal weighting's in that round


def interleaved(
    steps: Mapping[Any, Callable[[], None]], rounds: int, warmup: int = 1,
    budget: float | None = None,
) -> dict[Any, list[float]]:
    """Seconds of each step, timed in turn within each of ``rounds`` rounds after ``warmup``
    untimed rounds, so that a drift of a loaded machine's speed hits them alike. Every other
    round runs the steps in reverse order (A B C, C B A, ...): the first step of a round was
    measured up to 24 % slower than the same step run second, a bias this cancels. With a
    ``budget`` (seconds) the rounds stop once it is spent, after at least 5."""
    for _ in range(max(warmup, 1)):
        for step in steps.values():
            step()
    times: dict[Hashable, list[float]] = {key: [] for key in steps}
    began = time.perf_counter()
    order = list(steps.items())
    for done in range(rounds):
        for key, step in order if done % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - start)
        if budget is not None and done + 1 >= 5 and time.perf_counter() - began > budget:
            break
    return times


def against(times: Mapping[Any, list[float]], base: Any = "equal") -> dict[Any, Timing]:
    """Each step's median time and median per-round ratio to the step ``base``."""
    out: dict[Any, Timing] = {}
    for key, seconds in times.items():
        ratios = [t / b for t, b in zip(seconds, times[base], strict=True)]
        out[key] = Timing(1000 * statistics.median(seconds), len(seconds),
                          statistics.median(ratios))
    return out


def build_balancer(name: str) -> tuple[Balancer | None, str]:
    """Our balancer ``name`` with default parameters, or ``None`` and why it was skipped."""
    signature = inspect.signature(registry.get(name).__init__)
    required = [
        p.name for p in signature.parameters.values()
        if p.name != "self" and p.default is inspect.Parameter.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    params = REQUIRED_PARAMS.get(name, {})
    missing = [p for p in required if p not in params]
    if missing:
        return None, f"needs parameter(s) {missing}"
    try:
        return manytask.make_balancer(name, **params), ""
    except (TypeError, ValueError) as err:
        return None, f"could not be built: {err}"


# ---------------------------------------------------------------------------- the benchmark
@dataclass
class Row:
    method: str
    mode: str
    k: int
    ms: float | None = None
    ratio: float | None = None
    peer: Timing | None = None  # torchjd's step, when timed
    peer_note: str = "—"  # shown when there is no peer timing
    note: str = ""

    def peer_cell(self, steps: int) -> str:
        if self.peer is None:
            return self.peer_note
        reduced = f" ({self.peer.steps} steps)" if self.peer.steps < steps else ""
        return f"{self.peer.ratio:.2f}{reduced}"


def run(args: argparse.Namespace, log: Callable[[str], None]) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    methods = args.methods or manytask.available()
    unknown = sorted(set(methods) - set(manytask.available()))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; available: {manytask.available()}")
    use_peers = not args.no_torchjd
    for k in args.tasks:
        problem = Problem.build(k, seed=args.seed, heads=args.heads)
        control: list[float] = []  # per-round ratios of equal weighting to itself
        for name in methods:
            probe, why = build_balancer(name)
            if probe is None:
                rows.append(Row(name, "—", k, note=f"skipped: {why}"))
                continue
            modes = ["exact", "feature"] if probe.requires in ("gramian", "jacobian") else ["—"]
            for mode in modes:
                row = Row(name, mode, k)
                balancer, _ = build_balancer(name)  # a fresh one: state must not carry over
                assert balancer is not None
                equal = manytask.make_balancer("equal")
                group = {"equal": manytask_step(problem, equal, "exact")}
                try:
                    ours_mode = "exact" if mode == "—" else mode
                    group["ours"] = manytask_step(problem, balancer, ours_mode)
                except Exception as err:  # report it: one broken method must not hide the rest
                    row.note = f"error: {type(err).__name__}: {err}"
                peer = peer_step(name, problem, log) if use_peers and mode in ("exact", "—") \
                    else None
                if isinstance(peer, str):
                    row.peer_note = peer
                elif peer is not None:
                    group["peer"] = peer
                try:
                    times = interleaved(group, args.steps, args.warmup, args.budget)
                except Exception as err:  # a step failing mid-run: a result to report
                    row.note = f"error: {type(err).__name__}: {err}"
                    rows.append(row)
                    continue
                timed = against(times)
                if "ours" in timed:
                    row.ms, row.ratio = timed["ours"].median_ms, timed["ours"].ratio
                    if timed["ours"].steps < args.steps:
                        row.note = f"{timed['ours'].steps} steps"
                if name == "equal" and "ours" in times:
                    control += [t / b for t, b in zip(times["ours"], times["equal"], strict=True)]
                row.peer = timed.get("peer")
                row.peer_note = row.peer_cell(args.steps)
                rows.append(row)
                log(f"K={k}: {name} [{mode}] {row.ms} ms ratio {row.ratio} torchjd "
                    f"{row.peer_note} (equal {timed['equal'].median_ms:.2f} ms) {row.note}")
        if len(control) >= 10:
            deciles = statistics.quantiles(control, n=10)
            notes.append(f"K={k}: equal weighting against itself, per-round ratios: 10 % below "
                         f"{deciles[0]:.2f}, 10 % above {deciles[-1]:.2f}")
    if not use_peers:
        notes.append("torchjd peers not timed (--no-torchjd)")
    elif torchjd_peer("equal", manytask.make_balancer("equal"), 2) is None:
        notes.append("torchjd is not installed: no peer timings")
    return rows, notes


def peer_step(
    name: str, problem: Problem, log: Callable[[str], None]
) -> Callable[[], None] | str | None:
    """torchjd's step for method ``name``; ``None`` without a peer, or the text to show when
    building it failed."""
    probe, _ = build_balancer(name)
    aggregator = None if probe is None else torchjd_peer(name, probe, problem.k)
    if aggregator is None:
        return None
    try:
        return torchjd_step(problem, aggregator)
    except Exception as err:  # a peer failing is a result to report, not a crash
        log(f"torchjd {name} failed: {err}")
        return f"error ({type(err).__name__})"


def table(rows: list[Row]) -> str:
    lines = [
        "| method | mode | K | ms/step | ratio vs equal | torchjd ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ms = "—" if r.ms is None else f"{r.ms:.2f}"
        ratio = r.note or ("—" if r.ratio is None else f"{r.ratio:.2f}")
        if r.note and r.ms is not None:
            ratio = f"{r.ratio:.2f} ({r.note})"
        lines.append(f"| {r.method} | {r.mode} | {r.k} | {ms} | {ratio} | {r.peer_note} |")
    return "\n".join(lines)


def report(rows: list[Row], notes: list[str], args: argparse.Namespace) -> str:
    header = (
        "# Step cost relative to equal weighting\n\n"
        f"Model {IN_FEATURES} → {' → '.join(map(str, HIDDEN))} (ReLU) → one "
        f"{'linear head' if args.heads == 'linear' else 'two-layer head (64 ReLU units)'} "
        "per task, "
        f"batch {BATCH}, MSE, SGD; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}.\n"
        f"Interleaved with equal weighting (and torchjd's step) in {args.steps} rounds after "
        f"{args.warmup} warm-up rounds; ms/step: median; ratios: median over the rounds of "
        "the step's time over equal weighting's in the same round. `mode`: gradients "
        "w.r.t. the trunk's parameters (exact) or its output (feature); loss-level methods "
        "have one mode (—). torchjd ratio: torchjd's aggregator with `mtl_backward` + "
        "`jac_to_grad` (gradients w.r.t. the trunk's parameters), against our equal "
        "weighting; shown on the exact row. A step count in brackets: fewer rounds "
        f"(budget {args.budget:g} s per row). The `equal` row is equal weighting against a "
        "second copy of itself: its distance from 1.00 shows the noise.\n\n"
        f"Command: `{' '.join(['python', *sys.argv])}`\n"
    )
    body = table(rows)
    extra = "".join(f"\n- {n}" for n in notes)
    return f"{header}\n{body}\n" + (f"\nNotes:{extra}\n" if notes else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40],
                        help="numbers of tasks K (default 2 10 40)")
    parser.add_argument("--steps", type=int, default=30, help="timed rounds per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="balancer names (default: every registered balancer)")
    parser.add_argument("--out", default=None, help="also write the Markdown report here")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--budget", type=float, default=30.0,
                        help="seconds of timed rounds per row before cutting them (min 5)")
    parser.add_argument("--no-torchjd", action="store_true", help="do not time torchjd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heads", choices=sorted(HEAD_HIDDEN), default="linear",
                        help="one linear head per task (default) or two-layer heads")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or any(k < 1 for k in args.tasks):
        parser.error("--steps must be >= 1, --warmup >= 0 and every K >= 1")
    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    start = time.perf_counter()
    rows, notes = run(args, log)
    notes.append(f"whole run: {time.perf_counter() - start:.0f} s")
    text = report(rows, notes, args)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
