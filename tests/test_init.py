"""bnlab.init: each Keras initializer gives the variance Keras defines, over the fans Keras uses.

The draws are float64 and seeded, so each check is deterministic; the bounds are five standard errors of the
variance estimate (√(Var[w²] / N)), computed from the distribution, not tuned.
"""

from __future__ import annotations

import math

import pytest
import torch

import bnlab
from bnlab import init

SHAPE = (400, 250, 3, 3)  # a conv weight: fan_in = 250·9 = 2250, fan_out = 400·9 = 3600, fan_avg = 2925
FAN_IN, FAN_OUT = 2250, 3600
N = math.prod(SHAPE)
# Var[w²] / Var[w]² = E[w⁴] / E[w²]² − 1 for each distribution (the truncated normal's from its moments below).
EXCESS = {"untruncated_normal": 2.0, "uniform": 0.8, "truncated_normal": None}


def truncated_moments() -> tuple[float, float]:
    """E[z²] and E[z⁴] of a standard normal truncated to (−2, 2), from the normal's pdf and cdf."""
    phi = math.exp(-2.0) / math.sqrt(2 * math.pi)  # φ(2)
    mass = math.erf(2 / math.sqrt(2))  # Φ(2) − Φ(−2)
    m2 = 1 - 2 * 2 * phi / mass
    m4 = 3 * m2 - 2 * 2 ** 3 * phi / mass  # E[z⁴] = 3·E[z²] − 2·a³·φ(a)/mass for the interval (−a, a)
    return m2, m4


def draw(fill: init.Initializer, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> torch.Tensor:
    w = torch.empty(shape, dtype=torch.float64)
    fill(w, generator=torch.Generator().manual_seed(seed))
    return w


def assert_variance(w: torch.Tensor, expected: float, distribution: str) -> None:
    m2, m4 = truncated_moments()
    excess = EXCESS[distribution] if EXCESS[distribution] is not None else m4 / m2 ** 2 - 1
    stderr = expected * math.sqrt(excess / w.numel())
    got = float(w.square().mean())  # the mean is 0 by construction; the second moment is the variance
    assert abs(got - expected) <= 5 * stderr, f"variance {got:.6g}, expected {expected:.6g} ± {5 * stderr:.2g}"
    assert abs(float(w.mean())) <= 5 * math.sqrt(expected / w.numel())


def test_truncation_constant_is_the_truncated_normal_std() -> None:
    assert pytest.approx(math.sqrt(truncated_moments()[0]), abs=1e-15) == init.TRUNCATED_NORMAL_STD


KERAS = [
    pytest.param(init.glorot_normal_, 2 / (FAN_IN + FAN_OUT), "truncated_normal", id="glorot_normal"),
    pytest.param(init.glorot_uniform_, 2 / (FAN_IN + FAN_OUT), "uniform", id="glorot_uniform"),
    pytest.param(init.he_normal_, 2 / FAN_IN, "truncated_normal", id="he_normal"),
    pytest.param(init.he_uniform_, 2 / FAN_IN, "uniform", id="he_uniform"),
    pytest.param(init.lecun_normal_, 1 / FAN_IN, "truncated_normal", id="lecun_normal"),
    pytest.param(init.lecun_uniform_, 1 / FAN_IN, "uniform", id="lecun_uniform"),
]


@pytest.mark.parametrize(("fill", "variance", "distribution"), KERAS)
def test_keras_initializers_give_their_variance(fill: init.Initializer, variance: float, distribution: str) -> None:
    w = draw(fill)
    assert_variance(w, variance, distribution)
    bound = float(w.abs().max())
    if distribution == "uniform":
        limit = math.sqrt(3 * variance)
        assert limit * 0.999 < bound <= limit
    else:  # truncated at two standard deviations of the normal before truncation
        assert bound <= 2 * math.sqrt(variance) / init.TRUNCATED_NORMAL_STD


@pytest.mark.parametrize(("mode", "n"), [
    pytest.param("fan_in", FAN_IN, id="fan_in"),
    pytest.param("fan_out", FAN_OUT, id="fan_out"),
    pytest.param("fan_avg", (FAN_IN + FAN_OUT) / 2, id="fan_avg"),  # what PyTorch has no initializer for
])
@pytest.mark.parametrize("distribution", ["truncated_normal", "untruncated_normal", "uniform"])
def test_variance_scaling_modes(mode: str, n: float, distribution: str) -> None:
    w = draw(lambda t, generator: init.variance_scaling_(t, 2.0, mode, distribution, generator=generator))
    assert_variance(w, 2.0 / n, distribution)


def test_seed_004_example_he_avg_uniform() -> None:
    """keras.initializers.VarianceScaling(scale=2., mode='fan_avg', distribution='uniform') from seed 004."""
    w = draw(lambda t, generator: init.variance_scaling_(t, 2.0, "fan_avg", "uniform", generator=generator),
             shape=(1000, 784))
    assert_variance(w, 2.0 / ((784 + 1000) / 2), "uniform")


@pytest.mark.parametrize(("shape", "expected"), [
    pytest.param((300, 784), (784, 300), id="linear-out-in"),
    pytest.param((64, 3, 5, 5), (75, 1600), id="conv2d"),
    pytest.param((128, 16, 3), (48, 384), id="conv1d-grouped-weight"),
    pytest.param((7,), (7, 7), id="vector"),
    pytest.param((), (1, 1), id="scalar"),
])
def test_fans(shape: tuple[int, ...], expected: tuple[int, int]) -> None:
    assert init.fans(shape) == expected


def test_uniform_ones_match_torch_xavier_and_kaiming() -> None:
    """Glorot uniform is torch's xavier_uniform_ (gain 1) and He uniform its kaiming_uniform_ for ReLU."""
    a, b = torch.empty(300, 200), torch.empty(300, 200)
    init.glorot_uniform_(a, generator=torch.Generator().manual_seed(3))
    torch.nn.init.xavier_uniform_(b, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    init.he_uniform_(a, generator=torch.Generator().manual_seed(3))
    torch.nn.init.kaiming_uniform_(b, nonlinearity="relu", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_xavier_names_and_public_export() -> None:
    assert init.xavier_normal_ is init.glorot_normal_ and init.xavier_uniform_ is init.glorot_uniform_
    assert bnlab.init is init


def test_apply_initializes_weights_and_zeroes_biases() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), bnlab.BatchNorm2d(8), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():
        model[1].weight.fill_(2.0)
    assert init.apply_(model, "lecun_uniform", generator=torch.Generator().manual_seed(0)) is model
    assert float(model[0].weight.detach().abs().max()) <= math.sqrt(3 / 27)
    assert float(model[3].weight.detach().abs().max()) <= math.sqrt(3 / 128)
    assert not model[0].bias.any() and not model[3].bias.any()
    assert bool((model[1].weight == 2.0).all())  # batch norm's γ is not a weight to initialize


@pytest.mark.parametrize(("call", "message"), [
    pytest.param(lambda w: init.variance_scaling_(w, 0.0), "scale must be a positive finite number", id="zero-scale"),
    pytest.param(lambda w: init.variance_scaling_(w, math.inf), "positive finite", id="infinite-scale"),
    pytest.param(lambda w: init.variance_scaling_(w, mode="fan_sum"), "unknown mode 'fan_sum'", id="mode"),
    pytest.param(lambda w: init.variance_scaling_(w, distribution="normal"), "Keras 2's 'normal' is "
                 "'truncated_normal'", id="keras2-normal"),
    pytest.param(lambda w: init.variance_scaling_(w.long()), "floating-point", id="integer-tensor"),
    pytest.param(lambda w: init.apply_(torch.nn.Linear(2, 2), "kaiming"), "unknown initializer 'kaiming'",
                 id="unknown-name"),
])
def test_bad_arguments(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(torch.empty(4, 4))  # type: ignore[operator]
