"""Multi-task adapters on the eight text tasks with the bundled MiniLM (all-MiniLM-L6-v2).

Every adapter method of :mod:`manytask.adapters` against single-task LoRA and against full
fine-tuning of the top two layers, trained jointly on mixed batches (one sub-batch per task
draw, tasks drawn with replacement), equal task weights through ``manytask.backward``:
per-task test accuracy, Δm against single-task LoRA, trainable parameters (heads excluded),
median time per step relative to one shared LoRA of rank 32, the peak resident memory of the
process (model, data, training). Each (method, seed) runs in a fresh process, so that the
peak is its own. Poly and MHR are also timed against PEFT's own Poly implementation with the
same configuration, in the same run.

Single-task LoRA is ``lora_per_task`` trained jointly: its tasks share no trainable
parameter and the weights are equal, so each task's LoRA and head receive exactly the
gradients (and Adam states) of training that task alone on the same sub-batches.

    python benchmarks/adapters_text.py --data-root ../shared/data/text          # full
    python benchmarks/adapters_text.py --data-root ../shared/data/text --train-cap 400 \
        --test-cap 200 --steps 60 --batch-size 16 --seeds 0                     # reduced
    python benchmarks/adapters_text.py --data-root ../shared/data/text --timing-only  # paired
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

TASK_NAMES = ["sst2", "mr", "cr", "subj", "mpqa", "cola", "rte", "trec"]
QV = ["query", "value"]
# name: (method, parameters, target modules); the routed ones have total rank 32
CONFIGS: dict[str, tuple[str, dict[str, Any], Any]] = {
    "lora_per_task": ("lora_per_task", {"r": 4}, QV),       # = single-task LoRA (see above)
    "lora_r32": ("lora", {"r": 32}, QV),
    "task_prompt_vectors": ("task_prompt_vectors", {"length": 10}, None),
    "lora_r4": ("lora", {"r": 4}, QV),
    "align_lora_r32": ("align_lora", {"r": 32}, QV),
    "mtl_lora": ("mtl_lora", {"r": 8, "n_up": 3}, QV),
    "moa": ("moa", {"r": 4}, QV),
    "mor1e": ("mor1e", {"n_experts": 32, "intuition_dim": 384}, QV),
    "poly": ("poly", {"r": 8, "n_skills": 4}, QV),
    "mhr": ("mhr", {"r": 8, "n_skills": 4, "n_splits": 4}, QV),
    "peft_poly": ("peft", {"r": 8, "n_skills": 4, "n_splits": 1}, QV),
    "peft_mhr": ("peft", {"r": 8, "n_skills": 4, "n_splits": 4}, QV),
    "scalearn": ("scalearn", {"r": 4}, QV),
    "scalearn_uniform": ("scalearn", {"r": 4, "uniform": True}, QV),
    "hyperx": ("hyperx", {"bottleneck": 8}, ["output.dense"]),
    "mpt": ("mpt", {"length": 10}, None),
    "finetune_top2": ("finetune", {"layers": 2}, None),
}


def load_data(args: argparse.Namespace, tokenizer: Any) -> tuple[list[Any], dict, dict]:
    from bundled import load_text_task

    tasks, train, test = [], {}, {}
    for k, name in enumerate(args.tasks):
        t = load_text_task(args.data_root, name).capped(args.train_cap, None, args.test_cap)
        tasks.append(t)
        for split, store in (("train", train), ("test", test)):
            s = t.split(split)
            pairs = isinstance(s.texts[0], tuple)
            first = [p[0] for p in s.texts] if pairs else list(s.texts)
            second = [p[1] for p in s.texts] if pairs else None
            tok = tokenizer(first, second, padding="max_length", truncation=True,
                            max_length=args.max_length, return_tensors="pt")
            store[name] = ({"input_ids": tok["input_ids"],
                            "attention_mask": tok["attention_mask"],
                            "token_type_ids": tok["token_type_ids"],
                            "task_ids": torch.full((len(s), 1), k)}, s.labels)
    return tasks, train, test


class Pooled(nn.Module):
    """Masked-mean features of a model called as ``call(x)`` (PEFT's Poly, top-layer tuning)."""

    def __init__(self, model: nn.Module, poly: bool) -> None:
        super().__init__()
        self.model, self.poly = model, poly

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = x["attention_mask"]
        keep = int(mask.any(0).nonzero()[-1, 0]) + 1
        kw = {"input_ids": x["input_ids"][:, :keep], "attention_mask": mask[:, :keep],
              "token_type_ids": x["token_type_ids"][:, :keep]}
        if self.poly:
            out = self.model.base_model(**kw, task_ids=x["task_ids"][:, 0])
        else:
            out = self.model(**kw)
        w = mask[:, :keep, None].float()
        return (out.last_hidden_state * w).sum(1) / w.sum(1)


def build(cfg: str, encoder: Any, tasks: list[Any], args: argparse.Namespace) -> nn.Module:
    from manytask.adapters import AdapterModel
    from manytask.models.base import MultiTaskModel

    method, params, targets = CONFIGS[cfg]
    mt_tasks = [t.task() for t in tasks]
    if method in ("peft", "finetune"):
        base = copy.deepcopy(encoder)
        if method == "peft":
            from peft import PolyConfig, get_peft_model

            base = get_peft_model(base, PolyConfig(target_modules=targets,
                                                   n_tasks=len(tasks), **params))
        else:
            for p in base.parameters():
                p.requires_grad_(False)
            for layer in base.encoder.layer[-params["layers"]:]:
                layer.requires_grad_(True)
        heads = {t.name: nn.Linear(384, t.out_features) for t in mt_tasks}
        return MultiTaskModel(Pooled(base, method == "peft"), heads)
    model = AdapterModel(copy.deepcopy(encoder), mt_tasks, method, target_modules=targets,
                         **params)
    folder = Path(args.out_dir) / f"seed{args.seed}"
    if method == "scalearn":  # stage 2: scale the trained single-task LoRAs (stage 1)
        from manytask.adapters.saving import load_adapter

        sources = load_adapter(folder / "lora_per_task", copy.deepcopy(encoder), mt_tasks)
        model.method.load_sources(sources.adapted.layers)
        model.heads.load_state_dict(sources.heads.state_dict())
    if cfg == "mpt":  # the shared prompt starts at the mean of the per-task (teacher) prompts
        from manytask.adapters.saving import load_adapter

        teachers = load_adapter(folder / "task_prompt_vectors", copy.deepcopy(encoder), mt_tasks)
        model.method.init_from_teachers(teachers.method.task_prompts.detach())
    return model


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import manytask
    from manytask.adapters import AdapterModel, intuition
    from manytask.data.encoders import load_minilm
    from manytask.data.text import MixedTaskBatches
    from manytask.tasks import task_losses

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    encoder, tokenizer = load_minilm()
    tasks, train, test = load_data(args, tokenizer)
    if args.config == "mor1e":  # intuition: k-means centroids of frozen sentence embeddings
        with torch.no_grad():
            for store in (train, test):
                for x, _ in store.values():
                    h = encoder(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                                token_type_ids=x["token_type_ids"]).last_hidden_state
                    w = x["attention_mask"][..., None].float()
                    x["intuition"] = (h * w).sum(1) / w.sum(1)
        fit = torch.cat([x["intuition"] for x, _ in train.values()])
        for store in (train, test):
            for x, _ in store.values():
                x["intuition"] = intuition(x["intuition"], 8, seed=args.seed, fit_on=fit)
    model = build(args.config, encoder, tasks, args)
    mt_tasks = [t.task() for t in tasks]
    batches = MixedTaskBatches({n: x for n, (x, _) in train.items()},
                               {n: y for n, (_, y) in train.items()}, args.batch_size,
                               tasks_per_batch=len(tasks), steps=args.steps, seed=args.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    head_ids = {id(p) for p in model.heads.parameters()}
    n_params = sum(p.numel() for p in trainable if id(p) not in head_ids)
    optimizer = torch.optim.Adam(trainable, lr=args.lr)
    # set up with every task: a batch draws its tasks with replacement, so the first one
    # may lack some (equal weights are 1 per present task either way)
    balancer = manytask.make_balancer("equal", tasks=[t.name for t in mt_tasks])
    times = []
    model.train()
    for x, y in batches:
        began = time.perf_counter()
        outputs = model(x)
        losses = task_losses(mt_tasks, outputs, y)
        optimizer.zero_grad(set_to_none=True)
        aux = model.auxiliary_loss() if isinstance(model, AdapterModel) else None
        if aux is not None:
            aux.backward(retain_graph=True)
        manytask.backward(losses, balancer)
        optimizer.step()
        times.append(time.perf_counter() - began)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # whole process, KiB
    model.eval()
    accuracy = {}
    with torch.no_grad():
        for name, (x, y) in test.items():
            correct = 0
            for i in range(0, y.shape[0], 64):
                part = {k: v[i:i + 64] for k, v in x.items()}
                correct += int((model(part)[name].argmax(-1) == y[i:i + 64]).sum())
            accuracy[name] = correct / y.shape[0]
    if args.config in ("lora_per_task", "task_prompt_vectors"):
        from manytask.adapters.saving import save_adapter

        save_adapter(model, Path(args.out_dir) / f"seed{args.seed}" / args.config,
                     overwrite=True)
    return {"config": args.config, "seed": args.seed, "accuracy": accuracy,
            "params": n_params, "step_s": statistics.median(times[2:] or times),
            "peak_mb": peak_kb / 1024, "train_s": sum(times)}


PAIRED = ["lora_r32", "lora_per_task", "moa", "mor1e", "poly", "peft_poly", "mhr", "peft_mhr"]


def paired_timing(args: argparse.Namespace) -> str:
    """Step times measured in turn on one batch in one process: every model takes one step,
    then the next, round after round, so that the machine's load hits all of them alike
    (what a loaded machine needs for a fair ratio). Returns a Markdown table of medians."""
    import manytask
    from manytask.adapters import AdapterModel
    from manytask.data.encoders import load_minilm
    from manytask.tasks import task_losses

    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder, tokenizer = load_minilm()
    tasks, train, _ = load_data(args, tokenizer)
    mt_tasks = [t.task() for t in tasks]
    per = max(args.batch_size // len(tasks), 1)
    x = {k: torch.cat([train[t.name][0][k][:per] for t in tasks]) for k in train[tasks[0].name][0]}
    x["intuition"] = torch.randn(x["input_ids"].shape[0], 384)
    y = {t.name: torch.full((x["input_ids"].shape[0],), -1) for t in tasks}
    for k, t in enumerate(tasks):
        y[t.name][k * per:(k + 1) * per] = train[t.name][1][:per]
    chosen = [c for c in PAIRED if c in args.configs]
    models = {c: build(c, encoder, tasks, args).train() for c in chosen}
    optimizers = {c: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], 1e-4)
                  for c, m in models.items()}
    # set up with every task: a batch draws its tasks with replacement, so the first one
    # may lack some (equal weights are 1 per present task either way)
    balancer = manytask.make_balancer("equal", tasks=[t.name for t in mt_tasks])
    times: dict[str, list[float]] = {c: [] for c in chosen}
    for _ in range(args.timing_rounds):
        for c, model in models.items():
            began = time.perf_counter()
            losses = task_losses(mt_tasks, model(x), y)
            optimizers[c].zero_grad(set_to_none=True)
            aux = model.auxiliary_loss() if isinstance(model, AdapterModel) else None
            if aux is not None:
                aux.backward(retain_graph=True)
            manytask.backward(losses, balancer)
            optimizers[c].step()
            times[c].append(time.perf_counter() - began)
    med = {c: statistics.median(v[1:]) for c, v in times.items()}
    rows = ["| method | median step s | / LoRA r32 | / PEFT's own |", "|---|---|---|---|"]
    ref = med.get("lora_r32")
    for c in chosen:
        peft = {"poly": "peft_poly", "mhr": "peft_mhr"}.get(c)
        rel = f"{med[c] / med[peft]:.2f}" if peft in med else "-"
        vs = f"{med[c] / ref:.2f}" if ref else "-"
        rows.append(f"| {c} | {med[c]:.3f} | {vs} | {rel} |")
    return "\n".join(rows) + "\n"


def table(results: list[dict[str, Any]], configs: list[str]) -> str:
    from manytask.evaluation.measures import delta_m

    by = {c: [r for r in results if r["config"] == c] for c in configs}
    mean_acc = {c: {t: statistics.mean(r["accuracy"][t] for r in rs) for t in rs[0]["accuracy"]}
                for c, rs in by.items() if rs}
    base = mean_acc.get("lora_per_task")
    ref = statistics.mean(r["step_s"] for r in by.get("lora_r32", [])) if by.get("lora_r32") \
        else None
    tasks = list(next(iter(mean_acc.values())))
    head = ["method", *tasks, "Δm %", "params", "step / LoRA r32", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, rs in by.items():
        if not rs:
            continue
        acc = mean_acc[c]
        dm = (delta_m({t: {"acc": v} for t, v in acc.items()},
                      {t: {"acc": v} for t, v in base.items()},
                      {t: {"acc": True} for t in acc}) if base else float("nan"))
        step = statistics.mean(r["step_s"] for r in rs)
        rel = f"{step / ref:.2f}" if ref else "-"
        cells = [c, *(f"{100 * acc[t]:.1f}" for t in tasks), f"{dm:+.1f}", f"{rs[0]['params']:,}",
                 rel, f"{statistics.mean(r['peak_mb'] for r in rs):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--tasks", nargs="+", default=TASK_NAMES)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--train-cap", type=int, default=2000)
    parser.add_argument("--test-cap", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out-dir", default="runs/bench-adapters")
    parser.add_argument("--timing-only", action="store_true",
                        help="only the paired step-time comparison (one process)")
    parser.add_argument("--timing-rounds", type=int, default=12)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.config:  # one (config, seed) in this process
        print(json.dumps(worker(args)))
        return
    if args.timing_only:
        began = time.perf_counter()
        text = paired_timing(args)
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.out_dir) / "timing.md").write_text(text)
        print(text + f"total {time.perf_counter() - began:.0f} s")
        return
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, began = [], time.perf_counter()
    for seed in args.seeds:
        for cfg in args.configs:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--config", cfg, "--seed", str(seed)]
            run = subprocess.run(cmd, capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
            if run.returncode != 0:
                tail = run.stderr.strip().splitlines()[-1:] or ["?"]
                print(f"{cfg} seed {seed}: failed: {tail[0]}", flush=True)
                continue
            results.append(json.loads(run.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{cfg} seed {seed}: mean acc {statistics.mean(r['accuracy'].values()):.3f}, "
                  f"{r['step_s']:.3f} s/step ({time.perf_counter() - began:.0f} s)", flush=True)
            # after every run, so that an interrupted benchmark keeps what it measured
            (out / "results.json").write_text(json.dumps(results, indent=1))
            (out / "table.md").write_text(table(results, args.configs))
    print((out / "table.md").read_text() if results else "no result")
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
