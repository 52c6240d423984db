from __future__ import annotations

import math

import numpy as np
import torch

from manytask.evaluation import toy


def test_objectives_hand_computed() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 40.0], [1.0, -40.0]], dtype=torch.float64)
    f = toy.toy_objectives(x)
    torch.testing.assert_close(f[0], torch.zeros(2, dtype=torch.float64))
    # upper half plane: c1 = 1, c2 = 0, tanh(-x2) = -1
    torch.testing.assert_close(
        f[1], torch.tensor([math.log(3) + 6, math.log(2) + 6], dtype=torch.float64)
    )
    # lower half plane: c1 = 0, c2 = 1, the quadratic bowls
    torch.testing.assert_close(
        f[2],
        torch.tensor(
            [(36 + 0.1 * 1024) / 10 - 20, (64 + 0.1 * 1024) / 10 - 20], dtype=torch.float64
        ),
    )


def test_front_is_non_dominated_and_covers_the_grid() -> None:
    front = toy.front(resolution=200)
    for p in front[::7]:
        assert not np.any(np.all(front <= p, axis=1) & np.any(front < p, axis=1))
    axis = torch.linspace(-10, 10, 200, dtype=torch.float64)
    grid = toy.toy_objectives(torch.cartesian_prod(axis, axis)).numpy()
    rng = np.random.default_rng(0)
    for q in grid[rng.choice(len(grid), 300, replace=False)]:  # the front covers its grid
        assert np.any(np.all(front <= q, axis=1))


def test_first_adam_step_follows_the_combined_gradient() -> None:
    lr = 0.01
    trajs = toy.run("equal", starts=[(1.0, 2.0)], steps=1, lr=lr, record_every=1)
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    g = torch.autograd.grad(toy.toy_objectives(x).sum(), x)[0][0]
    # Adam's first step is -lr * sign(g) (up to its epsilon).
    np.testing.assert_allclose(
        trajs[0].path[1] - trajs[0].path[0], -lr * np.sign(g.numpy()), rtol=1e-6
    )
    assert trajs[0].losses.shape == (2, 2)
