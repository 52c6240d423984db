"""Trainer options: task-based flat regions, expert usage logs, TensorBoard, empty data sets and
run folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import manytask
from manytask import HardSharing, Task, Trainer

TASKS = [Task.classification("a", 3), Task.regression("b")]


def _batches(n: int = 64, batch: int = 16) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    a, b = torch.randint(0, 3, (n,), generator=g), x[:, :1] * 2
    return [(x[i : i + batch], {"a": a[i : i + batch], "b": b[i : i + batch]})
            for i in range(0, n, batch)]


def _fit(flat_rho: float | None, dropout: float = 0.0) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = HardSharing(TASKS, 6, hidden=(16, 16), dropout=dropout)
    trainer = Trainer(model, TASKS, "upgrad", progress=False, lr=1e-2, flat_rho=flat_rho)
    trainer.fit(_batches(), epochs=2)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_flat_rho_zero_trains_like_the_plain_method() -> None:
    plain, flat = _fit(None), _fit(0.0)
    for name, value in plain.items():
        torch.testing.assert_close(flat[name], value, rtol=1e-5, atol=1e-6)


def test_flat_rho_changes_the_update_and_keeps_dropout_draws() -> None:
    plain, flat = _fit(None, dropout=0.2), _fit(0.05, dropout=0.2)
    assert any(not torch.allclose(flat[k], v) for k, v in plain.items())
    assert all(torch.isfinite(v).all() for v in flat.values())


def test_flat_rho_refuses_what_it_cannot_do() -> None:
    model = HardSharing(TASKS, 6, hidden=(8,))
    with pytest.raises(ValueError, match="gradient-level"):
        Trainer(model, TASKS, "uncertainty", flat_rho=0.05)
    with pytest.raises(ValueError, match="exact"):
        Trainer(model, TASKS, "mgda", mode="feature", flat_rho=0.05)
    with pytest.raises(ValueError, match=">= 0"):
        Trainer(model, TASKS, "mgda", flat_rho=-1.0)


def test_flat_backward_is_exported() -> None:
    assert manytask.flat_backward is manytask.engine.flat.flat_backward


def test_trainer_logs_expert_usage_and_warns_about_identical_experts(tmp_path: Path) -> None:
    from manytask.models import MMoE

    torch.manual_seed(0)
    model = MMoE(TASKS, in_features=6, n_experts=3, expert_hidden=(8,))
    trainer = Trainer(model, TASKS, "equal", progress=False, run_dir=tmp_path)
    history = trainer.fit(_batches(), epochs=2)
    usage = history[-1]["experts"]["usage"]
    assert set(usage) and all(abs(sum(u.values()) - 1) < 1e-5 for u in usage.values())
    lines = (tmp_path / "experts.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # experts 0 and 1 made identical and frozen: the next epoch's report must name the pair
    experts = next(m for m in model.modules() if isinstance(m, manytask.models.ExpertSet))
    with torch.no_grad():
        for p in experts.parameters():
            p[1].copy_(p[0])
    experts.requires_grad_(False)
    fresh = Trainer(model, TASKS, "equal", progress=False)
    with pytest.warns(RuntimeWarning, match="identical"):
        history = fresh.fit(_batches(), epochs=1)
    assert history[-1]["experts"]["identical"] == [[experts.names[0], experts.names[1]]]


def test_trainer_refuses_an_empty_data_set_and_a_run_dir_that_is_a_file(tmp_path: Path) -> None:
    model = HardSharing(TASKS, 6, hidden=(8,))
    with pytest.raises(ValueError, match="no batch in epoch 0"):
        Trainer(model, TASKS, "equal", progress=False).fit([], epochs=1)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ValueError, match="a file"):
        Trainer(model, TASKS, "equal", progress=False, run_dir=afile / "run")


def test_tensorboard_mirrors_the_logs(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = HardSharing(TASKS, 6, hidden=(8,))
    trainer = Trainer(model, TASKS, "mgda", progress=False, run_dir=tmp_path, log_every=1,
                      tensorboard=True)
    trainer.fit(_batches(), epochs=2, val_data=_batches())
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/a", "weight/b", "cos/a/b", "val/a/accuracy"} <= tags
    weights = [e.value for e in events.Scalars("weight/a")]
    assert len(weights) == trainer.step and all(0 <= w <= 1 for w in weights)
    with pytest.raises(ValueError, match="run_dir"):
        Trainer(model, TASKS, "equal", tensorboard=True)


def test_resume_survives_an_experts_log_cut_off_by_a_kill(tmp_path: Path) -> None:
    from manytask.models import MMoE

    torch.manual_seed(0)
    model = MMoE(TASKS, in_features=6, n_experts=2, expert_hidden=(4,))
    Trainer(model, TASKS, "equal", progress=False, run_dir=tmp_path).fit(_batches(), epochs=1)
    log = tmp_path / "experts.jsonl"
    log.write_text(log.read_text() + '{"epoch": 1, "usa')  # killed mid-write
    trainer = Trainer(model, TASKS, "equal", progress=False, run_dir=tmp_path)
    trainer.fit(_batches(), epochs=2, resume=True)
    epochs = [line.split(",")[0] for line in log.read_text().splitlines()]
    assert epochs == ['{"epoch": 0', '{"epoch": 1']
