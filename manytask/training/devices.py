"""Devices and numeric precision by name, for the Trainer, the CLI and the Python API.

``device``: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA if there is one, else MPS,
else the CPU). Under ``torchrun`` (``LOCAL_RANK`` set) ``cuda`` means the process's own GPU,
``cuda:LOCAL_RANK``. ``precision``: ``fp32``, or ``bf16`` (forward passes and losses under
``torch.autocast`` with bfloat16; weights, gradients, Gramians and optimiser state stay in
float32, so a method decides on float32 per-task gradients), or ``fp16`` (float16 autocast
with a gradient scaler; the Trainer divides the scale out before the method decides).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")
_DEVICE = re.compile(r"(cpu|cuda|cuda:\d+|mps|auto)")


def check_device(spec: str) -> None:
    """Refuse a device name that can never work, in one line (no hardware is probed)."""
    if not isinstance(spec, str) or not _DEVICE.fullmatch(spec):
        raise ValueError(f"device must be cpu, cuda, cuda:N, mps or auto, got {spec!r}")


def resolve_device(spec: str | torch.device) -> torch.device:
    """The ``torch.device`` for ``spec``; an unavailable device is a one-line error."""
    if isinstance(spec, torch.device):
        return spec
    check_device(spec)
    local = os.environ.get("LOCAL_RANK")
    if spec == "auto":
        if torch.cuda.is_available():
            spec = "cuda"
        elif torch.backends.mps.is_available():
            spec = "mps"
        else:
            return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r}: CUDA is not available on this machine")
        index = int(spec[5:]) if ":" in spec else int(local) if local is not None else None
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r}: there are {torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device("cuda", index) if index is not None else torch.device("cuda")
    if spec == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps': MPS is not available on this machine")
    return torch.device(spec)


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16: {device} does not support bfloat16")


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision) -> Iterator[None]:
    """``torch.autocast`` to bfloat16 or float16; nothing for ``fp32``."""
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
