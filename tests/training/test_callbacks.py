"""Callbacks (hooks, early stopping, best checkpoint) and progress lines."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch

from manytask import HardSharing, Task
from manytask.training import Trainer
from manytask.training.callbacks import BestCheckpoint, Callback, EarlyStopping, main_score
from manytask.training.checkpoint import load_model_weights
from manytask.training.progress import Progress

TASKS = [Task.classification("a", 3), Task.regression("b")]


def _batches(n: int = 48, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = {"a": (x[:, 0] > 0).long() + (x[:, 1] > 1).long(), "b": x[:, 2:3] * 2}
    return [(x[i : i + 8], {k: v[i : i + 8] for k, v in y.items()}) for i in range(0, n, 8)]


def _trainer(run_dir: Path | None, callbacks=(), lr: float = 0.05, **kw) -> Trainer:
    torch.manual_seed(0)
    return Trainer(HardSharing(TASKS, 4, hidden=(8,)), TASKS, "equal", run_dir=run_dir,
                   progress=False, lr=lr, callbacks=callbacks, **kw)


def test_main_score_follows_each_metrics_direction() -> None:
    results = {"a": {"accuracy": 0.8, "loss": 0.5}, "b": {"mse": 0.2, "mae": 0.3, "loss": 0.2}}
    assert main_score(results, TASKS) == pytest.approx((0.8 - 0.2) / 2)
    assert main_score(results, TASKS, "loss") == pytest.approx(-0.35)
    assert main_score(results, TASKS, "b/mae") == pytest.approx(-0.3)
    assert main_score(results, TASKS, "a/accuracy") == pytest.approx(0.8)
    with pytest.raises(ValueError, match="monitor 'b/accuracy'"):
        _trainer(None, monitor="b/accuracy")


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_fit_start(self, trainer):
        self.calls.append("fit_start")

    def on_step_end(self, trainer, row):
        self.calls.append(f"step{row['step']}")

    def on_validation_end(self, trainer, results):
        self.calls.append(f"val{trainer.epoch}:{sorted(results)}")

    def on_epoch_end(self, trainer, summary):
        assert (trainer.run_dir / "checkpoints" / f"epoch-{trainer.epoch:04d}").is_dir()
        self.calls.append(f"epoch{summary['epoch']}")

    def on_fit_end(self, trainer):
        self.calls.append("fit_end")


def test_hooks_run_in_order_with_the_trainers_state(tmp_path: Path) -> None:
    rec = Recorder()
    _trainer(tmp_path, [rec]).fit(_batches(16), 2, val_data=_batches(8, 1))
    assert rec.calls == ["fit_start", "step1", "step2", "val0:['a', 'b']", "epoch0",
                         "step3", "step4", "val1:['a', 'b']", "epoch1", "fit_end"]


def test_early_stopping_stops_after_patience_epochs_without_progress() -> None:
    stop = EarlyStopping(2)
    trainer = _trainer(None, [stop], lr=1e-12)  # too small a step to change the score
    history = trainer.fit(_batches(), 10, val_data=_batches(16, 1))
    assert len(history) == 3 and stop.stopped_epoch == 2  # best at 0, no better at 1 and 2
    assert history[1]["score"] <= history[0]["score"] + 0.0


def test_a_stopped_run_resumed_with_more_epochs_stays_stopped(tmp_path: Path) -> None:
    _trainer(tmp_path, [EarlyStopping(1)], lr=1e-12).fit(_batches(), 4, val_data=_batches(16, 1))
    resumed = _trainer(tmp_path, [EarlyStopping(1)], lr=1e-12)
    history = resumed.fit(_batches(), 8, val_data=_batches(16, 1), resume=True)
    assert history == [] and resumed.step == 2 * 6  # stopped after epoch 1, as before


def test_best_checkpoint_is_kept_and_restored(tmp_path: Path) -> None:
    best = BestCheckpoint()
    trainer = _trainer(tmp_path, [best], lr=0.3, keep_checkpoints=1)
    val = _batches(16, 1)
    history = trainer.fit(_batches(), 6, val_data=val)
    scores = [h["score"] for h in history]
    want = max(range(len(scores)), key=lambda i: (scores[i], -i))
    assert best.best_epoch == want
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "best").read_text() == f"epoch-{want:04d}"
    kept = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("epoch-"))
    assert kept == sorted({f"epoch-{want:04d}", "epoch-0005"})
    assert trainer.restore_best() == want
    assert trainer.evaluate(val) == history[want]["val"]  # the weights of that epoch
    assert main_score(trainer.evaluate(val), TASKS) == scores[want]


def test_best_without_run_dir_is_kept_in_memory() -> None:
    best = BestCheckpoint("b/mse")
    trainer = _trainer(None, [best], lr=0.3)
    val = _batches(16, 1)
    history = trainer.fit(_batches(), 4, val_data=val)
    want = min(range(4), key=lambda i: history[i]["val"]["b"]["mse"])
    assert trainer.restore_best() == want
    assert trainer.evaluate(val)["b"]["mse"] == history[want]["val"]["b"]["mse"]


def test_resume_with_callbacks_is_bit_exact(tmp_path: Path) -> None:
    def run(run_dir: Path, epochs: int, resume: bool) -> Trainer:
        cbs = [EarlyStopping(3, min_delta=1e-3), BestCheckpoint()]
        trainer = _trainer(run_dir, cbs, lr=0.2, keep_checkpoints=1)
        trainer.fit(_batches(), epochs, val_data=_batches(16, 1), resume=resume)
        return trainer

    full = run(tmp_path / "full", 6, False)
    run(tmp_path / "cut", 3, False)
    torch.manual_seed(123)
    resumed = run(tmp_path / "cut", 6, True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    assert resumed.callbacks[0].state_dict() == full.callbacks[0].state_dict()
    assert resumed.callbacks[1].state_dict() == full.callbacks[1].state_dict()
    assert resumed.step == full.step


def test_plain_progress_lines_and_one_validation_line_per_epoch(tmp_path: Path) -> None:
    stream = io.StringIO()  # not a terminal
    trainer = _trainer(tmp_path)
    trainer.progress = True
    progress = Progress(True, tmp_path / "x.log", stream)
    assert not progress.terminal
    for i, _ in enumerate(progress.epoch(range(20), 0, 3), start=1):
        progress.step(i, {"step": i, "loss/a": 0.5, "loss/b": 0.25})
    progress.end_epoch("epoch 1/3 done")
    out = stream.getvalue()
    assert "\r" not in out
    assert out.count("\n") == 10 + 1  # a line every 2 batches of 20, and the epoch line
    assert "epoch 1/3 batch 20/20 step 20: loss a 0.5000 b 0.2500" in out
    assert (tmp_path / "x.log").read_text() == "epoch 1/3 done\n"


def test_cli_prints_one_validation_line_per_epoch_to_a_file(tmp_path: Path, capsys) -> None:
    from manytask.cli import main

    run = tmp_path / "run"
    assert main(["train", "--train-size", "200", "--hidden", "16", "--epochs", "2",
                 "--run-dir", str(run), "--early-stopping", "5"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ": val " in ln]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2 step ")
    assert "left loss " in lines[0] and " accuracy " in lines[0] and "| score " in lines[0]
    log = (run / "train.log").read_text().splitlines()
    assert log == lines
    assert not math.isnan(float(lines[1].rsplit(" ", 1)[1]))


def test_load_model_weights_refuses_another_model(tmp_path: Path) -> None:
    _trainer(tmp_path).fit(_batches(16), 1)
    other = HardSharing(TASKS, 4, hidden=(9,))
    with pytest.raises(ValueError, match="does not match this model"):
        load_model_weights(tmp_path / "checkpoints" / "epoch-0000", other)
