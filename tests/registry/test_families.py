"""Every family chosen by name sits on the common registry, and each entry's declaration
agrees with what it builds (parametrised over the registries: no hand-kept list)."""

from __future__ import annotations

import pytest

from manytask.balancers.registry import BALANCERS, make_balancer
from manytask.registry import RegistryError, check_declared


@pytest.mark.parametrize("name", BALANCERS.names())
def test_balancer_declaration_matches_signature(name: str) -> None:
    entry = BALANCERS.entry(name)
    assert check_declared(entry) == []
    built = make_balancer(name)
    # every declared parameter is stored under its name, with the declared default
    hparams = built.hparams()
    assert set(hparams) == set(entry.params)
    for key, param in entry.params.items():
        value = hparams[key]
        default = param.default
        if default is None and isinstance(value, dict):  # mappings stored as {} for None
            assert value == {}
        else:
            assert value == default, key


@pytest.mark.parametrize("name", BALANCERS.names())
def test_balancer_misspelt_parameter_is_a_one_line_hint(name: str) -> None:
    entry = BALANCERS.entry(name)
    if not entry.params:
        with pytest.raises(RegistryError, match="allowed: none"):
            make_balancer(name, anything=1)
        return
    first = next(iter(entry.params))
    with pytest.raises(RegistryError) as err:
        make_balancer(name, **{first + "x": 1})
    assert f"did you mean {first!r}" in str(err.value)
    assert "\n" not in str(err.value)


def test_direct_construction_validates_like_the_registry() -> None:
    from manytask.balancers.cagrad import CAGrad
    from manytask.balancers.famo import FAMO

    with pytest.raises(RegistryError, match="c must be >= 0"):
        CAGrad(c=-0.5)
    with pytest.raises(RegistryError, match="rescale must be one of"):
        CAGrad(rescale=5)
    with pytest.raises(RegistryError, match=r"min_losses \['a'\] must be a finite number"):
        FAMO(min_losses={"a": float("nan")})
    assert CAGrad(0.2).c == 0.2
