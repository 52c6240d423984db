"""Parameter settings as mergekit writes them: scalars, per-layer gradients and filters.

A setting is one of

* a scalar: ``t: 0.5``;
* a *gradient*, a list of scalars spread evenly over the layers: layer ``i`` of ``L`` sits at
  ``x = i / (L - 1)`` (``x = 0`` for tensors outside the layers, such as embeddings) and a
  numeric gradient ``[v_0, ..., v_m]`` is interpolated linearly at ``x * m``; a gradient of
  booleans or strings picks ``v_floor(x * m)``;
* a list of *conditions* ``{filter: text, value: setting}``: the first whose ``filter`` is
  absent, ``"*"`` or a substring of the tensor's name gives the value.

A per-model parameter given among the global ``parameters`` applies to every model that does
not set it itself. All exactly as mergekit 0.1.5 (``config.evaluate_setting``,
``parameter_resolver``), so its configurations resolve to the same values. Every scalar a
setting can produce is validated by the parameter's declaration before any tensor is read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .params import Param

# Transformer block index in a tensor name (Llama/Mistral "layers", GPT-2 "h", BERT "layer").
LAYER = re.compile(r"(^|\.)(layers|h|layer|blocks|block)\.(\d+)\.")
_SCALAR = (bool, int, float, str)


def layer_of(name: str) -> int | None:
    """The transformer block a tensor belongs to, or ``None`` (embeddings, final norm, ...)."""
    m = LAYER.search(name)
    return None if m is None else int(m.group(3))


def layer_positions(names: Iterable[str]) -> dict[str, float]:
    """``x = i / (L - 1)`` of each tensor in block ``i`` of ``L`` (1 if ``L == 1``), 0 for
    tensors outside the blocks, as mergekit places gradients."""
    names = list(names)
    layers = [layer_of(n) for n in names]
    count = max((i for i in layers if i is not None), default=-1) + 1
    return {n: (0.0 if i is None else (i / (count - 1) if count > 1 else 1.0))
            for n, i in zip(names, layers, strict=True)}


def _is_condition(item: Any) -> bool:
    return isinstance(item, Mapping)


def check_setting(param: Param, setting: Any, where: str) -> None:
    """Raise if ``setting`` is malformed or any value it can produce is invalid."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if isinstance(setting, _SCALAR):
        param.validate(setting, where)
        return
    if not isinstance(setting, list) or not setting:
        raise TypeError(f"{where} must be a value, a list of values (a gradient) or a list "
                        f"of {{filter, value}} conditions, got {setting!r}")
    if all(isinstance(e, _SCALAR) for e in setting):
        for i, e in enumerate(setting):
            param.validate(e, f"{where}[{i}]")
        numeric = [isinstance(e, int | float) and not isinstance(e, bool) for e in setting]
        if any(numeric) and not all(numeric):
            raise TypeError(f"{where}: a gradient mixes numbers and other values: {setting!r}")
        return
    for i, cond in enumerate(setting):
        if not _is_condition(cond):
            raise TypeError(f"{where}[{i}] must be a {{filter, value}} condition, got {cond!r}")
        extra = sorted(set(cond) - {"filter", "value"})
        if extra:
            raise ValueError(f"{where}[{i}]: unknown key(s) {extra}; allowed: filter, value")
        if "value" not in cond:
            raise ValueError(f"{where}[{i}]: a condition needs a 'value'")
        if cond.get("filter") is not None and not isinstance(cond["filter"], str):
            raise TypeError(f"{where}[{i}].filter must be text, got {cond['filter']!r}")
        if isinstance(cond["value"], list) and any(_is_condition(v) for v in cond["value"]):
            raise TypeError(f"{where}[{i}].value: conditions cannot be nested")
        check_setting(param, cond["value"], f"{where}[{i}].value")


def evaluate(setting: Any, name: str | None, x: float, param: Param) -> Any:
    """The value of ``setting`` for tensor ``name`` at layer position ``x``; ``None`` when
    no condition matches. ``name=None`` takes the first condition (for validation)."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if isinstance(setting, _SCALAR):
        return setting
    if all(isinstance(e, _SCALAR) for e in setting):
        if not all(isinstance(e, int | float) and not isinstance(e, bool) for e in setting):
            return setting[int(x * (len(setting) - 1))]
        scaled = x * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        value = (1 - frac) * setting[i0] + frac * setting[i1]
        return int(value) if param.kind == "int" else value
    for cond in setting:
        f = cond.get("filter")
        if name is None or f is None or f == "*" or (name and f in name):
            return evaluate(cond["value"], name, x, param)
    return None


def resolve_settings(
    global_spec: Mapping[str, Param],
    model_spec: Mapping[str, Param],
    global_settings: Mapping[str, Any],
    model_settings: Sequence[Mapping[str, Any]],
    name: str | None,
    x: float,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Concrete global and per-model parameters of one tensor (absent ones left out, so the
    method's defaults apply). A model's own setting takes precedence over a global one."""
    out_global: dict[str, Any] = {}
    for key, setting in global_settings.items():
        if key in global_spec:
            value = evaluate(setting, name, x, global_spec[key])
            if value is not None:
                out_global[key] = value
    out_models: list[dict[str, Any]] = []
    for settings in model_settings:
        params: dict[str, Any] = {}
        for key, spec in model_spec.items():
            for scope in (settings, global_settings):
                if key in scope:
                    value = evaluate(scope[key], name, x, spec)
                    if value is not None:
                        params[key] = value
                        break
        # unknown per-model names are left in for the method to refuse with a hint
        params.update({k: v for k, v in settings.items() if k not in model_spec})
        out_models.append(params)
    return out_global, out_models


def check_settings(
    global_spec: Mapping[str, Param],
    model_spec: Mapping[str, Param],
    global_settings: Mapping[str, Any],
    model_settings: Sequence[Mapping[str, Any]],
    where: str,
) -> None:
    """Validate every setting against its declaration; unknown global names are refused."""
    from .params import resolve

    unknown = {k: v for k, v in global_settings.items()
               if k not in global_spec and k not in model_spec}
    if unknown:
        resolve({**global_spec, **model_spec}, unknown, f"{where}: parameters")
    for key, setting in global_settings.items():
        spec = global_spec.get(key) or model_spec[key]
        check_setting(spec, setting, f"{where}: parameters: {key}")
    for i, settings in enumerate(model_settings):
        unknown = {k: v for k, v in settings.items() if k not in model_spec}
        if unknown:
            resolve(model_spec, unknown, f"{where}: models[{i}].parameters")
        for key, setting in settings.items():
            check_setting(model_spec[key], setting, f"{where}: models[{i}].parameters: {key}")
