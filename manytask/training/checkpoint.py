"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint is a directory ``epoch-NNNN`` holding ``model.safetensors``,
``optimizer.safetensors`` (+ its non-tensor part in ``state.json``), ``balancer.safetensors``
and the random number generator states. It is written into a temporary directory beside its
final place, flushed to disk, and renamed into place; the ``latest`` pointer is then replaced
atomically. A run killed at any point leaves the previous checkpoint intact and loadable.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..files import UnsafeFileError, atomic_write_text, inside, load_json, read_text, regular_file
from ..finite import check_like, check_state

LATEST = "latest"
_OWN = "unless you allow links out of the run folder (--allow-outside-links)"
BEST = "best"  # names the checkpoint of the best validation epoch, kept from the clean-up


class Stateful(Protocol):
    """What a checkpoint saves and restores: a module, an optimiser, or a stand-in for a
    sharded one (:mod:`manytask.training.sharding`)."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any, /) -> Any: ...


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint is missing, incomplete, corrupted, or does not match the model being
    resumed. Also a ``ValueError`` (bad input, like every input error of the command line,
    which then prints it as one line); a ``RuntimeError`` as it always was."""


# The names save_checkpoint gives its directories; ``latest`` may name nothing else.
_CHECKPOINT_NAME = re.compile(r"epoch-\d{4,}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)




def _tensors(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # safetensors refuses tensors that share storage (tied weights): store private copies.
    return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{pid}/{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, entry in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    py_state = random.getstate()
    tensors = {"torch": torch.get_rng_state()}
    meta = {
        "numpy": [
            np_state[0],
            np.asarray(np_state[1]).tolist(),
            *map(int, np_state[2:4]),
            float(np_state[4]),
        ],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def set_rng_state(tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    kind, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_checkpoint(
    run_dir: Path,
    epoch: int,
    *,
    model: Stateful,
    optimizer: Stateful,
    balancer: nn.Module,
    info: Mapping[str, Any],
    keep: int = 2,
    protect: Collection[str] = (),
) -> Path:
    """Write the checkpoint of ``epoch`` atomically; keep the ``keep`` most recent ones and
    those named in ``protect`` (the best epoch's)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch-{epoch:04d}"
    opt_tensors, opt_meta = _split_optimizer_state(optimizer.state_dict())
    # An overflowing last step leaves inf weights or moments: refused before any write.
    # (Not the balancer's: NaN and inf are its sentinels, DWA's "not measured yet" and
    # STCH's initial ideal point.)
    for what, part in (("model", model.state_dict()), ("optimizer", opt_tensors)):
        check_state(part, f"checkpoint of epoch {epoch}: {what}")
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
    try:
        save_file(_tensors(model.state_dict()), tmp / "model.safetensors")
        save_file(_tensors(opt_tensors), tmp / "optimizer.safetensors")
        save_file(_tensors(balancer.state_dict()), tmp / "balancer.safetensors")
        rng_tensors, rng_meta = rng_state()
        save_file(_tensors(rng_tensors), tmp / "rng.safetensors")
        state = {"epoch": epoch, "optimizer": opt_meta, "rng": rng_meta, **info}
        (tmp / "state.json").write_text(json.dumps(state))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():  # a re-run of the same epoch after a resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, final.name)
    # by epoch number, not by name: "epoch-10000" sorts before "epoch-9999" as text
    done = sorted(
        (p for p in root.glob("epoch-*") if p.is_dir() and _CHECKPOINT_NAME.fullmatch(p.name)),
        key=lambda p: int(p.name[len("epoch-") :]),
    )
    for old in done[:-keep] if keep > 0 else []:
        if old.name not in protect:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path, *, allow_outside: bool = False) -> Path | None:
    """The directory named by ``checkpoints/latest``, or ``None`` when there is none.

    A checkpoint folder that is a link out of ``checkpoints`` is refused unless
    ``allow_outside`` (the user's ``--allow-outside-links``)."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.exists():
        return None
    try:
        name = read_text(pointer, what="checkpoint pointer", limit=4096).strip()
    except UnsafeFileError as err:
        raise CheckpointError(str(err)) from None
    if not _CHECKPOINT_NAME.fullmatch(name):
        # A hand-edited or hostile pointer ("../../elsewhere") must not lead resume outside
        # the run's own checkpoints.
        raise CheckpointError(
            f"{pointer} names {name[:80]!r}, not a checkpoint of this run (epoch-NNNN)"
        )
    try:  # a checkpoint folder linked from elsewhere is not this run's
        path = inside(pointer.parent, name, what="checkpoint", hint=_OWN,
                      allow_outside=allow_outside)
    except UnsafeFileError as err:
        raise CheckpointError(str(err)) from None
    if not (path / "state.json").exists():
        raise CheckpointError(f"{pointer} names {path.name}, which is missing or incomplete")
    return path


def _check_matches(module: Stateful, tensors: Mapping[str, Tensor], what: str, path: Path) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    wrong = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or extra or wrong:
        parts = [
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {extra[:3]}" if extra else "",
        ]
        parts += [
            f"{k!r} has shape {tuple(tensors[k].shape)}, the {what} {tuple(own[k].shape)}"
            for k in wrong[:3]
        ]
        raise CheckpointError(
            f"checkpoint {path} does not match this {what}: " + "; ".join(p for p in parts if p)
        )


def load_checkpoint(
    path: Path,
    *,
    model: Stateful,
    optimizer: Stateful,
    balancer: nn.Module,
    allow_outside: bool = False,
) -> dict[str, Any]:
    """Restore model, optimizer, balancer and RNG states from ``path``; return ``state.json``.
    Files that are links out of ``path`` are refused unless ``allow_outside``."""
    path = Path(path)

    def own(name: str) -> Path:
        return own_file(path, name, allow_outside)

    try:
        state: dict[str, Any] = load_json(own("state.json"), what="checkpoint state")
        model_state = load_file(own("model.safetensors"))
        opt_tensors = load_file(own("optimizer.safetensors"))
        balancer_state = load_file(own("balancer.safetensors"))
        rng_tensors = load_file(own("rng.safetensors"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    except SafetensorError as err:  # truncated or corrupted tensor file
        raise CheckpointError(f"checkpoint {path} is corrupted: {err}") from err
    if not isinstance(state, dict) or not {"epoch", "optimizer", "rng"} <= set(state):
        raise CheckpointError(f"checkpoint {path}: state.json lacks epoch, optimizer or rng")
    for key in ("epoch", "step"):
        value = state.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(f"checkpoint {path}: {key} is {value!r}, not a count")
    # Checked before loading: load_state_dict copies the matching tensors before it reports
    # a mismatch, which would leave the model half restored.
    # (The balancer is left to its own load_state_dict: some size their buffers lazily.)
    _check_matches(model, model_state, "model", path)
    try:  # an altered dtype would load as garbage bits; NaN/inf would train on as NaN
        check_like(model_state, model.state_dict(), f"checkpoint {path}: model")
        check_state(opt_tensors, f"checkpoint {path}: optimizer")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    try:
        opt_state = _join_optimizer_state(opt_tensors, state["optimizer"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {path}: malformed optimizer state: {err}") from err
    try:
        model.load_state_dict(model_state)
        balancer.load_state_dict(balancer_state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not match this model: {err}") from err
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {path} does not match this optimizer: {err}") from err
    try:
        set_rng_state(rng_tensors, state["rng"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path}: malformed random number state: {err}") from err
    return state


CHECKPOINT_FILES = ("state.json", "model.safetensors", "optimizer.safetensors",
                    "balancer.safetensors", "rng.safetensors")


def check_checkpoint_files(path: Path, *, allow_outside: bool = False) -> None:
    """Every file of the checkpoint at ``path`` present, a regular file of the folder (a
    link out refused unless ``allow_outside``): checked, reading only, before a resume
    writes anything into its run folder."""
    try:
        for name in CHECKPOINT_FILES:
            own_file(path, name, allow_outside)
    except ValueError as err:
        raise CheckpointError(f"cannot resume from checkpoint {path}: {err}") from None


def own_file(path: Path, name: str, allow_outside: bool = False) -> Path:
    """``path/name``: a regular file of the checkpoint folder, not a link out of it (unless
    ``allow_outside``), never a pipe or a device."""
    found = inside(path, name, what="checkpoint file", hint=_OWN, allow_outside=allow_outside)
    return regular_file(found, what="checkpoint file")


def load_model_weights(path: Path, model: Stateful, *, allow_outside: bool = False) -> None:
    """Load only the model weights of the checkpoint at ``path`` into ``model``: every tensor
    of the model's names, shapes and dtypes, finite (:func:`manytask.finite.check_like`)."""
    try:
        tensors = load_file(own_file(Path(path), "model.safetensors", allow_outside))
    except (OSError, ValueError, SafetensorError) as err:
        raise CheckpointError(f"cannot read the model weights of {path}: {err}") from err
    _check_matches(model, tensors, "model", Path(path))
    try:  # an altered dtype would load as garbage bits; NaN/inf would predict NaN
        check_like(tensors, model.state_dict(), f"checkpoint {path}: model")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    model.load_state_dict(tensors)
