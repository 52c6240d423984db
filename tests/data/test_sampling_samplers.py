"""Task samplers: their distributions, schedules, determinism and state."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from manytask.data.sampling import (
    EXP3Sampler,
    MultiTaskBatches,
    ProportionalSampler,
    RoundRobinSampler,
    TaskSampler,
    TemperatureSampler,
    TwoPhaseSampler,
    dataset_sizes,
    loss_drop_reward,
)

SIZES = {"a": 100, "b": 300, "c": 600}


def _frequencies(sampler: TaskSampler, draws: int) -> dict[str, float]:
    counts = Counter(sampler.sample() for _ in range(draws))
    return {t: counts[t] / draws for t in sampler.tasks}


def test_proportional_probabilities_and_frequencies() -> None:
    sampler = ProportionalSampler(SIZES, seed=0)
    expected = {"a": 0.1, "b": 0.3, "c": 0.6}
    for task, p in sampler.probabilities().items():
        assert math.isclose(p, expected[task], rel_tol=1e-12)
    # 20000 draws: the standard deviation of a frequency is at most 0.0035; allow 4 of them.
    for task, freq in _frequencies(sampler, 20000).items():
        assert abs(freq - expected[task]) < 0.014, task


def test_temperature_probabilities() -> None:
    roots = {t: math.sqrt(n) for t, n in SIZES.items()}
    total = sum(roots.values())
    sampler = TemperatureSampler(SIZES, temperature=2.0, seed=1)
    for task, p in sampler.probabilities().items():
        assert math.isclose(p, roots[task] / total, rel_tol=1e-12)
    for task, freq in _frequencies(sampler, 20000).items():
        assert abs(freq - roots[task] / total) < 0.014, task
    flat = TemperatureSampler(SIZES, temperature=1e6).probabilities()
    assert all(math.isclose(p, 1 / 3, rel_tol=1e-5) for p in flat.values())
    huge = TemperatureSampler({"x": 10**12, "y": 1}, temperature=0.01).probabilities()
    assert huge["x"] == 1.0 and huge["y"] == 0.0  # no overflow to NaN


def test_round_robin_order_and_state() -> None:
    sampler = RoundRobinSampler(["b", "a", "c"])
    assert [sampler.sample() for _ in range(7)] == ["b", "a", "c", "b", "a", "c", "b"]
    state = sampler.state_dict()
    other = RoundRobinSampler(["b", "a", "c"])
    other.load_state_dict(state)
    assert [other.sample() for _ in range(3)] == ["a", "c", "b"]


def test_exp3_first_update_by_hand() -> None:
    gamma = 0.3
    sampler = EXP3Sampler(["a", "b", "c"], gamma=gamma)
    assert all(math.isclose(p, 1 / 3) for p in sampler.probabilities().values())
    sampler.update("b", 0.6)
    # u_b = eta * x / p_b with eta = gamma / K, p_b = 1/3: u_b = 0.1 * 0.6 * 3 = 0.18.
    e = math.exp(0.18)
    soft = [1 / (2 + e), e / (2 + e), 1 / (2 + e)]
    expected = [(1 - gamma) * s + gamma / 3 for s in soft]
    got = sampler.probabilities()
    for task, p in zip("abc", expected, strict=True):
        assert math.isclose(got[task], p, rel_tol=1e-12)


def test_exp3_moves_toward_the_rewarded_task_and_keeps_exploring() -> None:
    gamma = 0.15
    sampler = EXP3Sampler(["a", "b", "c", "d"], gamma=gamma, seed=3)
    for _ in range(400):
        task = sampler.sample()
        sampler.update(task, 1.0 if task == "c" else 0.0)
        assert min(sampler.probabilities().values()) >= gamma / 4 - 1e-12
    probs = sampler.probabilities()
    assert probs["c"] > 0.8
    assert all(math.isclose(probs[t], gamma / 4, rel_tol=1e-3) for t in "abd")


def test_exp3_rewards_are_clipped_and_validated() -> None:
    clipped, exact = EXP3Sampler(["a", "b"]), EXP3Sampler(["a", "b"])
    clipped.update("a", 7.0)
    exact.update("a", 1.0)
    assert clipped.probabilities() == exact.probabilities()
    with pytest.raises(ValueError, match="finite"):
        clipped.update("a", float("nan"))
    with pytest.raises(ValueError, match="unknown task"):
        clipped.update("z", 0.5)
    with pytest.raises(ValueError, match="gamma"):
        EXP3Sampler(["a"], gamma=1.5)
    with pytest.raises(ValueError, match="eta"):
        EXP3Sampler(["a"], eta=0.0)


def test_loss_drop_reward() -> None:
    assert loss_drop_reward(2.0, 1.0) == 0.5
    assert loss_drop_reward(1.0, 2.0) == 0.0
    assert loss_drop_reward(1.0, 0.0) == 1.0
    assert loss_drop_reward(0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="before"):
        loss_drop_reward(-1.0, 0.0)
    with pytest.raises(ValueError, match="after"):
        loss_drop_reward(1.0, math.inf)


def test_two_phase_switches_at_the_right_step() -> None:
    sizes = {"big1": 1000, "big2": 800, "small": 10}
    sampler = TwoPhaseSampler(sizes, switch_step=60, min_size=100, temperature=50.0, seed=0)
    assert sampler.large == ("big1", "big2")
    assert sampler.probabilities()["small"] == 0.0
    first = [sampler.sample() for _ in range(60)]
    assert "small" not in first and set(first) == {"big1", "big2"}
    assert sampler.phase == 2
    assert sampler.probabilities()["small"] > 0.25
    second = [sampler.sample() for _ in range(300)]
    assert "small" in second


def test_two_phase_top_fraction_and_second_phase_sampler() -> None:
    sizes = {"x": 5, "y": 50, "z": 500}
    then = EXP3Sampler(["z", "y", "x"], gamma=0.5)
    sampler = TwoPhaseSampler(sizes, switch_step=2, top_fraction=0.34, then=then)
    assert sampler.large == ("z",)
    sampler.update("z", 1.0)  # first phase: the second-phase bandit is not touched
    assert then.probabilities() == EXP3Sampler(["z", "y", "x"], gamma=0.5).probabilities()
    assert [sampler.sample(), sampler.sample()] == ["z", "z"]
    sampler.update("z", 1.0)  # the last batch came from the first phase: not forwarded
    assert math.isclose(then.probabilities()["z"], 1 / 3)
    assert sampler.phase == 2
    sampler.sample()
    sampler.update("x", 1.0)  # drawn by the second phase: forwarded
    assert then.probabilities()["x"] > 1 / 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"switch_step": 5}, "exactly one"),
        ({"switch_step": 5, "min_size": 10, "top_fraction": 0.5}, "exactly one"),
        ({"switch_step": 5, "min_size": 10**6}, "min_size"),
        ({"switch_step": -1, "min_size": 1}, "switch_step"),
        ({"switch_step": 5, "top_fraction": 2.0}, "top_fraction"),
        ({"switch_step": 5, "min_size": 1, "then": RoundRobinSampler(["a", "b"])}, "second-phase"),
    ],
)
def test_two_phase_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TwoPhaseSampler(SIZES, **kwargs)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: ProportionalSampler({"a": 0}), "positive integer"),
        (lambda: ProportionalSampler({}), "at least one task"),
        (lambda: TemperatureSampler(SIZES, temperature=0.0), "temperature"),
        (lambda: TemperatureSampler(SIZES, seed="x"),  # type: ignore[arg-type]
         "seed"),
        (lambda: RoundRobinSampler(["a", "a"]), "unique"),
    ],
)
def test_invalid_sampler_arguments(factory: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def _make_samplers(seed: int | None) -> list[TaskSampler]:
    return [
        ProportionalSampler(SIZES, seed=seed),
        TemperatureSampler(SIZES, temperature=3.0, seed=seed),
        EXP3Sampler(list(SIZES), seed=seed),
        TwoPhaseSampler(SIZES, switch_step=5, min_size=200, seed=seed),
    ]


def _run(sampler: TaskSampler, n: int) -> list[str]:
    out = []
    for _ in range(n):
        task = sampler.sample()
        sampler.update(task, 0.5 if task == "a" else 0.1)
        out.append(task)
    return out


def test_determinism_under_a_seed() -> None:
    for one, two in zip(_make_samplers(7), _make_samplers(7), strict=True):
        assert _run(one, 50) == _run(two, 50)
    # Without a seed the global torch RNG is used.
    torch.manual_seed(12)
    first = _run(ProportionalSampler(SIZES), 50)
    torch.manual_seed(12)
    assert _run(ProportionalSampler(SIZES), 50) == first
    assert _run(ProportionalSampler(SIZES, seed=1), 50) != _run(
        ProportionalSampler(SIZES, seed=2), 50)


@pytest.mark.parametrize("index", range(4))
def test_state_dict_round_trip_continues_the_sequence(index: int) -> None:
    sampler = _make_samplers(4)[index]
    _run(sampler, 13)
    state = sampler.state_dict()
    expected = _run(sampler, 20)
    fresh = _make_samplers(99)[index]
    fresh.load_state_dict(state)
    assert _run(fresh, 20) == expected


def test_state_for_other_tasks_is_rejected() -> None:
    state = ProportionalSampler(SIZES).state_dict()
    with pytest.raises(ValueError, match="tasks"):
        ProportionalSampler({"q": 3}).load_state_dict(state)


# ------------------------------------------------------------------------- MultiTaskBatches
def _loaders() -> dict[str, DataLoader]:
    return {
        "a": DataLoader(TensorDataset(torch.arange(4.0)), batch_size=2),  # 2 batches
        "b": DataLoader(TensorDataset(torch.arange(100.0, 103.0)), batch_size=3),  # 1 batch
    }


def test_batches_follow_the_sampler_and_loaders_restart() -> None:
    stream = MultiTaskBatches(_loaders(), RoundRobinSampler(["a", "b"]), steps=8)
    assert len(stream) == 8
    pairs = list(stream)
    assert [t for t, _ in pairs] == ["a", "b"] * 4
    a_batches = [batch[0].tolist() for t, batch in pairs if t == "a"]
    assert a_batches == [[0.0, 1.0], [2.0, 3.0], [0.0, 1.0], [2.0, 3.0]]
    b_batches = [batch[0].tolist() for t, batch in pairs if t == "b"]
    assert b_batches == [[100.0, 101.0, 102.0]] * 4
    assert stream.epochs == {"a": 1, "b": 3}


def test_batches_with_a_random_sampler_match_its_frequencies() -> None:
    loaders = _loaders()
    sampler = ProportionalSampler({"a": 4, "b": 1}, seed=0)
    tasks = [t for t, _ in MultiTaskBatches(loaders, sampler, steps=2000)]
    assert abs(tasks.count("a") / 2000 - 0.8) < 0.04


def test_batches_validation() -> None:
    with pytest.raises(ValueError, match="sampler draws"):
        MultiTaskBatches(_loaders(), RoundRobinSampler(["a", "c"]))
    with pytest.raises(ValueError, match="steps"):
        MultiTaskBatches(_loaders(), RoundRobinSampler(["a", "b"]), steps=-2)
    with pytest.raises(TypeError, match="endless"):
        len(MultiTaskBatches(_loaders(), RoundRobinSampler(["a", "b"])))
    empty = {"a": [], "b": [1]}
    with pytest.raises(ValueError, match="'a' yields no batch"):
        list(MultiTaskBatches(empty, RoundRobinSampler(["a", "b"]), steps=2))


def test_dataset_sizes() -> None:
    assert dataset_sizes(_loaders()) == {"a": 4, "b": 3}
    with pytest.raises(TypeError, match="'x'"):
        dataset_sizes({"x": [1, 2]})
