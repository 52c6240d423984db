"""Dense multi-task learning on generated scenes: every architecture x method x seed.

    python benchmarks/dense_scenes.py                  # the table in docs/results/dense.md
    python benchmarks/dense_scenes.py --quick          # a smoke run (1 seed, 1 epoch)

Tasks: semantic segmentation (5 classes), depth, surface normals, edges, on scenes from
``manytask.data.dense.render_scene``. For each seed the single-task networks (hard sharing with
one task, same backbone and schedule) give the baselines of Δm. Reported per architecture and
method: each task's main metric (mean over seeds), Δm (mean ± std over seeds), parameters,
forward FLOPs per image, time per training step relative to hard sharing with equal weighting
in the same run, and the cost of the streaming metrics as a share of evaluation time. A figure
of qualitative predictions (input, target and prediction per task) is written beside the table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import manytask
from manytask.data.dense import Augment, DenseBatches, DenseData
from manytask.dense import DenseTask, directions, evaluate_dense
from manytask.evaluation import delta_m
from manytask.models.dense import (
    TAPS,
    ControllableMTL,
    DenseCrossStitch,
    DenseHardSharing,
    LearnToBranch,
    M3ViT,
    Medusa,
    ResNetBackbone,
    TaskExpert,
    dense_mtan,
)

ROOT = Path(__file__).resolve().parents[1]
TASKS = [DenseTask.segmentation("semantic", 5), DenseTask.depth(), DenseTask.normal(),
         DenseTask.edge()]
CHANNELS = (16, 32, 48)


def backbone() -> ResNetBackbone:
    return ResNetBackbone(CHANNELS)


def architectures(size: int) -> dict[str, object]:
    return {
        "hard_sharing": lambda tasks: DenseHardSharing(tasks, backbone()),
        "mtan": lambda tasks: dense_mtan(tasks, backbone()),
        "cross_stitch": lambda tasks: DenseCrossStitch(tasks, backbone()),
        "taskexpert": lambda tasks: TaskExpert(tasks, backbone()),
        "medusa": lambda tasks: Medusa(tasks, backbone()),
        "controllable": lambda tasks: ControllableMTL(tasks, channels=CHANNELS),
        "m3vit": lambda tasks: M3ViT(tasks, image_size=size, patch=4, dim=48, depth=4),
        "taps": lambda tasks: TAPS(tasks, backbone()),
        "learn_to_branch": lambda tasks: LearnToBranch(tasks, backbone(), widths=[1, 2]),
    }


METHODS = {"equal": ("equal", "exact"), "uncertainty": ("uncertainty", "exact"),
           "mgda": ("mgda", "feature")}


def train(model, tasks, method_name, mode, data, epochs, seed) -> float:
    """Train; return the mean seconds per step."""
    torch.manual_seed(seed)
    method = manytask.make_balancer(method_name)
    method.setup([t.name for t in tasks])
    opt = torch.optim.Adam([*model.parameters(), *method.parameters()], lr=2e-3)
    batches = DenseBatches(data, 16, shuffle=True, augment=Augment(), seed=seed)
    times = []
    for _ in range(epochs):
        for x, targets in batches:
            start = time.perf_counter()
            train_step(model, tasks, method, mode, opt, x, targets)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step(model, tasks, method, mode, opt, x, targets) -> None:
    """One optimizer step of ``model`` on the batch ``(x, targets)`` through ``method``."""
    names = {t.name for t in tasks}
    outputs, feats = model(x, return_features=True)
    losses = manytask.task_losses(tasks, outputs,
                                  {k: v for k, v in targets.items() if k in names})
    if isinstance(model, TAPS):
        losses = {k: v + 1e-3 * model.sparsity_penalty() / len(losses)
                  for k, v in losses.items()}
    manytask.backward(losses, method, features=feats, mode=mode,
                      shared_params=model.shared_parameters())
    opt.step()
    opt.zero_grad()


def flops(model, size: int) -> int:
    counter = FlopCounterMode(display=False)
    model.eval()
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    model.train()
    return counter.get_total_flops()


def figure(train_data: DenseData, test_data: DenseData, epochs: int, path: Path) -> None:
    """Input, target and prediction of each task for three test scenes (hard sharing, MGDA)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    model = DenseHardSharing(TASKS, backbone())
    train(model, TASKS, "mgda", "feature", train_data, epochs, 0)
    model.eval()
    x = test_data.images[:3]
    with torch.no_grad():
        out = model(x)
    show = {
        "semantic": lambda t: t.argmax(0) if t.dim() == 3 else t,
        "depth": lambda t: t[0],
        "normal": lambda t: (torch.nn.functional.normalize(t, dim=0).permute(1, 2, 0) + 1) / 2,
        "edge": lambda t: torch.sigmoid(t[0]) if t.min() < 0 or t.max() > 1 else t[0],
    }
    fig, axes = plt.subplots(3, 9, figsize=(18, 6))
    for row in range(3):
        axes[row, 0].imshow(x[row].permute(1, 2, 0).clamp(0, 1))
        for i, task in enumerate(("semantic", "depth", "normal", "edge")):
            target = test_data.targets[task][row]
            scale = {"semantic": (0, 4), "depth": (0, float(target.max())),
                     "edge": (0, 1)}.get(task, (None, None))
            axes[row, 1 + 2 * i].imshow(show[task](target.float()), vmin=scale[0], vmax=scale[1])
            axes[row, 2 + 2 * i].imshow(show[task](out[task][row].float()), vmin=scale[0],
                                        vmax=scale[1])
            if row == 0:
                axes[row, 1 + 2 * i].set_title(f"{task}: target")
                axes[row, 2 + 2 * i].set_title(f"{task}: predicted")
        for ax in axes[row]:
            ax.axis("off")
    axes[0, 0].set_title("input")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--train", type=int, default=192)
    ap.add_argument("--test", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--archs", nargs="+", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--figure-only", action="store_true",
                    help="only train hard sharing with MGDA and draw its predictions")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "dense.md")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.train, args.test = [0], 1, 32, 16
    torch.set_num_threads(1)
    started = time.time()
    train_data = DenseData.scenes(args.train, args.size, seed=0)
    test_data = DenseData.scenes(args.test, args.size, seed=100_000)
    picture = args.out.parent / "dense" / "predictions.png"
    if args.figure_only:
        figure(train_data, test_data, args.epochs, picture)
        print(f"wrote {picture}")
        return
    dirs = directions(TASKS)
    builders = architectures(args.size)
    names = args.archs or list(builders)

    baselines = {}
    for seed in args.seeds:
        per_task = {}
        for task in TASKS:
            torch.manual_seed(seed)
            model = DenseHardSharing([task], backbone())
            train(model, [task], "equal", "exact", train_data, args.epochs, seed)
            per_task.update(evaluate_dense(model, DenseBatches(test_data, 32), [task]))
        baselines[seed] = per_task
        mains = {t.name: round(per_task[t.name][t.main_metric], 4) for t in TASKS}
        print(f"baselines seed {seed}: {mains}", flush=True)

    rows, reference_step = [], None
    for arch in names:
        for method, (balancer, mode) in METHODS.items():
            results, steps, gains = [], [], []
            for seed in args.seeds:
                torch.manual_seed(seed)
                model = builders[arch](TASKS)
                steps.append(train(model, TASKS, balancer, mode, train_data, args.epochs, seed))
                res = evaluate_dense(model, DenseBatches(test_data, 32), TASKS)
                results.append(res)
                gains.append(delta_m(res, baselines[seed], dirs,
                                     metrics={t.name: [t.main_metric] for t in TASKS}))
            step = statistics.median(steps)
            if arch == "hard_sharing" and method == "equal":
                reference_step = step
            params = sum(p.numel() for p in model.parameters())
            mean = {t.name: statistics.mean(r[t.name][t.main_metric] for r in results)
                    for t in TASKS}
            rows.append((arch, method, mean, statistics.mean(gains),
                         statistics.pstdev(gains), params, flops(model, args.size), step))
            print(f"{arch:16s} {method:12s} Δm {rows[-1][3]:+7.2f} ± {rows[-1][4]:.2f}  "
                  f"step {step * 1e3:6.1f} ms", flush=True)
            write_table(args, rows, reference_step, None, started)

    # the streaming metrics' share of evaluation time, on hard sharing: forwards and meter
    # updates timed separately over the same pass
    model = builders["hard_sharing"](TASKS).eval()
    meters = {t.name: t.meter() for t in TASKS}
    forward_s = update_s = 0.0
    with torch.no_grad():
        for x, targets in DenseBatches(test_data, 32):
            start = time.perf_counter()
            outputs = model(x)
            forward_s += time.perf_counter() - start
            start = time.perf_counter()
            for t in TASKS:
                meters[t.name].update(outputs[t.name], targets[t.name])
            update_s += time.perf_counter() - start
    share = update_s / (forward_s + update_s)

    write_table(args, rows, reference_step, share, started, final=True)
    figure(train_data, test_data, args.epochs, picture)


def write_table(args, rows, reference_step, share, started, final=False) -> None:
    lines = [
        "# Dense tasks on generated scenes",
        "",
        f"`python benchmarks/dense_scenes.py {'--quick' if args.quick else ''}`".replace(" `", "`"),
        "",
        f"{args.train} training and {args.test} test scenes at {args.size} x {args.size} pixels, "
        f"{args.epochs} epochs of Adam (lr 2e-3, batch 16, flips and scale-crops), seeds "
        f"{args.seeds}, one CPU thread; ResNet backbone {list(CHANNELS)} unless the architecture "
        f"has its own. Main metrics: mIoU (higher), depth absolute error (lower), normal mean "
        f"angle in degrees (lower), edge max-F (higher). Δm over single-task hard-sharing "
        f"networks of the same backbone and schedule, per seed, on the main metrics. Step time "
        f"relative to hard sharing with equal weighting, median over steps. Run took "
        f"{(time.time() - started) / 60:.1f} min.",
        "",
        "| architecture | method | mIoU | depth abs | normal ° | edge F | Δm % | params | "
        "MFLOPs | step ÷ hard sharing |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arch, method, mean, gain, spread, params, fl, step in rows:
        lines.append(
            f"| {arch} | {method} | {mean['semantic']:.3f} | {mean['depth']:.3f} | "
            f"{mean['normal']:.1f} | {mean['edge']:.3f} | {gain:+.1f} ± {spread:.1f} | "
            f"{params / 1e3:.0f}k | {fl / 1e6:.1f} | "
            f"{step / reference_step if reference_step else float('nan'):.2f} |")
    if share is not None:
        lines += ["", f"Streaming metrics: {100 * share:.1f} % of evaluation time (hard "
                      f"sharing, {args.test} scenes, meter updates timed apart from forwards)."]
    if not final:
        lines += ["", f"(partial: {len(rows)} rows so far)"]
    lines += ["", "![predictions](dense/predictions.png)", "",
              "Input, target and prediction per task on three test scenes (hard sharing, MGDA, "
              "seed 0; `--figure-only` redraws it)."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    if final:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
