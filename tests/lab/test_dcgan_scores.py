"""E5 ``dcgan_modes``: the classifier's scores of a set of images (confidence, histogram, IS analogue, Fréchet
distance) against float64 references written out independently (SciPy's matrix square root, the KL divergence
term by term), and on cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from bnlab.lab.experiments.dcgan_modes.nets import Classifier
from bnlab.lab.experiments.dcgan_modes.scores import (
    class_histogram,
    classify,
    confidence,
    frechet_distance,
    inception_score,
    score,
)
from tolerances import ATOL, RTOL


def frechet_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Heusel et al.'s formula with SciPy's general matrix square root of Σ₁Σ₂ (not symmetric), in float64."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root).real)


def inception_reference(p: np.ndarray) -> float:
    marginal = p.mean(0)
    kl = [sum(pi * math.log(pi / mi) for pi, mi in zip(row, marginal, strict=True) if pi > 0) for row in p]
    return math.exp(float(np.mean(kl)))


@pytest.mark.parametrize(("n", "m", "width", "shift"), [
    pytest.param(200, 300, 8, 0.0, id="same-distribution"),
    pytest.param(150, 150, 16, 0.7, id="shifted-mean"),
    pytest.param(40, 500, 5, -2.0, id="few-rows-wide-gap"),
])
def test_frechet_distance_matches_scipy(n: int, m: int, width: int, shift: float) -> None:
    gen = torch.Generator().manual_seed(n + width)
    mix = torch.randn(width, width, generator=gen, dtype=torch.float64)
    a = torch.randn(n, width, generator=gen, dtype=torch.float64) @ mix
    b = torch.randn(m, width, generator=gen, dtype=torch.float64) @ (mix * 1.3) + shift
    expected = frechet_reference(a.numpy(), b.numpy())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=RTOL[torch.float64], abs=ATOL[torch.float64])


def test_frechet_distance_of_equal_covariances_is_the_squared_mean_gap() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=gen, dtype=torch.float64)
    offset = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0], dtype=torch.float64)
    assert frechet_distance(a, a + offset) == pytest.approx(float(offset.square().sum()), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_refuses_too_few_rows() -> None:
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


@pytest.mark.parametrize(("probs", "expected"), [
    pytest.param(np.eye(10)[np.arange(50) % 10], 10.0, id="sure-and-even-is-C"),
    pytest.param(np.eye(10)[np.zeros(50, dtype=int)], 1.0, id="one-class-is-1"),
    pytest.param(np.full((20, 4), 0.25), 1.0, id="unsure-is-1"),
    pytest.param(np.eye(4)[[0, 0, 1, 2]], None, id="uneven-classes"),
])
def test_inception_score(probs: np.ndarray, expected: float | None) -> None:
    reference = inception_reference(probs) if expected is None else expected
    assert inception_score(torch.tensor(probs, dtype=torch.float32)) == pytest.approx(reference, rel=1e-6)


def test_inception_score_matches_the_formula_on_soft_probabilities() -> None:
    gen = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(64, 10, generator=gen, dtype=torch.float64) * 3, dim=1)
    assert inception_score(probs) == pytest.approx(inception_reference(probs.numpy()), rel=1e-12)


def test_confidence_and_histogram() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]])
    assert confidence(probs) == pytest.approx((0.7 + 0.8 + 0.5 + 0.4) / 4)
    assert class_histogram(probs) == [2, 0, 2]


def test_score_uses_the_classifiers_softmax_and_features() -> None:
    torch.manual_seed(0)
    classifier = Classifier(10).eval()
    images = torch.rand(30, 1, 28, 28) * 2 - 1
    reference = torch.randn(40, 64, dtype=torch.float64)
    probs, features = classify(classifier, images, batch=7)  # uneven batches: same answer
    with torch.no_grad():
        expected_probs = torch.softmax(classifier(images).double(), dim=1)
    torch.testing.assert_close(probs, expected_probs, rtol=RTOL[torch.float32], atol=ATOL[torch.float32])
    result = score(classifier, images, reference)
    assert result.samples == 30 and sum(result.histogram) == 30
    assert result.confidence == pytest.approx(confidence(probs), rel=1e-6)
    assert result.frechet == pytest.approx(frechet_distance(features, reference), rel=1e-6)
