"""Progress people can read: a bar on a terminal, plain lines elsewhere, one line per epoch.

On a terminal, a tqdm bar per epoch (carriage returns, redrawn in place). Anywhere else (a file,
a pipe, a job scheduler's log), plain lines, about ten per epoch, with no carriage return.
Every epoch ends with one line of validation metrics, printed and appended to
``run_dir/train.log``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm


def epoch_line(summary: Mapping[str, Any], epochs: int, score: float | None = None) -> str:
    """``epoch 2/10 step 94 (1.3 s): val a accuracy 0.8125 loss 0.4321 | b mse 0.1 ...``."""
    head = (
        f"epoch {summary['epoch'] + 1}/{epochs} step {summary['step']} "
        f"({summary['seconds']:.1f} s)"
    )
    if summary.get("aux"):  # the model's auxiliary losses, epoch means
        head += " aux " + " ".join(f"{k} {v:.4f}" for k, v in summary["aux"].items())
    val = summary.get("val")
    if not val:
        return head
    parts = [
        f"{task} " + " ".join(f"{metric} {value:.4f}" for metric, value in metrics.items())
        for task, metrics in val.items()
    ]
    tail = f" | score {score:.4f}" if score is not None else ""
    return f"{head}: val " + " | ".join(parts) + tail


class Progress:
    """Shows training progress on ``stream`` (default stderr) and logs epoch lines."""

    def __init__(
        self, enabled: bool, log_path: Path | None = None, stream: TextIO | None = None
    ) -> None:
        self.enabled = enabled
        self.log_path = log_path
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = bool(isatty and isatty())
        self._bar: Any = None
        self._every = 1
        self._total: int | None = None
        self._desc = ""

    def epoch(self, data: Iterable[Any], epoch: int, epochs: int) -> Iterator[Any]:
        """Iterate over ``data``, showing progress."""
        self._desc = f"epoch {epoch + 1}/{epochs}"
        try:
            self._total = len(data)  # type: ignore[arg-type]
        except TypeError:
            self._total = None
        self._every = max(1, (self._total or 100) // 10)
        if self.enabled and self.terminal:
            self._bar = tqdm(data, desc=self._desc, leave=False, file=self.stream)
            yield from self._bar
            self._bar.close()
            self._bar = None
        else:
            yield from data

    def step(self, seen: int, row: Mapping[str, Any]) -> None:
        """After the ``seen``-th batch of the epoch, whose log row is ``row``."""
        if not self.enabled:
            return
        losses = {k[5:]: v for k, v in row.items() if k.startswith("loss/")}
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            return
        if seen % self._every == 0 or seen == self._total:
            of = f"/{self._total}" if self._total else ""
            text = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
            self.write(f"{self._desc} batch {seen}{of} step {row['step']}: loss {text}")

    def write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def end_epoch(self, line: str) -> None:
        """Print the epoch's line (when enabled) and append it to the log file."""
        if self.enabled:
            self.write(line)
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(line + "\n")
