"""The streaming dense metrics' share of evaluation time (target: at most 5 %).

    python benchmarks/dense_metrics_cost.py                      # 32 x 32, as dense_scenes.py
    python benchmarks/dense_metrics_cost.py --sizes 32 64 128    # how the share moves with size

The model, tasks and test scenes are those of ``benchmarks/dense_scenes.py`` (hard sharing on
a ResNet [16, 32, 48] backbone; segmentation with 5 classes, depth, normals, edges; 64 scenes in
batches of 32; one torch thread). Each pass times the forwards and the four meters' updates
apart, in CPU time of the thread (``time.thread_time``), so that other processes on a shared
machine slow neither side; wall time is printed too. Reported per size: the median over
``--repeats`` passes of the metrics' share of forward + update time, and both costs per pixel
(the metrics per image pixel, all four tasks together), which says how much of the share is
owed to the network being tiny; ``--channels`` widens the backbone to show the same.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from manytask.data.dense import DenseBatches, DenseData
from manytask.dense import DenseTask
from manytask.models.dense import DenseHardSharing, ResNetBackbone

TASKS = [DenseTask.segmentation("semantic", 5), DenseTask.depth(), DenseTask.normal(),
         DenseTask.edge()]
CHANNELS = (16, 32, 48)


def one_pass(model: torch.nn.Module, batches: list) -> dict[str, float]:
    """Seconds of forwards and of meter updates over ``batches`` (CPU and wall time)."""
    meters = {t.name: t.meter() for t in TASKS}
    cpu = {"forward": 0.0, "metrics": 0.0}
    wall = {"forward": 0.0, "metrics": 0.0}
    with torch.no_grad():
        for x, targets in batches:
            c, w = time.thread_time(), time.perf_counter()
            outputs = model(x)
            cpu["forward"] += time.thread_time() - c
            wall["forward"] += time.perf_counter() - w
            c, w = time.thread_time(), time.perf_counter()
            for task in TASKS:
                meters[task.name].update(outputs[task.name].float(), targets[task.name])
            cpu["metrics"] += time.thread_time() - c
            wall["metrics"] += time.perf_counter() - w
    for meter in meters.values():
        meter.compute()
    return {"forward": cpu["forward"], "metrics": cpu["metrics"],
            "wall_forward": wall["forward"], "wall_metrics": wall["metrics"]}


def measure(size: int, scenes: int, batch: int, repeats: int,
            channels: tuple[int, ...] = CHANNELS) -> dict[str, float]:
    data = DenseData.scenes(scenes, size, seed=100_000)
    batches = list(DenseBatches(data, batch))
    torch.manual_seed(0)
    model = DenseHardSharing(TASKS, ResNetBackbone(channels)).eval()
    one_pass(model, batches[:1])  # warm-up: allocator, kernels' first calls
    passes = [one_pass(model, batches) for _ in range(repeats)]
    pixels = scenes * size * size
    share = [p["metrics"] / (p["metrics"] + p["forward"]) for p in passes]
    wall_share = [p["wall_metrics"] / (p["wall_metrics"] + p["wall_forward"]) for p in passes]
    return {
        "share": statistics.median(share),
        "wall_share": statistics.median(wall_share),
        "metrics_ns_per_pixel": 1e9 * statistics.median(p["metrics"] for p in passes) / pixels,
        "forward_ns_per_pixel": 1e9 * statistics.median(p["forward"] for p in passes) / pixels,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32])
    ap.add_argument("--scenes", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--channels", type=int, nargs="+", default=list(CHANNELS),
                    help="the backbone's stage widths (wider: a costlier forward per pixel)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| size | metrics ÷ (forward + metrics), CPU time | same, wall time | "
          "metrics ns / pixel (4 tasks) | forward ns / pixel |")
    print("|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        r = measure(size, args.scenes, args.batch, args.repeats, tuple(args.channels))
        print(f"| {size} | {100 * r['share']:.1f} % | {100 * r['wall_share']:.1f} % | "
              f"{r['metrics_ns_per_pixel']:.0f} | {r['forward_ns_per_pixel']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
