"""A small checkpointed training run, as a process the fault tests can kill.

``python _train.py RUN_DIR [--stall-epoch E]`` trains (resuming from ``RUN_DIR`` if it holds
a checkpoint), prints ``ready`` once imports are done, and writes the final parameters to
``RUN_DIR/final.safetensors``. With ``--stall-epoch E`` the checkpoint write of epoch ``E``
stops half-way (after its first file), touches ``RUN_DIR/stalled`` and sleeps, so that a test
can kill the process inside the write. With ``--stall-rewrite`` the first log rewrite of a
resume stops the same way after writing half of the new file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from manytask.data import TensorBatches
from manytask.models import HardSharing
from manytask.tasks import Task
from manytask.training import Trainer
from manytask.training import checkpoint as checkpoint_module
from manytask.training import logs as logs_module

EPOCHS = 6


def tasks() -> list[Task]:
    return [Task.classification("a", 3), Task.regression("b", 2)]


def model() -> HardSharing:
    return HardSharing(tasks(), 20, hidden=(32, 32), dropout=0.1)  # dropout: RNG to restore


def train(run_dir: Path) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(128, 20, generator=g)
    targets = {
        "a": torch.randint(0, 3, (128,), generator=g),
        "b": torch.randn(128, 2, generator=g),
    }
    batches = TensorBatches(x, targets, 32, shuffle=True, seed=11)
    torch.manual_seed(0)
    net = model()
    trainer = Trainer(net, tasks(), "uncertainty", lr=1e-3, run_dir=run_dir, progress=False)
    trainer.fit(batches, EPOCHS, resume="if_exists")
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def stall_checkpoint(run_dir: Path, epoch: int) -> None:
    real = checkpoint_module.save_file

    def stalling(tensors: Any, filename: Any, *args: Any, **kwargs: Any) -> None:
        real(tensors, filename, *args, **kwargs)
        if Path(filename).parent.name.startswith(f".tmp-epoch-{epoch:04d}-"):
            (run_dir / "stalled").touch()
            time.sleep(120)

    checkpoint_module.save_file = stalling


def stall_rewrite(run_dir: Path) -> None:
    def stalling(path: Path, lines: Any) -> None:
        with open(path.parent / f".tmp-{path.name}.partial", "w") as f:
            f.writelines(list(lines)[: len(lines) // 2])
        (run_dir / "stalled").touch()
        time.sleep(120)

    logs_module.replace_lines = stalling


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--stall-epoch", type=int)
    parser.add_argument("--stall-rewrite", action="store_true")
    args = parser.parse_args()
    if args.stall_rewrite:
        stall_rewrite(args.run_dir)
    torch.set_num_threads(1)
    if args.stall_epoch is not None:
        stall_checkpoint(args.run_dir, args.stall_epoch)
    print("ready", flush=True)
    final = train(args.run_dir)
    save_file(final, str(args.run_dir / "final.safetensors"))


if __name__ == "__main__":
    main()
