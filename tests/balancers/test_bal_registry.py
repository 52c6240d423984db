"""Registry: every method builds by name, rejects bad parameters, and checkpoints exactly."""

from __future__ import annotations

import pytest
import torch
from bal_helpers import random_jacobian

from manytask.balancers import available, make_balancer, parameters

OURS = [
    "aligned_mtl",
    "cagrad",
    "config",
    "dualproj",
    "dwa",
    "fairgrad",
    "gradnorm",
    "imtl_g",
    "mgda",
    "nash_mtl",
    "pcgrad",
    "uncertainty",
    "upgrad",
]
BAD_VALUES: dict[str, list[dict[str, object]]] = {
    "cagrad": [{"c": -0.1}, {"rescale": 3}, {"c": float("nan")}],
    "dwa": [{"T": 0.0}, {"T": -1.0}],
    "gradnorm": [{"alpha": -0.5}, {"lr": 0.0}],
    "mgda": [{"normalization": "l1"}],
    "pcgrad": [{"shuffle": "yes"}],
    "aligned_mtl": [{"scale": "max"}],
    "fairgrad": [{"alpha": -1.0}],
    "nash_mtl": [{"max_norm": -1.0}, {"update_weights_every": 0}, {"update_weights_every": 1.5}],
}


@pytest.mark.parametrize("name", OURS)
def test_builds_by_name_and_rejects_unknown_parameters(name: str) -> None:
    assert name in available()
    method = make_balancer(name)
    assert method.name == name
    assert set(method.hparams()) == set(parameters(name))
    with pytest.raises(ValueError, match="unknown parameter"):
        make_balancer(name, bogus=1)


@pytest.mark.parametrize(("name", "bad"), [(n, b) for n, bads in BAD_VALUES.items() for b in bads])
def test_rejects_out_of_range_values(name: str, bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=f"'{name}': {next(iter(bad))}"):
        make_balancer(name, **bad)


def _run(method: torch.nn.Module, steps: range) -> list[torch.Tensor]:
    names = ("a", "b", "c")
    out = []
    for step in steps:
        J = random_jacobian(3, 5, seed=step)
        losses = torch.tensor([1.0 + step, 2.0 / (step + 1), 0.5 + 0.1 * step])
        info = () if method.requires == "losses" else (J @ J.T,)
        d = method.decide(losses, names, *info)  # type: ignore[operator]
        out.append(d.weights)
        if step % 2 == 1:
            method.end_epoch()  # type: ignore[operator]
    return out


@pytest.mark.parametrize("name", OURS)
def test_state_dict_round_trip(name: str) -> None:
    first = make_balancer(name)
    first.setup(("a", "b", "c"))
    if name == "uncertainty":
        with torch.no_grad():
            for i, p in enumerate(first.parameters()):
                p.fill_(0.1 * (i + 1))
    _run(first, range(5))
    state = {k: v.clone() for k, v in first.state_dict().items()}
    second = make_balancer(name)
    second.setup(("a", "b", "c"))
    second.load_state_dict(state)
    for key, value in second.state_dict().items():
        assert torch.equal(value.nan_to_num(-1.0), state[key].nan_to_num(-1.0))  # NaN: not yet seen
    torch.manual_seed(5)
    a = _run(first, range(5, 9))
    torch.manual_seed(5)
    b = _run(second, range(5, 9))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
