"""Gradient accumulation equals one large batch; bf16 autocast; devices by name."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

import manytask
from manytask import HardSharing, Task
from manytask.engine.gradients import task_gradients
from manytask.training import Trainer
from manytask.training.devices import resolve_device
from manytask.training.memory import SavedBytes

TASKS = [Task.classification("a", 3), Task.regression("b"), Task.binary("c")]


def _micro(n: int = 64, size: int = 4, seed: int = 0, missing: bool = True) -> list:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    a = torch.randint(0, 3, (n,), generator=g)
    b = x[:, :1] * 2 + 0.1 * torch.randn(n, 1, generator=g)
    c = (x[:, 1] > 0).float()
    if missing:  # unequal labelled counts per micro-batch: the weights n_m / n matter
        a[torch.rand(n, generator=g) < 0.4] = -1
        b[torch.rand(n, generator=g) < 0.3] = float("nan")
    return [(x[i : i + size], {"a": a[i : i + size], "b": b[i : i + size], "c": c[i : i + size]})
            for i in range(0, n, size)]


def _join(micro: list, k: int) -> list:
    out = []
    for i in range(0, len(micro), k):
        group = micro[i : i + k]
        out.append((torch.cat([m[0] for m in group]),
                    {t: torch.cat([m[1][t] for m in group]) for t in group[0][1]}))
    return out


def _trainer(balancer: str, **kw) -> Trainer:
    torch.manual_seed(0)
    model = HardSharing(TASKS, 5, hidden=(16, 8))
    return Trainer(model, TASKS, manytask.make_balancer(balancer), progress=False, lr=0.01, **kw)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no fall-back to the graphs
@pytest.mark.parametrize("memory", ["free", "graphs"])
@pytest.mark.parametrize("balancer,mode", [
    ("equal", "exact"), ("uncertainty", "exact"), ("dwa", "exact"), ("mgda", "exact"),
    ("pcgrad", "exact"), ("cagrad", "exact"), ("mgda", "feature"),
    # a Jacobian aggregator, Nash-MTL (its own head weights), IMTL (its learnable scales),
    # GradNorm (a loss weighting driven by the Gramian), loss level in feature mode
    ("upgrad", "exact"), ("upgrad", "feature"), ("nash_mtl", "exact"), ("imtl", "feature"),
    ("imtl", "exact"), ("gradnorm", "exact"), ("uncertainty", "feature"),
])
def test_n_micro_batches_equal_one_batch_n_times_larger(balancer: str, mode: str,
                                                        memory: str) -> None:
    micro = _micro()
    small = _trainer(balancer, mode=mode, accumulate=4, accumulate_memory=memory)
    large = _trainer(balancer, mode=mode)
    torch.manual_seed(1)  # pcgrad draws task orders: the same draws for both
    # 8 steps: later, CAGrad's solver may switch its active set on float noise (seen at 9+)
    small.fit(micro, 2)
    torch.manual_seed(1)
    large.fit(_join(micro, 4), 2)
    assert small.step == large.step == 2 * 4
    for (name, got), want in zip(small.model.state_dict().items(),
                                 large.model.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
    for name, want in large.balancer.state_dict().items():
        torch.testing.assert_close(small.balancer.state_dict()[name], want, rtol=1e-4,
                                   atol=1e-5, msg=name)


def test_the_method_sees_the_large_batchs_gramian() -> None:
    micro = _micro(16, 4)
    small = _trainer("mgda", accumulate=4)
    losses, features, counts = small._losses(micro)
    large_losses, large_features, large_counts = small._losses(_join(micro, 4))
    assert counts == large_counts
    shared = list(small.model.shared_parameters())
    got = task_gradients(list(losses.values()), features, mode="exact",
                         shared_params=shared).gramian
    want = task_gradients(list(large_losses.values()), [large_features], mode="exact",
                          shared_params=shared).gramian
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_a_last_group_of_fewer_micro_batches_still_steps() -> None:
    trainer = _trainer("equal", accumulate=3)
    trainer.fit(_micro(40, 8), 1)  # 5 micro-batches: a step of 3, then one of 2
    assert trainer.step == 2


def test_resume_with_accumulation_and_bf16_is_bit_exact(tmp_path: Path) -> None:
    kw = dict(accumulate=2, precision="bf16", log_every=1)
    full = _trainer("uncertainty", run_dir=tmp_path / "full", **kw)
    full.fit(_micro(), 4)
    _trainer("uncertainty", run_dir=tmp_path / "cut", **kw).fit(_micro(), 2)
    torch.manual_seed(3)
    cut = _trainer("uncertainty", run_dir=tmp_path / "cut", **kw)
    cut.fit(_micro(), 4, resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(cut.model.state_dict()[k], v), k
    assert (tmp_path / "cut" / "steps.csv").read_text() == (
        tmp_path / "full" / "steps.csv").read_text()


def test_bf16_runs_the_forward_in_bfloat16_and_keeps_float32_weights() -> None:
    seen = []
    trainer = _trainer("mgda", precision="bf16")
    trainer.model.shared.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.fit(_micro(16, 8), 1)
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    fp32 = _trainer("mgda")
    fp32.fit(_micro(16, 8), 1)
    diffs = [float((a - b).detach().abs().max()) for a, b in
             zip(trainer.model.parameters(), fp32.model.parameters(), strict=True)]
    assert 0 < max(diffs) < 0.05  # bf16 rounding, not another training
    with pytest.raises(ValueError, match="precision must be one of"):
        _trainer("equal", precision="fp8")


def test_devices_by_name() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            _trainer("equal", device="cuda:0")
    with pytest.raises(ValueError, match="accumulate must be"):
        _trainer("equal", accumulate=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_cuda_matches_the_cpu() -> None:
    cpu = _trainer("mgda")
    cpu.fit(_micro(16, 8, missing=False), 2)
    gpu = _trainer("mgda", device="cuda")
    gpu.fit(_micro(16, 8, missing=False), 2)
    assert all(p.device.type == "cuda" for p in gpu.model.parameters())
    for a, b in zip(cpu.model.parameters(), gpu.model.parameters(), strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-4)
    bf16 = _trainer("mgda", device="cuda", precision="bf16")
    bf16.fit(_micro(16, 8, missing=False), 2)
    assert bf16.evaluate(_micro(16, 8, missing=False))


def _saved(balancer: str, mode: str, memory: str, n: int) -> SavedBytes:
    wide = [Task.classification("a", 3), Task.regression("b"), Task.binary("c")]
    torch.manual_seed(0)
    model = HardSharing(wide, 5, hidden=(128, 128, 8))
    trainer = Trainer(model, wide, manytask.make_balancer(balancer), progress=False, lr=0.01,
                      mode=mode, accumulate=n, accumulate_memory=memory)
    micro = _micro(256 * n, 256, missing=False)
    counter = SavedBytes(model.parameters())
    with counter.watching(model):
        trainer.train_step(micro if n > 1 else micro[0])
    gc.collect()
    assert counter.live == 0  # every graph is gone after the step
    return counter


@pytest.mark.parametrize("balancer,mode", [("equal", "exact"), ("mgda", "exact"),
                                           ("mgda", "feature"), ("upgrad", "exact")])
def test_free_accumulation_keeps_one_micro_batch_graph_alive(balancer: str, mode: str) -> None:
    """With the graphs kept, all N micro-batches' saved tensors are alive at once; freed, at
    most one forward's (pass 1, then pass 2 where there is one). The bytes: N micro-batches'
    worth kept; freed, one micro-batch's plus the surrogate graph of the decision (exact
    mode: the K x D Jacobian, small here where the activations dominate, as where one
    accumulates; feature mode: the K per-task feature gradients of the N micro-batches)."""
    one = _saved(balancer, mode, "graphs", 1)
    kept = _saved(balancer, mode, "graphs", 8)
    freed = _saved(balancer, mode, "free", 8)
    assert one.graphs == freed.graphs == 1 and kept.graphs == 8
    assert kept.peak > 6 * one.peak
    assert freed.peak < kept.peak / 3


class _Noisy(HardSharing):
    """Dropout and batch norm in the trunk: the second pass must draw the same masks and the
    statistics must move once per micro-batch, as with the graphs kept."""

    def __init__(self) -> None:
        # no bias before the batch norm: its gradient is 0 up to rounding, which Adam scales up
        trunk = torch.nn.Sequential(torch.nn.Linear(5, 16, bias=False), torch.nn.BatchNorm1d(16),
                                    torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                    torch.nn.Linear(16, 8))
        super().__init__(TASKS, trunk=trunk, feature_dim=8, head_hidden=(8,), dropout=0.2)


@pytest.mark.parametrize("balancer,mode", [("uncertainty", "exact"), ("mgda", "feature"),
                                           ("mgda", "exact")])
def test_free_and_kept_graphs_agree_with_dropout_and_batch_norm(balancer: str,
                                                                mode: str) -> None:
    runs = []
    for memory in ("free", "graphs"):
        torch.manual_seed(0)
        trainer = Trainer(_Noisy(), TASKS, manytask.make_balancer(balancer), progress=False,
                          lr=0.01, mode=mode, accumulate=4, accumulate_memory=memory)
        torch.manual_seed(5)
        trainer.fit(_micro(), 2)
        runs.append((trainer.model.state_dict(), torch.rand(3)))  # the same draws after
    (free, after_free), (kept, after_kept) = runs
    for name, want in kept.items():
        torch.testing.assert_close(free[name], want, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(after_free, after_kept)


def test_accumulate_memory_is_checked() -> None:
    with pytest.raises(ValueError, match="accumulate_memory must be one of"):
        _trainer("equal", accumulate=2, accumulate_memory="none")


def _seen_gramians(memory: str, scale: float) -> list[torch.Tensor]:
    trainer = _trainer("mgda", precision="fp16", accumulate=4, accumulate_memory=memory)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    seen: list[torch.Tensor] = []
    decide = trainer.balancer.decide

    def spy(losses, tasks, gramian):  # type: ignore[no-untyped-def]
        seen.append(gramian.clone())
        return decide(losses, tasks, gramian)

    trainer.balancer.decide = spy  # type: ignore[method-assign]
    micro = _micro()
    for i in range(0, 12, 4):
        trainer.train_step(micro[i: i + 4])
    return seen


def test_fp16_freed_graphs_show_the_method_the_unscaled_gramian() -> None:
    """fp16 with the loss scale 2^12: the method sees the Gramian with the scale removed, the
    same with the graphs freed as kept (and as with another scale), up to fp16 rounding;
    without the unscaling it would be 2^24 (or 2^8) times larger."""
    kept, freed = _seen_gramians("graphs", 2.0**12), _seen_gramians("free", 2.0**12)
    other = _seen_gramians("free", 2.0**4)
    assert len(kept) == len(freed) == len(other) == 3
    for a, b, c in zip(kept, freed, other, strict=True):
        # fp16 rounding (eps 1e-3): the paths round the per-task gradients at other points
        size = float(a.diagonal().max())
        assert size > 1e-3
        torch.testing.assert_close(b, a, rtol=0, atol=2e-3 * size)
        torch.testing.assert_close(c, a, rtol=0, atol=2e-3 * size)


def test_fp16_overflow_with_freed_graphs_skips_the_step_and_keeps_the_methods_state() -> None:
    trainer = _trainer("gradvac", precision="fp16", accumulate=4)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)  # overflows in fp16
    state = {k: v.clone() for k, v in trainer.balancer.state_dict().items()}
    before = [p.detach().clone() for p in trainer.model.parameters()]
    assert trainer.train_step(_micro()[:4]) is None
    assert trainer.overflow_steps == 1 and trainer.scaler.get_scale() == 2.0**59
    for k, v in trainer.balancer.state_dict().items():
        assert torch.equal(v, state[k]), k
    for p, q in zip(trainer.model.parameters(), before, strict=True):
        assert torch.equal(p, q)


class _TiedHead(HardSharing):
    """Head "b" also reads the trunk's first weight (as a tied embedding would): its task
    gradient w.r.t. that weight mixes the head's and the trunk's paths."""

    def forward(self, x, return_features=False):  # type: ignore[no-untyped-def]
        out, features = super().forward(x, return_features=True)
        out = dict(out)
        out["b"] = out["b"] + 0.1 * next(self.shared.parameters()).sum()
        return (out, features) if return_features else out


def test_a_head_reading_the_trunk_falls_back_to_kept_graphs() -> None:
    runs = []
    for memory in ("free", "graphs"):
        torch.manual_seed(0)
        trainer = Trainer(_TiedHead(TASKS, 5, hidden=(16, 8)), TASKS,
                          manytask.make_balancer("mgda"), progress=False, lr=0.01,
                          accumulate=4, accumulate_memory=memory)
        if memory == "free":
            with pytest.warns(RuntimeWarning, match="falls back to 'graphs'.*trunk parameter"):
                trainer.fit(_micro(), 1)
            assert trainer.accumulate_memory == "graphs"
        else:
            trainer.fit(_micro(), 1)
        runs.append(trainer.model.state_dict())
    for name, want in runs[1].items():
        assert torch.equal(runs[0][name], want), name


def test_the_config_checks_accumulate_memory_before_any_data() -> None:
    from manytask.config import CHANGEABLE, ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="accumulate_memory must be one of"):
        TrainConfig(accumulate_memory="none")  # type: ignore[arg-type]
    assert TrainConfig().accumulate_memory == "free"
    assert "accumulate_memory" in CHANGEABLE  # the same step either way: may change on resume


def test_fsdp_sharded_parameters_fall_back_to_kept_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model with FSDP-sharded parameters (FSDP2's DTensors; forced here, as a real one
    needs a process group: tests/distributed/test_fsdp_trainer.py runs one with
    accumulate=2) takes the kept graphs, with a warning."""
    import manytask.training.accumulation as accumulation

    monkeypatch.setattr(accumulation, "fsdp_managed", lambda p: True)
    trainer = _trainer("mgda", accumulate=4)
    with pytest.warns(RuntimeWarning, match="falls back to 'graphs': FSDP-sharded"):
        trainer.train_step(_micro()[:4])
    assert trainer.accumulate_memory == "graphs" and trainer.step == 1


@pytest.mark.parametrize("mode", ["exact", "feature"])
def test_a_schedule_reusing_a_zero_weight_equals_one_batch(mode: str) -> None:
    """MGDA recomputed every 3 steps gives task b a weight of exactly 0 at step 4; the steps
    that reuse it must still give b's head a zero gradient (Adam moves it), not none."""
    micro = _micro()
    runs = []
    for accumulate, data in ((4, micro), (1, _join(micro, 4))):
        torch.manual_seed(0)
        trainer = Trainer(HardSharing(TASKS, 5, hidden=(16, 8)), TASKS,
                          manytask.make_balancer("periodic", base="mgda", every=3),
                          progress=False, lr=0.01, mode=mode, accumulate=accumulate)
        trainer.fit(data, 2)
        runs.append(trainer.model.state_dict())
    for name, want in runs[1].items():
        torch.testing.assert_close(runs[0][name], want, rtol=1e-4, atol=1e-5, msg=name)


def test_a_shared_parameter_the_features_do_not_read_gets_no_gradient() -> None:
    """As from one backward of the union: none, not zero (Adam would move it)."""
    for memory in ("free", "graphs"):
        trainer = _trainer("upgrad", accumulate=4, accumulate_memory=memory)
        spare = torch.nn.Parameter(torch.ones(3))
        trainer.model.shared.register_parameter("spare", spare)
        trainer._shared.append(spare)
        trainer.train_step(_micro()[:4])
        assert spare.grad is None, memory
