"""Trainer: exact resume, atomic checkpoints, non-finite losses, logs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import manytask
from manytask import HardSharing, Task
from manytask.training import Trainer, latest_checkpoint, load_checkpoint
from manytask.training import checkpoint as ckpt_module

TASKS = [Task.classification("a", 3), Task.regression("b"), Task.binary("c")]


class Batches:
    """A DataLoader over tensors, shuffled with the global RNG (restored on resume)."""

    def __init__(self, n: int = 96, batch_size: int = 16, seed: int = 123) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        self.a = torch.randint(0, 3, (n,), generator=g)
        self.b = self.x[:, :1] * 2 + 0.1 * torch.randn(n, 1, generator=g)
        self.c = (self.x[:, 1] > 0).float()
        self.loader = DataLoader(
            TensorDataset(self.x, self.a, self.b, self.c), batch_size=batch_size, shuffle=True
        )

    def __iter__(self):
        for x, a, b, c in self.loader:
            yield x, {"a": a, "b": b, "c": c}

    def __len__(self) -> int:
        return len(self.loader)


def _trainer(run_dir: Path | None, balancer: str = "equal", seed: int = 0, **kw) -> Trainer:
    torch.manual_seed(seed)
    model = HardSharing(TASKS, 6, hidden=(16, 16), dropout=0.1)
    params = {"weights": {"a": 2.0}} if balancer == "fixed" else {}
    return Trainer(
        model,
        TASKS,
        manytask.make_balancer(balancer, **params),
        run_dir=run_dir,
        progress=False,
        lr=1e-2,
        log_every=1,
        **kw,
    )


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("balancer", manytask.available())
def test_resume_is_bit_exact(tmp_path: Path, balancer: str) -> None:
    mode = "exact"
    full = _trainer(tmp_path / "full", balancer, mode=mode)
    full.fit(Batches(), 4, val_data=Batches(32, seed=9))
    expected = _state(full)

    first = _trainer(tmp_path / "resumed", balancer, mode=mode)
    first.fit(Batches(), 2, val_data=Batches(32, seed=9))
    torch.manual_seed(999)  # the resumed process starts from unrelated RNG and weights
    second = _trainer(tmp_path / "resumed", balancer, seed=5, mode=mode)
    second.fit(Batches(), 4, val_data=Batches(32, seed=9), resume=True)
    got = _state(second)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert second.step == full.step
    full_rows = (tmp_path / "full" / "steps.csv").read_text()
    assert (tmp_path / "resumed" / "steps.csv").read_text() == full_rows


def test_checkpoint_write_failure_keeps_previous(tmp_path: Path, monkeypatch) -> None:
    trainer = _trainer(tmp_path)
    trainer.fit(Batches(), 1)
    good = latest_checkpoint(tmp_path)
    assert good is not None and good.name == "epoch-0000"
    calls = {"n": 0}
    real = ckpt_module.save_file

    def failing(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # die half-way through the second checkpoint
            raise OSError("disk full")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt_module, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(Batches(), 2, resume=True)
    assert latest_checkpoint(tmp_path) == good
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    fresh = _trainer(None)
    state = load_checkpoint(
        good, model=fresh.model, optimizer=fresh.optimizer, balancer=fresh.balancer
    )
    assert state["epoch"] == 0


def test_nan_loss_stops_naming_task_and_step(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    data = Batches()
    data.b[5:40] = math.inf  # regression targets that make task b's loss infinite
    before = _state(trainer)
    with pytest.raises(manytask.TargetError, match="'b'"):
        trainer.fit(data, 1)
    for name, value in before.items():
        assert torch.equal(trainer.model.state_dict()[name], value)


def test_nonfinite_loss_error_and_skip(tmp_path: Path) -> None:
    class Poison(torch.nn.Module):
        def forward(self, x):
            return x * float("nan")

    trainer = _trainer(None)
    trainer.model.heads["b"].append(Poison())
    before = _state(trainer)
    with pytest.raises(manytask.NonFiniteLossError, match=r"'b'.*step 0"):
        trainer.fit(Batches(), 1)
    skipper = _trainer(None, skip_nonfinite=True)
    skipper.model.heads["b"].append(Poison())
    with pytest.warns(RuntimeWarning, match="skipped"):
        skipper.fit(Batches(), 1)
    assert skipper.skipped_steps == len(Batches()) and skipper.step == 0
    for name, value in before.items():
        assert torch.equal(trainer.model.state_dict()[name], value)


def test_logs_and_metrics(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, log_format="jsonl")
    summaries = trainer.fit(Batches(), 2, val_data=Batches(32, seed=9))
    assert len(summaries) == 2
    rows = trainer._open_logs()[0].read()  # type: ignore[union-attr]
    assert len(rows) == trainer.step and rows[-1]["step"] == trainer.step
    assert set(summaries[-1]["val"]) == {"a", "b", "c"}
    assert {"loss", "accuracy"} <= set(summaries[-1]["val"]["a"])
    assert {"loss", "mse", "mae"} <= set(summaries[-1]["val"]["b"])
    assert {"auc", "accuracy"} <= set(summaries[-1]["val"]["c"])
    assert (tmp_path / "metrics.jsonl").exists()


def test_heads_must_match_tasks() -> None:
    model = HardSharing(TASKS[:2], 6, hidden=(4,))
    with pytest.raises(ValueError, match=r"no head for \['c'\]"):
        Trainer(model, TASKS, "equal")


def test_training_learns(tmp_path: Path) -> None:
    trainer = _trainer(None)
    before = trainer.evaluate(Batches(64, seed=4))
    trainer.fit(Batches(), 15)
    after = trainer.evaluate(Batches(64, seed=4))
    assert after["b"]["mse"] < 0.5 * before["b"]["mse"]
    assert after["c"]["auc"] > 0.9


def test_cosine_logged_for_loss_level_methods_when_asked(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, cosine_every=2)
    trainer.fit(Batches(), 1)
    rows = trainer._open_logs()[0].read()  # type: ignore[union-attr]
    logged = [r for r in rows if r["cos/a/b"] is not None]
    assert [int(r["step"]) for r in logged] == [s for s in range(1, trainer.step + 1) if s % 2 == 0]
    assert all(-1.0 <= float(r["cos/a/b"]) <= 1.0 for r in logged)


def test_checkpoints_past_epoch_9999_are_kept_by_number(tmp_path: Path) -> None:
    model = HardSharing(TASKS, 6, hidden=(4,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    balancer = manytask.make_balancer("equal")
    for epoch in (9998, 9999, 10000):
        ckpt_module.save_checkpoint(tmp_path, epoch, model=model, optimizer=opt,
                                    balancer=balancer, info={"step": epoch}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["epoch-10000", "epoch-9999", "latest"]
    assert latest_checkpoint(tmp_path).name == "epoch-10000"
