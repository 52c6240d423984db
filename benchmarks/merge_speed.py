"""Merge speed and memory: manytask beside mergekit on a random Llama-style model.

Builds, offline, a random Llama-style base model (with transformers when installed, else the
same tensor layout by hand) plus ``--variants`` fine-tuned variants (base plus small random
deltas), then runs each merge in its own process and reports whole-process wall time and peak
anonymous memory (``RssAnon`` polled from /proc, summed over the process tree: unlike RSS it
does not count memory-mapped file pages). Baselines: reading every input and writing one output
with plain safetensors, and a streaming float32 mean of all inputs (the floor any merge that
reads every input and computes in float32 pays).

    python benchmarks/merge_speed.py                        # the issue's set-up (~0.6 GB)
    python benchmarks/merge_speed.py --hidden 512 --layers 2 --vocab 8000   # a quick check

Prints a table and writes it as JSON (``--json``). mergekit is run through ``mergekit-yaml``
when that command is installed (``--no-mergekit`` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

METHODS = {
    "linear": ({}, {"weight": 1.0}),
    "task_arithmetic": ({"lambda": 1.0}, {"weight": 1.0}),
    "ties": ({"lambda": 1.0}, {"weight": 1.0, "density": 0.5}),
    "dare_ties": ({"lambda": 1.0}, {"weight": 1.0, "density": 0.5}),
    "della": ({"lambda": 1.0}, {"weight": 1.0, "density": 0.5, "epsilon": 0.1}),
    # mergekit's methods added in issue 17 (per-tensor rules; see docs/merging.md)
    "slerp": ({"t": 0.3}, {}),
    "nuslerp": ({}, {"weight": 0.5}),
    "multislerp": ({}, {"weight": 1.0}),
    "karcher": ({}, {}),
    "sce": ({"select_topk": 0.5}, {}),
    "ram": ({}, {}),
    "ramplus_tl": ({}, {}),
    "nearswap": ({"t": 1e-3}, {}),
    "arcee_fusion": ({}, {}),
}
# Methods that take a set number of models besides the base (others take all variants).
N_MODELS = {"slerp": 1, "nuslerp": 2, "nearswap": 1, "arcee_fusion": 1}


# ------------------------------------------------------------------------------ measurement
def _rss_anon_kib(pid: int) -> int:
    """RssAnon of ``pid`` and all its descendants, in KiB (0 if it is gone)."""
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``cmd``; return wall seconds, CPU seconds (user + system, of the process and its
    waited-for children) and peak RssAnon (GB) of its process tree. CPU time is the figure to
    compare on a machine shared with other jobs, where wall time mostly measures the queue."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_anon_kib(proc.pid))
            time.sleep(0.01)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.decode()[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"seconds": wall, "cpu_s": cpu, "heap_gb": peak * 1024 / 1e9}


def measure_median(cmd: list[str], repeat: int, before: Callable[[], object]) -> dict[str, float]:
    """``measure`` ``repeat`` times (``before`` each run); the median wall and CPU seconds and
    the largest heap. One run's wall time on a small shared machine varies by 30% or more."""
    runs = []
    for _ in range(repeat):
        before()
        runs.append(measure(cmd))
    out = {key: statistics.median(r[key] for r in runs) for key in ("seconds", "cpu_s")}
    out["heap_gb"] = max(r["heap_gb"] for r in runs)
    out["runs"] = len(runs)
    return out


# ---------------------------------------------------------------------------- model building
def llama_config(args: argparse.Namespace) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": args.layers,
        "num_attention_heads": max(1, args.hidden // 64),
        "num_key_value_heads": max(1, args.hidden // 64),
        "vocab_size": args.vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def build_models(args: argparse.Namespace, root: Path) -> list[Path]:
    """Write the base and the variants (each a folder with config.json + model.safetensors)."""
    import torch
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    base_dir = root / "base"
    cfg = llama_config(args)
    if not (base_dir / "model.safetensors").exists():
        base_dir.mkdir(parents=True, exist_ok=True)
        try:
            import transformers

            config = transformers.LlamaConfig(**{k: v for k, v in cfg.items()
                                                 if k not in ("architectures", "model_type",
                                                              "torch_dtype")})
            config.architectures = ["LlamaForCausalLM"]
            previous = torch.get_default_dtype()
            torch.set_default_dtype(torch.bfloat16)  # build in bf16 directly
            try:
                model = transformers.LlamaForCausalLM(config)
            finally:
                torch.set_default_dtype(previous)
            model.save_pretrained(base_dir, safe_serialization=True, max_shard_size="100GB")
            del model
            print(f"built the base with transformers {transformers.__version__}")
        except ImportError:
            sd = {}
            h, i = args.hidden, args.intermediate
            sd["model.embed_tokens.weight"] = torch.randn(args.vocab, h) * 0.02
            sd["lm_head.weight"] = torch.randn(args.vocab, h) * 0.02
            sd["model.norm.weight"] = torch.ones(h)
            for layer in range(args.layers):
                p = f"model.layers.{layer}."
                for n in "qkvo":
                    sd[p + f"self_attn.{n}_proj.weight"] = torch.randn(h, h) * 0.02
                sd[p + "mlp.gate_proj.weight"] = torch.randn(i, h) * 0.02
                sd[p + "mlp.up_proj.weight"] = torch.randn(i, h) * 0.02
                sd[p + "mlp.down_proj.weight"] = torch.randn(h, i) * 0.02
                sd[p + "input_layernorm.weight"] = torch.ones(h)
                sd[p + "post_attention_layernorm.weight"] = torch.ones(h)
            save_file({k: v.bfloat16() for k, v in sd.items()},
                      str(base_dir / "model.safetensors"), metadata={"format": "pt"})
            (base_dir / "config.json").write_text(json.dumps(cfg, indent=2))
            print("built the base by hand (transformers is not installed)")
    paths = [base_dir]
    base_sd = None
    for v in range(args.variants):
        d = root / f"variant{v}"
        paths.append(d)
        if (d / "model.safetensors").exists():
            continue
        if base_sd is None:
            base_sd = load_file(str(base_dir / "model.safetensors"))
        d.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(100 + v)
        variant = {}
        for k, t in base_sd.items():
            delta = torch.randn(t.shape, generator=g).mul_(args.delta_scale)
            variant[k] = (t.float() + delta).to(t.dtype)
            del delta
        save_file(variant, str(d / "model.safetensors"), metadata={"format": "pt"})
        del variant
        shutil.copy(base_dir / "config.json", d / "config.json")
    return paths


# ----------------------------------------------------------------------------- the commands
BASELINE_COPY = """
import sys
from safetensors.torch import load_file, save_file
sds = [load_file(p + "/model.safetensors") for p in sys.argv[2:]]
save_file(sds[0], sys.argv[1] + "/model.safetensors")
"""

BASELINE_MEAN = """
import sys, torch
from safetensors import safe_open
from manytask.merging.writer import OutputTensor, ShardedWriter
from pathlib import Path
torch.set_num_threads(int(sys.argv[2]))
handles = [safe_open(p + "/model.safetensors", "pt") for p in sys.argv[3:]]
names = sorted(handles[0].keys())
outs = []
for n in names:
    s = handles[0].get_slice(n)
    outs.append(OutputTensor(n, tuple(s.get_shape()), torch.bfloat16))
w = ShardedWriter(Path(sys.argv[1]), outs, 10**12)
for n in names:
    w.begin(n)
    acc = handles[0].get_tensor(n).float()
    for h in handles[1:]:
        acc += h.get_tensor(n).float()
    w.write(acc.div_(len(handles)).bfloat16())
    del acc
w.close()
"""

# As ``manytask merge`` does: a process of its own, so it lets glibc reuse freed memory.
OURS = """
import sys, torch
torch.set_num_threads(int(sys.argv[3]))
from manytask.merging import merge
from manytask.merging.allocator import reuse_freed_memory
if sys.argv[4] == "1":
    reuse_freed_memory()
merge(sys.argv[1], sys.argv[2])
"""


def config_for(method: str, paths: list[Path], convention: bool) -> dict:
    params, per_model = METHODS[method]
    chosen = paths[1:][: N_MODELS.get(method, len(paths))]
    cfg: dict = {"merge_method": method, "dtype": "bfloat16",
                 "models": [{"model": str(p), "parameters": dict(per_model)} for p in chosen]}
    cfg["parameters"] = dict(params)
    if method != "linear":
        cfg["base_model"] = str(paths[0])
    if method == "slerp":  # mergekit lists the base among the models
        cfg["models"].insert(0, {"model": str(paths[0])})
    if convention:  # ours reads the same file with mergekit's meanings
        cfg["convention"] = "mergekit"
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--variants", type=int, default=3)
    ap.add_argument("--delta-scale", type=float, default=1e-3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for our merges (1 is fastest on a shared machine)")
    ap.add_argument("--workdir", default="/tmp/manytask_merge_bench")
    ap.add_argument("--no-mergekit", action="store_true")
    ap.add_argument("--plain-malloc", action="store_true",
                    help="leave glibc's allocator settings alone (manytask merge raises them)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each of our commands (median reported); mergekit runs once")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")

    tag = f"h{args.hidden}_l{args.layers}_i{args.intermediate}_v{args.vocab}_n{args.variants}"
    root = Path(args.workdir) / tag
    paths = build_models(args, root / "models")
    size = sum((p / "model.safetensors").stat().st_size for p in paths[:1]) / 1e9
    print(f"model: {size:.2f} GB per checkpoint, {len(paths)} checkpoints, in {root}")
    py = sys.executable
    out = root / "out"
    results: dict[str, dict] = {}

    def fresh() -> Path:
        shutil.rmtree(out, ignore_errors=True)
        return out

    os.sync()  # the checkpoints just written must not be flushed during the first timings

    def ours(cmd: list[str], make_out: bool = True) -> dict[str, float]:
        return measure_median(cmd, args.repeat,
                              lambda: fresh().mkdir() if make_out else fresh())

    results["import manytask"] = {"ours": ours([py, "-c", "import manytask"])}
    results["baseline: safetensors read all, write one"] = {
        "ours": ours([py, "-c", BASELINE_COPY, str(out), *map(str, paths)])
    }
    results["baseline: streaming fp32 mean"] = {
        "ours": ours([py, "-c", BASELINE_MEAN, str(out), str(args.threads), *map(str, paths)])
    }
    beside = Path(sys.executable).parent / "mergekit-yaml"  # a virtualenv not on PATH
    kit = None
    if not args.no_mergekit:
        kit = shutil.which("mergekit-yaml") or (str(beside) if beside.exists() else None)
    for method in methods:
        row: dict[str, dict] = {}
        cfg_path = root / f"{method}.yaml"
        cfg_path.write_text(yaml.safe_dump(config_for(method, paths, convention=True)))
        row["ours"] = ours([py, "-c", OURS, str(cfg_path), str(out), str(args.threads),
                            "0" if args.plain_malloc else "1"], make_out=False)
        if kit:
            kit_cfg = config_for(method, paths, convention=False)
            kit_path = root / f"{method}.mergekit.yaml"
            kit_path.write_text(yaml.safe_dump(kit_cfg))
            fresh()
            row["mergekit"] = measure([kit, str(kit_path), str(out), "--lazy-unpickle"])
        results[method] = row
        print(method, json.dumps(row))
    shutil.rmtree(out, ignore_errors=True)

    mean = results["baseline: streaming fp32 mean"]["ours"]
    mean_s, mean_cpu = mean["seconds"], mean["cpu_s"]
    print(f"\n{'':44s} {'ours s':>8s} {'cpu s':>7s} {'heap GB':>8s} {'/mean':>6s} "
          f"{'cpu/mean':>8s} {'mergekit s':>10s} {'heap GB':>8s} {'speed-up':>8s}")
    for name, row in results.items():
        o = row["ours"]
        line = (f"{name:44s} {o['seconds']:8.2f} {o['cpu_s']:7.2f} {o['heap_gb']:8.2f} "
                f"{o['seconds'] / mean_s:6.2f} {o['cpu_s'] / mean_cpu:8.2f}")
        if "mergekit" in row:
            k = row["mergekit"]
            line += (f" {k['seconds']:10.2f} {k['heap_gb']:8.2f} "
                     f"{k['seconds'] / o['seconds']:7.1f}x")
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": vars(args), "results": results},
                                              indent=2))
    print(textwrap.dedent(f"""
        wall: whole process, import included; cpu: user + system time of the process;
        heap: peak RssAnon of the process tree (largest over the runs).
        ours: median of {args.repeat} run(s); mergekit: one run.
        threads for our merges and the mean baseline: {args.threads}"""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
