"""Class 4: non-finite or mistyped tensors written or loaded at exit 0 (issue 16).

Finite inputs whose merge overflows (a float16 output, a huge ``lambda`` or weight), a model
or optimizer state that an overflowing last step made infinite, a checkpoint whose tensor
dtype was altered or that holds NaN: each is an error naming the tensor, and nothing is
written (no output folder, no checkpoint folder, the model as it was).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hos_helpers import (
    assert_cli_one_line,
    assert_no_partial,
    family,
    merge_config,
    raises_clear,
    run_cli,
    small_state,
    write_model,
    write_yaml,
)
from safetensors.torch import load_file, save_file
from torch import nn

from manytask.finite import NonFiniteTensorError, first_nonfinite
from manytask.merging import merge, merge_state_dicts
from manytask.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _big_family(root: Path, value: float) -> tuple[Path, list[Path]]:
    """A base of zeros and two models whose every weight is ``value`` (finite)."""
    zeros = {k: torch.zeros_like(v) for k, v in small_state().items()}
    base = write_model(root / "base", zeros)
    models = [write_model(root / f"m{i}", {k: torch.full_like(v, value) for k, v in
                                           zeros.items()}) for i in range(2)]
    return base, models


# (method, value of every weight, parameters, output dtype): finite inputs, overflowing output
OVERFLOWS = {
    "float16 output": ("task_arithmetic", 60000.0, {}, "float16", {"weight": 1.0}),
    "huge lambda": ("task_arithmetic", 1e30, {"lambda": 1e30}, None, {"weight": 1.0}),
    "huge weight": ("linear", 1e20, {}, None, {"weight": 1e30}),
    "ties huge lambda": ("ties", 1e30, {"lambda": 1e30}, None, {"weight": 1.0, "density": 1.0}),
    "bfloat16 output": ("linear", 3e38, {}, "bfloat16", {"weight": 1.0}),
}


def _config(root: Path, case: str) -> dict:
    method, value, params, dtype, per_model = OVERFLOWS[case]
    base, models = _big_family(root, value)
    config = merge_config(base, models)
    config["merge_method"] = method
    config["parameters"] = params
    for m in config["models"]:
        m["parameters"] = dict(per_model)
    if dtype:
        config["dtype"] = dtype
    if method == "linear":
        config.pop("base_model")
    return config


@pytest.mark.parametrize("case", sorted(OVERFLOWS))
def test_merge_overflow_writes_nothing(tmp_path: Path, case: str) -> None:
    config = _config(tmp_path, case)
    out = tmp_path / "out"
    raises_clear(lambda: merge(config, out), "merge output", "layer.", kinds=NonFiniteTensorError)
    assert not out.exists()
    assert_no_partial(tmp_path, "out")


@pytest.mark.parametrize("case", ["float16 output", "huge lambda"])
def test_merge_overflow_keeps_a_previous_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    base, models = family(tmp_path / "ok")
    out = tmp_path / "out"
    merge(merge_config(base, models), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    path = write_yaml(tmp_path / "bad.yaml", _config(tmp_path / "bad", case))
    code, err = run_cli(["merge", "--quiet", str(path), str(out)], capsys)
    assert_cli_one_line(code, err, "holds inf")
    assert code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_in_memory_merge_overflow() -> None:
    base = {"w": torch.zeros(4, 4)}
    state = {"w": torch.full((4, 4), 60000.0)}
    with pytest.raises(NonFiniteTensorError, match="'w'"):
        merge_state_dicts("task_arithmetic", [state, state], base=base, dtype="float16")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_first_nonfinite_finds_the_first(dtype: torch.dtype, bad: float) -> None:
    x = torch.ones(1000, dtype=dtype)
    assert first_nonfinite(x) is None
    x[[417, 900]] = bad
    assert first_nonfinite(x) == 417


def test_first_nonfinite_with_a_sum_that_overflows() -> None:
    x = torch.full((100,), torch.finfo(torch.float64).max, dtype=torch.float64)
    assert first_nonfinite(x) is None  # finite, though its sum is inf


def _trained(tmp_path: Path) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    return model, opt


@pytest.mark.parametrize("where", ["model weight", "model bias", "adam exp_avg_sq", "adam step"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_overflowed_state_is_not_checkpointed(tmp_path: Path, where: str, bad: float) -> None:
    model, opt = _trained(tmp_path)
    with torch.no_grad():
        if where == "model weight":
            model[0].weight[1, 2] = bad
        elif where == "model bias":
            model[1].bias.fill_(bad)
        else:
            state = opt.state[model[0].weight]
            state["exp_avg_sq" if "sq" in where else "step"].fill_(bad)
    run = tmp_path / "run"
    raises_clear(
        lambda: save_checkpoint(run, 3, model=model, optimizer=opt, balancer=nn.Module(),
                                info={}),
        "epoch 3",
        kinds=NonFiniteTensorError,
    )
    assert not (run / "checkpoints" / "epoch-0003").exists()
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert not (run / "checkpoints" / "latest").exists()


def _saved(tmp_path: Path) -> tuple[Path, nn.Module, torch.optim.Optimizer]:
    model, opt = _trained(tmp_path)
    folder = save_checkpoint(tmp_path / "run", 1, model=model, optimizer=opt,
                             balancer=nn.Module(), info={})
    return folder, model, opt


@pytest.mark.parametrize(
    ("file", "edit", "needle"),
    [
        ("model", lambda t: t.half(), "float16"),
        ("model", lambda t: t.double(), "float64"),
        ("model", lambda t: t.to(torch.int32), "int32"),
        ("model", lambda t: t.view(torch.int32), "int32"),  # same bytes, other dtype
        ("model", lambda t: t.fill_(float("nan")), "nan"),
        ("model", lambda t: t.fill_(float("inf")), "inf"),
        ("optimizer", lambda t: t.fill_(float("inf")), "inf"),
        ("optimizer", lambda t: t.fill_(float("nan")), "nan"),
    ],
    ids=["half", "double", "int32", "int32 bits", "model nan", "model inf", "optim inf",
         "optim nan"],
)
def test_altered_checkpoint_is_refused(tmp_path: Path, file: str, edit, needle: str) -> None:
    folder, _, _ = _saved(tmp_path)
    path = folder / f"{file}.safetensors"
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = edit(tensors[name].clone()).contiguous()
    save_file(tensors, str(path))
    fresh = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.01)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    raises_clear(
        lambda: load_checkpoint(folder, model=fresh, optimizer=fresh_opt, balancer=nn.Module()),
        name,
        needle,
        kinds=CheckpointError,
    )
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    assert not fresh_opt.state  # nothing half restored


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_training_that_ends_non_finite_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    bad: float
) -> None:
    """The last step overflows (simulated: the weights turn non-finite as fit returns), with
    ``skip_nonfinite`` on and no run folder: exit 2 naming the tensor, no table of NaNs."""
    from manytask.training import Trainer

    real_fit = Trainer.fit

    def overflowing_fit(self: Trainer, *args, **kwargs):
        history = real_fit(self, *args, **kwargs)
        with torch.no_grad():
            next(iter(self.model.parameters())).fill_(bad)
        return history

    monkeypatch.setattr(Trainer, "fit", overflowing_fit)
    code, err = run_cli(["train", "--epochs", "1", "--train-size", "64", "--hidden", "8",
                         "--skip-nonfinite", "--no-progress"], capsys)
    assert_cli_one_line(code, err, "the trained model", str(bad))
    assert code == 2
