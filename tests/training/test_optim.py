"""Optimisers by name, parameter groups, clipping, learning-rate schedules (closed forms)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import manytask
from manytask import HardSharing, Task
from manytask.registry import RegistryError
from manytask.training import Trainer
from manytask.training.callbacks import Callback
from manytask.training.optim import OPTIMIZERS, SCHEDULES, check_optimizer

TASKS = [Task.classification("a", 3), Task.regression("b")]


def _batches(n: int = 48, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = {"a": (x[:, 0] > 0).long() + (x[:, 1] > 1).long(), "b": x[:, 2:3] * 2}
    return [(x[i : i + 8], {k: v[i : i + 8] for k, v in y.items()}) for i in range(0, n, 8)]


def _trainer(run_dir=None, balancer="equal", **kw) -> Trainer:
    torch.manual_seed(0)
    model = HardSharing(TASKS, 4, hidden=(8,))
    return Trainer(model, TASKS, manytask.make_balancer(balancer), run_dir=run_dir,
                   progress=False, **kw)


class LRs(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_step_end(self, trainer, row):
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


def test_sgd_with_nesterov_by_name_is_torchs_sgd_on_the_summed_loss() -> None:
    trainer = _trainer(optimizer="sgd", lr=0.1,
                       optimizer_params={"momentum": 0.9, "nesterov": True})
    torch.manual_seed(0)
    ref = HardSharing(TASKS, 4, hidden=(8,))
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    data = _batches()
    trainer.fit(data, 1)
    for x, y in data:
        out = ref(x)
        loss = sum(t.loss(out[t.name], y[t.name]) for t in TASKS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (name, got), want in zip(trainer.model.state_dict().items(), ref.state_dict().values(),
                                 strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_parameter_groups_take_their_own_learning_rates() -> None:
    trainer = _trainer(balancer="uncertainty", optimizer="adamw", lr=0.01,
                       lrs={"heads": 0.0, "balancer": 0.05})
    groups = {g["role"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {"shared", "heads", "balancer"}
    assert groups["balancer"]["weight_decay"] == 0.0 and groups["shared"]["weight_decay"] == 0.01
    heads = {k: v.clone() for k, v in trainer.model.heads.state_dict().items()}
    shared = {k: v.clone() for k, v in trainer.model.shared.state_dict().items()}
    trainer.fit(_batches(), 1)
    for k, v in trainer.model.heads.state_dict().items():
        assert torch.equal(v, heads[k]), k  # lr 0: untouched
    assert any(not torch.equal(v, shared[k]) for k, v in trainer.model.shared.state_dict().items())
    with pytest.raises(ValueError, match="unknown role"):
        _trainer(lrs={"trunk": 0.1})


def test_any_torch_optimizer_and_one_line_errors() -> None:
    trainer = _trainer(optimizer="torch.optim.NAdam", optimizer_params={"momentum_decay": 0.004})
    assert isinstance(trainer.optimizer, torch.optim.NAdam)
    with pytest.raises(RegistryError, match=r"unknown optimizer 'adm' \(did you mean 'adam'"):
        check_optimizer("adm", {})
    with pytest.raises(RegistryError, match="momentum must be < 1"):
        check_optimizer("sgd", {"momentum": 1.5})
    with pytest.raises(RegistryError, match="nesterov needs momentum"):
        check_optimizer("sgd", {"nesterov": True})
    with pytest.raises(RegistryError, match=r"unknown parameter\(s\) \['betas'\]"):
        check_optimizer("torch.optim.SGD", {"betas": [0.9, 0.9]})
    with pytest.raises(RegistryError, match="no optimizer"):
        check_optimizer("torch.optim.Nothing", {})
    assert {"sgd", "adam", "adamw"} <= set(OPTIMIZERS.names())
    assert set(SCHEDULES.names()) == {"constant", "cosine", "linear", "step", "plateau"}


def test_clipping_bounds_the_update() -> None:
    trainer = _trainer(optimizer="sgd", lr=1.0, clip_grad_norm=1e-3)
    before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
    trainer.fit(_batches(8), 1)
    after = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert 0 < float((after - before).norm()) <= 1e-3 * (1 + 1e-5)


def test_warmup_then_cosine_per_step_follows_the_closed_form() -> None:
    rec = LRs()
    lr, warm, eta = 0.1, 3, 0.01
    trainer = _trainer(lr=lr, schedule="cosine", warmup=warm, schedule_params={"eta_min": eta},
                       callbacks=[rec])
    trainer.fit(_batches(), 2)  # 12 steps
    total = 12
    want = []
    for k in range(1, total + 1):  # the lr after k scheduler steps
        if k < warm:
            want.append(lr * (1 / (warm + 1) + (1 - 1 / (warm + 1)) * k / warm))
        else:
            t, span = k - warm, total - warm
            want.append(eta + (lr - eta) * (1 + math.cos(math.pi * t / span)) / 2)
    assert rec.lrs == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_step_per_epoch_and_plateau() -> None:
    rec = LRs()
    _trainer(lr=0.1, schedule="step", schedule_interval="epoch", callbacks=[rec],
             schedule_params={"step_size": 2, "gamma": 0.5}).fit(_batches(16), 5)
    assert rec.lrs[::2] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    rec = LRs()
    trainer = _trainer(lr=1e-12, schedule="plateau", callbacks=[rec],
                       schedule_params={"patience": 1, "factor": 0.5})
    trainer.fit(_batches(8), 5, val_data=_batches(8, 1))  # a lr that cannot improve anything
    assert rec.lrs == pytest.approx([1e-12, 1e-12, 1e-12, 5e-13, 5e-13], rel=1e-6)
    with pytest.raises(ValueError, match="needs val_data"):
        _trainer(schedule="plateau").fit(_batches(8), 1)


def test_resume_with_a_schedule_is_bit_exact(tmp_path: Path) -> None:
    kw = dict(balancer="uncertainty", optimizer="sgd", lr=0.05, warmup=2, schedule="cosine",
              optimizer_params={"momentum": 0.9}, lrs={"balancer": 0.01}, log_every=1,
              schedule_steps=24)  # the cut run must know the whole length
    full = _trainer(tmp_path / "full", **kw)
    full.fit(_batches(), 4)
    _trainer(tmp_path / "cut", **kw).fit(_batches(), 2)
    torch.manual_seed(7)
    cut = _trainer(tmp_path / "cut", **kw)
    cut.fit(_batches(), 4, resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(cut.model.state_dict()[k], v), k
    for k, v in full.balancer.state_dict().items():
        assert torch.equal(cut.balancer.state_dict()[k], v), k
    assert cut.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]


def test_cli_options_and_errors_before_any_data(tmp_path: Path, capsys) -> None:
    from manytask.cli import main

    base = ["train", "--train-size", "200", "--hidden", "16", "--epochs", "2", "--no-progress"]
    assert main([*base, "--optimizer", "sgd", "--optimizer-param", "momentum=0.9",
                 "--weight-decay", "0.001", "--schedule", "cosine", "--warmup", "2",
                 "--head-lr", "0.01", "--clip-grad-norm", "5"]) == 0
    capsys.readouterr()
    for flags, message in [
        (["--optimizer", "sgdd"], "did you mean 'sgd'"),
        (["--schedule", "cosin"], "did you mean 'cosine'"),
        (["--schedule", "step", "--schedule-param", "gamma=2"], "gamma must be <= 1"),
        (["--weight-decay", "0.1", "--optimizer-param", "weight_decay=0.2"], "given twice"),
    ]:
        assert main([*base, "--run-dir", str(tmp_path / "r"), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "r").exists()


def test_declared_parameters_agree_with_the_targets() -> None:
    from manytask.registry import check_declared

    problems = [p for reg in (OPTIMIZERS, SCHEDULES) for e in reg.entries()
                for p in check_declared(e)]
    assert problems == []
