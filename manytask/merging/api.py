"""The merge entry points: to a folder (streaming, atomic) or to an in-memory state dict."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..files import UnsafeFileError, inside, parse_json, regular_file
from .config import MergeConfig, parse_dtype
from .conventions import convention_notes, load_config
from .engine import MemorySink, plan_tensors, run
from .lora import LoraSource
from .methods import get_method
from .settings import layer_positions
from .slices import Group, SliceSource, plan_groups
from .sources import Source, StateDictSource, is_lora_folder, open_source
from .tokenizers import set_vocab_size, tokenizer_plan
from .writer import MANIFEST, MARKER, AtomicDirectory, OutputTensor, ShardedWriter

# Files never copied from the base folder: weights and their indexes.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_SKIP_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json",
               "adapter_config.json", MARKER, MANIFEST)


@dataclass
class MergeReport:
    """What a merge wrote."""

    output_dir: Path
    tensors: int
    files: list[str]
    total_bytes: int
    seconds: float
    notes: list[str]  # leftovers of killed writes recovered or removed before this one


def _open_inputs(
    config: MergeConfig, allow_outside_links: bool = False
) -> tuple[Source | None, list[Source], dict[str, Source]]:
    """The base, the models, and every opened source by path (each path opened once)."""
    opts = {"allow_pickle": config.allow_pickle, "allow_outside_links": allow_outside_links}
    opened: dict[str, Source] = {}

    def get(path: str) -> Source:
        key = os.path.realpath(path)
        if key not in opened:
            opened[key] = open_source(path, **opts)
        return opened[key]

    base = None
    if config.base_model is not None:
        if is_lora_folder(Path(config.base_model)):
            raise ValueError(f"base_model {config.base_model!r} is a LoRA adapter, not a model")
        base = get(config.base_model)
    models: list[Source] = []
    paths = [m.model for m in config.models]
    if config.slices is not None:
        paths = [src.model for sl in config.slices for src in sl.sources]
    for path in paths:
        if is_lora_folder(Path(path)):
            if base is None:
                raise ValueError(f"LoRA adapter {path!r} needs a base_model")
            source: Source = LoraSource(path, base, **opts)
            opened.setdefault(os.path.realpath(path), source)
        else:
            source = get(path)
        if config.slices is None:
            models.append(source)
    if config.slices is not None:
        models = [opened[os.path.realpath(m.model)] for m in config.models]
        opened.update({p: opened[os.path.realpath(p)] for p in paths})
        if config.base_model is not None:
            opened[config.base_model] = opened[os.path.realpath(config.base_model)]
    return base, models, opened


def _check_output_apart(output_dir: str | os.PathLike[str], config: MergeConfig) -> None:
    """Refuse an output folder that is, lies inside, or contains an input: the merge would
    write into a model it is reading, or replace a folder holding one."""
    out = Path(output_dir).resolve()
    inputs = [("base_model", config.base_model)] if config.base_model is not None else []
    inputs += [(f"models[{i}]", m.model) for i, m in enumerate(config.models)]
    for where, path in inputs:
        src = Path(path).resolve()
        if out == src:
            raise ValueError(f"output {str(output_dir)!r} is the input {where} ({path!r})")
        if src.is_dir() and out.is_relative_to(src):
            raise ValueError(
                f"output {str(output_dir)!r} lies inside the folder of input {where} ({path!r}); "
                "write the merge outside every input model"
            )
        if src.is_relative_to(out):
            raise ValueError(
                f"input {where} ({path!r}) lies inside the output folder {str(output_dir)!r}, "
                "which the merge would replace; choose another output folder"
            )


def _copy_model_files(
    source: Path, dest: Path, dtype: torch.dtype | None, allow_outside_links: bool = False
) -> list[str]:
    """Copy config, tokenizer and other non-weight files; record the output dtype in config.

    Anything else than a regular file (a pipe, a device, a dangling link) is refused by
    name, and so is a link leading out of the base folder: its target would be copied into
    the output."""
    copied = []
    for f in sorted(source.iterdir()):
        if f.is_dir() or f.name in _SKIP_FILES or f.suffix in _WEIGHT_SUFFIXES:
            continue
        inside(source, f.name, what="model file to copy", allow_outside=allow_outside_links)
        regular_file(f, what="model file to copy")  # a pipe would block the copy forever
        shutil.copy2(f, dest / f.name)
        copied.append(f.name)
    cfg = dest / "config.json"
    if dtype is not None and cfg.is_file():
        try:
            data = parse_json(cfg.read_text(), where="config.json")
        except (UnsafeFileError, UnicodeDecodeError):
            return copied  # not JSON we understand: leave it as the base had it
        if not isinstance(data, dict):
            return copied
        name = str(dtype).removeprefix("torch.")
        for key in ("torch_dtype", "dtype"):
            if key in data:
                data[key] = name
        cfg.write_text(json.dumps(data, indent=2))
    return copied


def _groups(cfg: MergeConfig, base: Source | None, models: list[Source],
            opened: dict[str, Source]) -> list[Group]:
    if cfg.slices is not None:
        return plan_groups(cfg.slices, opened, cfg.base_model)
    reference = base if base is not None else models[0]
    sources = [SliceSource(m.model, (0, 0), m.parameters) for m in cfg.models]
    return [Group(base, models, sources, {}, layer_positions(reference.keys()))]


def merge(
    config: MergeConfig | Mapping[str, Any] | str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    progress: Callable[[int, int, str], None] | None = None,
    overwrite: bool = False,
    allow_outside_links: bool = False,
    like: str | None = None,
    random_seed: int | None = None,
    notify: Callable[[str], None] | None = None,
) -> MergeReport:
    """Merge as ``config`` says (a :class:`MergeConfig`, its dict form, or a YAML path) into
    ``output_dir``, atomically: the folder appears complete or not at all.

    ``output_dir`` may hold a previous merge (the files its manifest lists), which is then
    replaced; any other file there is refused unless ``overwrite``. Files of an input
    folder that are links out of it are refused unless ``allow_outside_links``.
    ``like="mergekit"`` reads the configuration with mergekit's meanings (its
    ``convention``); ``random_seed`` seeds the random methods. Where a parameter's meaning
    differs between the conventions and none was chosen, one line per parameter goes to
    ``notify`` (default: standard error). Everything is validated from headers before any
    tensor is read. Output: ``model.safetensors`` or shards with
    ``model.safetensors.index.json``, the base's config and tokenizer files, and
    ``manytask_merge.yaml`` (the configuration used).
    """
    import yaml

    cfg = load_config(config, like=like, random_seed=random_seed)
    for line in convention_notes(cfg):
        (notify or _stderr)(line)
    _check_output_apart(output_dir, cfg)
    target = AtomicDirectory(output_dir, overwrite=overwrite)  # refuses before any read
    try:  # until the block below takes the output over, a refusal releases its lock
        started = time.perf_counter()
        base, models, opened = _open_inputs(cfg, allow_outside_links)
        tokens = tokenizer_plan(cfg, base, models)
        wrap = (lambda s: s) if tokens is None else tokens.wrap
        base = None if base is None else wrap(base)
        models = [wrap(m) for m in models]
        opened = {k: wrap(v) for k, v in opened.items()}
        planned = []
        for group in _groups(cfg, base, models, opened):
            reference = group.base if group.base is not None else group.models[0]
            jobs = plan_tensors(reference, group.models, out_dtype=cfg.out_dtype,
                                embed_mismatch=cfg.embed_mismatch,
                                dtype_mismatch=cfg.dtype_mismatch)
            settings = [s.parameters for s in group.sources]
            # Every tensor's method is built (so every value validated) before any is read.
            methods = {j.name: cfg.method_for(j.name, group.positions.get(j.name, 0.0), settings,
                                              group.parameters) for j in jobs}
            planned.append((group, reference, jobs, methods))
        outputs = [OutputTensor(j.name, j.shape, j.out_dtype) for p in planned for j in p[2]]
        names = [o.name for o in outputs]
        if len(set(names)) != len(names):
            raise ValueError("the slices produce the same output tensor twice; check layer names")
    except BaseException:
        target.release()
        raise
    with target as tmp:
        writer = ShardedWriter(tmp, outputs, cfg.shard_size)
        try:
            for group, reference, jobs, methods in planned:
                run(lambda job, m=methods: m[job.name], jobs, reference, group.base,  # type: ignore[misc]
                    group.models, writer, progress)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        folder = (base if base is not None else models[0]).folder()
        if cfg.copy_files and folder is not None:
            _copy_model_files(folder, tmp, cfg.out_dtype, allow_outside_links)
        if cfg.copy_files and tokens is not None:
            tokens.write(tmp)
            set_vocab_size(tmp / "config.json", tokens.vocab_size)
        if cfg.slices is not None:
            _set_depth(tmp / "config.json",
                       sum(s.sources[0].layer_range[1] - s.sources[0].layer_range[0]
                           for s in cfg.slices))
        (tmp / MARKER).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return MergeReport(
        output_dir=target.target,
        tensors=len(outputs),
        files=writer.files,
        total_bytes=writer.total_size,
        seconds=time.perf_counter() - started,
        notes=target.notes,
    )


def _set_depth(path: Path, layers: int) -> None:
    """Record the sliced model's number of layers in its copied config."""
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return  # not JSON we understand: left as copied
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in data:
            data[key] = layers
    path.write_text(json.dumps(data, indent=2))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def merge_state_dicts(
    method: str,
    models: Sequence[Mapping[str, Tensor]],
    *,
    base: Mapping[str, Tensor] | None = None,
    parameters: Mapping[str, Any] | None = None,
    model_parameters: Sequence[Mapping[str, Any] | None] | None = None,
    dtype: str | None = None,
    embed_mismatch: str = "error",
    dtype_mismatch: str = "error",
) -> dict[str, Tensor]:
    """Merge in-memory state dicts with the same validation and streaming code as :func:`merge`.

    ``model_parameters[i]`` are model ``i``'s parameters (e.g. ``{"weight": 1, "density":
    0.2}``); ``parameters`` the method's global ones. Returns a new state dict.
    """
    cls = get_method(method)
    per_model = list(model_parameters) if model_parameters is not None else [{} for _ in models]
    if len(per_model) != len(models):
        raise ValueError(
            f"model_parameters has {len(per_model)} entries for {len(models)} models"
        )
    if cls.base == "required" and base is None:
        raise ValueError(f"merge method {method!r} needs a base state dict")
    m = cls(parameters, [p or {} for p in per_model], where=f"merge ({method})")
    for key, value, choices in (("embed_mismatch", embed_mismatch, ("error", "base")),
                                ("dtype_mismatch", dtype_mismatch, ("error", "cast"))):
        if value not in choices:
            raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")
    base_src = StateDictSource(base, label="base") if base is not None else None
    sources: list[Source] = [StateDictSource(sd, label=f"models[{i}]")
                             for i, sd in enumerate(models)]
    reference = base_src if base_src is not None else sources[0]
    jobs = plan_tensors(
        reference,
        sources,
        out_dtype=None if dtype is None else parse_dtype(dtype, "dtype"),
        embed_mismatch=embed_mismatch,
        dtype_mismatch=dtype_mismatch,
    )
    sink = MemorySink(jobs)
    run(m, jobs, reference, base_src, sources, sink)
    return sink.result()
