"""PyTorch pickle checkpoints, loaded only through ``torch.load(weights_only=True)``.

A pickle can ask to run code when loaded; ``weights_only=True`` refuses every object other
than tensors and plain containers, and a refusal is never retried without it. Pickles are
refused by default (``allow_pickle``); :func:`pickle_hint` recognises one offered as
safetensors, to say so.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..files import regular_file


def load_pickle(path: Path, label: str) -> dict[str, Tensor]:
    """Load a PyTorch checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    regular_file(path, what=f"{label}: weight file")
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            # Legacy (non-zip) files cannot be memory-mapped; still weights-only.
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refused an object that is not a tensor or a plain container: the file
        # asks to run code (or build arbitrary classes) when loaded. Never retry without it.
        reason = _unpickler_reason(str(err)) or type(err).__name__
        raise ValueError(
            f"{label}: {str(path)!r} refused: it holds objects other than tensors, which "
            f"torch.load(weights_only=True) will not build ({reason})"
        ) from None
    except Exception as err:  # truncated zip, junk bytes: torch raises many error types
        raise ValueError(
            f"{label}: {str(path)!r} is not a readable PyTorch checkpoint "
            f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''})"
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise TypeError(f"{label}: {str(path)!r} does not hold a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def _unpickler_reason(message: str) -> str:
    """The one informative sentence of torch's weights-only refusal (which global or opcode
    it refused), without the advice around it - part of which is to disable the check."""
    parts = [" ".join(p.split()) for p in re.split(r"\n\s*\n", message)]
    kept = [
        p.split("WeightsUnpickler error:")[-1].strip()
        for p in parts[1:]
        if p and not p.startswith("Check the documentation")
    ]
    return "; ".join(k for k in kept if k)


# First bytes of the two PyTorch pickle formats: a zip archive (torch.save since 1.6), or a
# bare pickle stream (protocol 2+ starts with 0x80 and the protocol number).
_ZIP_MAGIC = b"PK\x03\x04"


def pickle_hint(path: Path) -> str:
    """A hint when a file offered as safetensors is really a PyTorch pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return ""
    if head.startswith(_ZIP_MAGIC) or (len(head) >= 2 and head[0] == 0x80 and head[1] <= 5):
        return (
            " (it looks like a PyTorch pickle checkpoint; pickles are refused by default: to "
            "load one with torch.load(weights_only=True), name it .bin or .pt and set "
            "allow_pickle)"
        )
    return ""
