"""Algorithm 2: population statistics from batches, and the folded inference transform."""

from __future__ import annotations

import pytest
import torch

from bnlab.reference import algorithm1 as a1
from bnlab.reference import algorithm2 as a2


def test_population_statistics_is_the_papers_formula_for_equal_batches() -> None:
    batches = [torch.randn(10, 3, 4, dtype=torch.float64) * 2 + 1 for _ in range(5)]
    stats = a2.population_statistics(batches)
    m = 10 * 4
    mu = torch.stack([a1.forward_train(b).mean for b in batches])
    sigma2 = torch.stack([a1.forward_train(b).var for b in batches])
    torch.testing.assert_close(stats.mean, mu.mean(0))  # E[x] = E_B[μ_B]
    torch.testing.assert_close(stats.var, m / (m - 1) * sigma2.mean(0))  # Var[x] = m/(m−1)·E_B[σ²_B]
    assert (stats.num_batches, stats.num_values) == (5, 5 * m)


def test_uneven_batches_are_weighted_by_their_size() -> None:
    x = torch.randn(25, 2, dtype=torch.float64)
    stats = a2.population_statistics([x[:20], x[20:]])
    torch.testing.assert_close(stats.mean, x.mean(0))  # the mean of all 25 samples, not of the 2 batch means
    unbiased = [b.var(0, correction=1) for b in (x[:20], x[20:])]
    torch.testing.assert_close(stats.var, (20 * unbiased[0] + 5 * unbiased[1]) / 25)


@pytest.mark.parametrize("batches", [pytest.param([], id="no-batches"),
                                     pytest.param([torch.randn(1, 3)], id="one-value-per-channel")])
def test_population_statistics_refuses_too_little_data(batches: list[torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="batch"):
        a2.population_statistics(batches)


def test_inference_affine_matches_the_unfolded_formula() -> None:
    x = torch.randn(7, 4, 3, 3, dtype=torch.float64)
    mean, var = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.1
    gamma, beta = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    y = a2.forward_inference(x, mean, var, gamma, beta, eps=1e-3)
    v = lambda t: t.view(1, 4, 1, 1)  # noqa: E731
    expected = v(gamma) * (x - v(mean)) / torch.sqrt(v(var) + 1e-3) + v(beta)
    torch.testing.assert_close(y, expected, rtol=1e-13, atol=1e-13)
    scale, shift = a2.inference_affine(mean, var, gamma, beta, eps=1e-3)
    torch.testing.assert_close(scale, gamma / torch.sqrt(var + 1e-3))
    torch.testing.assert_close(shift, beta - gamma * mean / torch.sqrt(var + 1e-3))


def test_training_and_inference_agree_when_population_is_one_batch() -> None:
    # With the biased batch variance as "population" variance, Algorithm 2 reproduces Algorithm 1 exactly.
    x = torch.randn(9, 3, 5, dtype=torch.float64)
    r = a1.forward_train(x, eps=1e-5)
    torch.testing.assert_close(a2.forward_inference(x, r.mean, r.var, eps=1e-5), r.y)
