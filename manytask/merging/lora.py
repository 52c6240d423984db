"""PEFT LoRA adapters as task vectors, read without importing peft.

A LoRA adapter (Hu et al., 2022, "LoRA: Low-Rank Adaptation of Large Language Models", Eq. 3)
changes a weight ``W0`` (out x in) into ``W0 + s * B @ A`` with ``A`` (r x in), ``B`` (out x r)
and ``s = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA, Kalajdzievski, 2023). The
adapter is therefore the task vector ``s * B @ A``; :class:`LoraSource` presents it as a full
checkpoint, ``base + s * B @ A`` on the adapted tensors and the base elsewhere, so every merge
method can use it. Rows are materialised on demand: a row range of ``B @ A`` costs a small
matmul, never the whole product.

Read from the adapter folder: ``adapter_config.json`` (``r``, ``lora_alpha``, ``use_rslora``,
``alpha_pattern``, ``fan_in_fan_out``, ``use_dora``) and ``adapter_model.safetensors`` (or
``adapter_model.bin`` with ``allow_pickle``). Embedding adapters (``lora_embedding_A/B``),
``fan_in_fan_out`` layers (GPT-2's Conv1D), LoRA biases and ``modules_to_save`` (full tensors
that replace the base's) are handled. DoRA and convolution adapters are not task vectors of
this form and are rejected with an explanation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ..files import inside, load_json, regular_file
from ..registry import short
from .sources import Source, TensorInfo, load_pickle

PREFIX = "base_model.model."


@dataclass
class _Factor:
    """One adapted tensor: ``delta = scale * B @ A`` (``transpose``: ``(B @ A).T``)."""

    a: Tensor
    b: Tensor
    scale: float
    transpose: bool

    def rows(self, start: int | None, stop: int | None) -> Tensor:
        a, b = self.a.float(), self.b.float()
        if self.transpose:  # delta = (B A)^T = A^T B^T: rows of A^T
            return (a.t()[start:stop] @ b.t()) * self.scale
        return (b[start:stop] @ a) * self.scale

    @property
    def shape(self) -> tuple[int, int]:
        out, inp = self.b.shape[0], self.a.shape[1]
        return (inp, out) if self.transpose else (out, inp)


def _strip(key: str) -> str:
    key = key.removeprefix(PREFIX)
    return key.replace(".modules_to_save.default", "").replace(".modules_to_save", "")


# Characters that make a pattern key a regular expression rather than a module name ('.'
# is the separator of module names and is taken literally).
_REGEX_CHARS = frozenset("*+?()[]{}|^$\\")
PATTERN_KEYS = ("alpha_pattern", "rank_pattern")


def pattern_matches(pattern: str, module: str) -> bool:
    r"""PEFT's rule for ``alpha_pattern``/``rank_pattern`` keys that are module names
    (``peft.utils.other.get_pattern_key``: ``re.match(rf"(.*\.)?({key})$", name)``): the key
    is the module's full name or a dotted suffix of it. Plain string comparison, linear in
    the name: no pattern from a file can stall the merge."""
    return module == pattern or module.endswith("." + pattern)


def pattern_value(patterns: dict[str, float], module: str, default: float) -> float:
    """The value of the first key (in file order, as PEFT) matching ``module``."""
    for pattern, value in patterns.items():
        if pattern_matches(pattern, module):
            return float(value)
    return default


def _alpha_for(module: str, config: dict[str, object]) -> float:
    patterns: dict[str, float] = config.get("alpha_pattern") or {}  # type: ignore[assignment]
    return pattern_value(patterns, module, float(config.get("lora_alpha", 8)))  # type: ignore[arg-type]


def _check_adapter_config(config: object, label: str) -> None:
    """Raise ``ValueError`` naming the key if ``adapter_config.json`` has a malformed value."""
    if not isinstance(config, dict):
        raise ValueError(f"{label}: adapter_config.json must hold a JSON object")
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise ValueError(
            f"{label}: adapter_config.json: lora_alpha must be a number, got {alpha!r}"
        )
    rank = config.get("r", 8)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"{label}: adapter_config.json: r must be a positive integer, got "
                         f"{short(rank)}")
    for key in PATTERN_KEYS:
        _check_patterns(config.get(key) or {}, key, label)


def _check_patterns(patterns: object, key: str, label: str) -> None:
    where = f"{label}: adapter_config.json: {key}"
    if not isinstance(patterns, dict):
        raise ValueError(f"{where} must be an object")
    for pattern, value in patterns.items():
        name = short(pattern)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}[{name}] must be a number, got {short(value)}")
        if not math.isfinite(value) or (key == "rank_pattern" and value < 1):
            raise ValueError(f"{where}[{name}] must be a positive finite number, got {value}")
        if not pattern or _REGEX_CHARS & set(pattern):
            raise ValueError(
                f"{where} key {name} is not a module name; keys are matched as PEFT matches "
                "module names (the full name or a dotted suffix), regular expressions are "
                "refused"
            )


class LoraSource(Source):
    """A PEFT LoRA adapter folder applied to ``base``, seen as a full checkpoint."""

    def __init__(
        self,
        folder: str | Path,
        base: Source,
        *,
        allow_pickle: bool = False,
        allow_outside_links: bool = False,
    ):
        self._dir = Path(folder)
        self.label = str(folder)
        self._base = base
        self.fresh = False  # modules_to_save tensors are returned as views
        self._allow_outside = allow_outside_links
        config = load_json(self._own("adapter_config.json"), what=f"{self.label}: adapter config")
        _check_adapter_config(config, self.label)
        if config.get("use_dora"):
            raise TypeError(
                f"{self.label}: DoRA adapters rescale the merged weight's columns, so they are "
                "not additive task vectors; merge them into the model with peft first"
            )
        tensors = self._load(allow_pickle)
        rslora = bool(config.get("use_rslora", False))
        fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
        self._factors: dict[str, _Factor] = {}
        self._bias: dict[str, Tensor] = {}
        self._replace: dict[str, Tensor] = {}
        pairs: dict[str, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if "lora_magnitude_vector" in key:
                raise TypeError(f"{self.label}: {key!r} is a DoRA magnitude; not a task vector")
            match = re.fullmatch(r"(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                                 r"(?:\.[^.]+)?\.(weight|bias)", key)
            if match is None:
                if "lora_" in key:
                    raise ValueError(f"{self.label}: unrecognised LoRA tensor {key!r}")
                self._replace[_strip(key)] = value
                continue
            module, kind, what = _strip(match.group(1)), match.group(2), match.group(3)
            if what == "bias":
                if kind != "lora_B":
                    raise ValueError(f"{self.label}: unexpected bias {key!r}")
                self._bias[module + ".bias"] = value
                continue
            pairs.setdefault(module, {})[kind] = value
        for module, pair in pairs.items():
            embedding = "lora_embedding_A" in pair or "lora_embedding_B" in pair
            a = pair.get("lora_embedding_A" if embedding else "lora_A")
            b = pair.get("lora_embedding_B" if embedding else "lora_B")
            if a is None or b is None:
                raise ValueError(f"{self.label}: module {module!r} lacks its A or B matrix")
            if a.dim() != 2 or b.dim() != 2:
                raise TypeError(
                    f"{self.label}: module {module!r} has {a.dim()}-d LoRA factors (a convolution "
                    "adapter); only linear and embedding adapters are task vectors B @ A here"
                )
            r = a.shape[0]
            if r < 1:
                raise ValueError(f"{self.label}: module {module!r} has a rank-0 LoRA adapter")
            ranks: dict[str, float] = config.get("rank_pattern") or {}
            want = pattern_value(ranks, module, float(config.get("r", r)))
            if want != r:
                raise ValueError(
                    f"{self.label}: module {module!r} has rank {r} in its tensors but "
                    f"{want:g} in adapter_config.json (r / rank_pattern)"
                )
            if b.shape[1] != r:
                raise ValueError(
                    f"{self.label}: module {module!r}: A is {tuple(a.shape)} but B is "
                    f"{tuple(b.shape)}; their ranks differ"
                )
            alpha = _alpha_for(module, config)
            scale = alpha / math.sqrt(r) if rslora else alpha / r
            self._factors[module + ".weight"] = _Factor(a, b, scale, embedding or fan_in_fan_out)
        self._check_against_base()

    def _own(self, name: str) -> Path:
        """A file of the adapter folder: a regular file, not a link out of the folder."""
        path = inside(self._dir, name, what=f"{self.label}: file",
                      allow_outside=self._allow_outside)
        return regular_file(path, what=f"{self.label}: file")

    def _load(self, allow_pickle: bool) -> dict[str, Tensor]:
        st = self._dir / "adapter_model.safetensors"
        if st.exists():
            from safetensors.torch import load_file

            st = self._own(st.name)
            try:
                return load_file(str(st))
            except Exception as err:  # safetensors raises its own error types
                raise ValueError(
                    f"{self.label}: {str(st)!r} is not a valid safetensors file: {err}"
                ) from None
        pk = self._dir / "adapter_model.bin"
        if pk.exists():
            pk = self._own(pk.name)
            if not allow_pickle:
                raise ValueError(
                    f"{self.label}: adapter weights are a PyTorch pickle (adapter_model.bin); "
                    "pass allow_pickle=True to load them with torch.load(weights_only=True)"
                )
            return load_pickle(pk, self.label)
        raise ValueError(f"{self.label}: no adapter_model.safetensors in the adapter folder")

    def _check_against_base(self) -> None:
        base_keys = set(self._base.keys())
        for name, factor in self._factors.items():
            if name not in base_keys:
                raise ValueError(
                    f"{self.label}: adapter targets {name!r}, which the base model "
                    f"{self._base.label!r} does not have"
                )
            shape = self._base.info(name).shape
            if tuple(shape) != factor.shape:
                raise ValueError(
                    f"{self.label}: adapter for {name!r} has shape {factor.shape}, base tensor "
                    f"has {tuple(shape)}"
                )
        for name, tensor in {**self._bias, **self._replace}.items():
            if name not in base_keys:
                raise ValueError(f"{self.label}: tensor {name!r} is not in the base model")
            if tuple(tensor.shape) != self._base.info(name).shape:
                raise ValueError(
                    f"{self.label}: tensor {name!r} has shape {tuple(tensor.shape)}, base has "
                    f"{self._base.info(name).shape}"
                )

    @property
    def adapted(self) -> list[str]:
        """Names of the base tensors this adapter changes."""
        return sorted({*self._factors, *self._bias, *self._replace})

    def keys(self) -> list[str]:
        return self._base.keys()

    def info(self, name: str) -> TensorInfo:
        return self._base.info(name)

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> Tensor:
        if name in self._replace:
            t = self._replace[name]
            return t if t.dim() == 0 or (start is None and stop is None) else t[start:stop]
        base = self._base.read(name, start, stop)
        if name in self._factors:
            return base.float() + self._factors[name].rows(start, stop)
        if name in self._bias:
            return base.float() + self._bias[name].float()[start:stop]
        return base

    def delta_rows(self, name: str, start: int | None = None, stop: int | None = None) -> Tensor:
        """The task vector's rows for ``name`` (zeros where the adapter changes nothing)."""
        if name in self._factors:
            return self._factors[name].rows(start, stop)
        return self.read(name, start, stop).float() - self._base.read(name, start, stop).float()

    def folder(self) -> Path | None:
        return self._base.folder()


def lora_state_dict_delta(source: LoraSource) -> dict[str, Tensor]:
    """The whole task vector as a state dict (for small models and tests)."""
    return {name: source.delta_rows(name) for name in source.adapted}

