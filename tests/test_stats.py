"""The running-statistics convention of bnlab._stats, checked on numbers worked out by hand."""

from __future__ import annotations

import pytest
import torch

from bnlab import _stats


def test_exponential_moving_average_with_bessel_correction() -> None:
    rm, rv = torch.tensor([1.0, 2.0]), torch.tensor([4.0, 8.0])
    # m = 5 values per channel: the stored variance is 5/4 of the biased batch variance.
    _stats.update_running_stats(rm, rv, torch.tensor([11.0, 12.0]), torch.tensor([0.8, 1.6]), 5, 0.1)
    torch.testing.assert_close(rm, torch.tensor([0.9 * 1 + 0.1 * 11, 0.9 * 2 + 0.1 * 12]))
    torch.testing.assert_close(rv, torch.tensor([0.9 * 4 + 0.1 * 1.0, 0.9 * 8 + 0.1 * 2.0]))


def test_momentum_one_stores_the_batch_exactly_and_zero_keeps_the_old_value() -> None:
    rm = torch.tensor([1e8, -3.0])
    _stats.update_running_stats(rm, None, torch.tensor([1.0, 0.1]), torch.zeros(2), 2, 1.0)
    assert rm.tolist() == [1.0, torch.tensor(0.1).item()]
    _stats.update_running_stats(rm, None, torch.tensor([5.0, 5.0]), torch.zeros(2), 2, 0.0)
    assert rm.tolist() == [1.0, torch.tensor(0.1).item()]


def test_cumulative_average_is_the_plain_mean_of_batch_statistics() -> None:
    counter = torch.tensor(0)
    rm, rv = torch.zeros(1), torch.ones(1)
    batch_means = [3.0, 5.0, 10.0]
    for value in batch_means:
        factor = _stats.advance(counter, None)
        _stats.update_running_stats(rm, rv, torch.tensor([value]), torch.tensor([1.0]), 2, factor)
    assert int(counter) == 3
    torch.testing.assert_close(rm, torch.tensor([6.0]))  # (3 + 5 + 10) / 3: the initial value is forgotten
    torch.testing.assert_close(rv, torch.tensor([2.0]))


def test_advance_counts_and_returns_the_momentum() -> None:
    counter = torch.tensor(7)
    assert _stats.advance(counter, 0.25) == 0.25
    assert int(counter) == 8


def test_empty_batch_leaves_buffers_alone() -> None:
    rm, rv = torch.tensor([1.0]), torch.tensor([2.0])
    _stats.update_running_stats(rm, rv, torch.tensor([float("nan")]), torch.tensor([float("nan")]), 0, 0.5)
    assert rm.tolist() == [1.0] and rv.tolist() == [2.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_buffers_keep_their_dtype(dtype: torch.dtype) -> None:
    rm, rv = torch.zeros(3, dtype=dtype), torch.ones(3, dtype=dtype)
    _stats.update_running_stats(rm, rv, torch.ones(3), torch.ones(3), 4, torch.tensor(0.5))
    assert rm.dtype == rv.dtype == dtype
    torch.testing.assert_close(rm, torch.full((3,), 0.5, dtype=dtype))
    torch.testing.assert_close(rv, torch.full((3,), 0.5 + 0.5 * 4 / 3, dtype=dtype))


def test_update_is_not_recorded_by_autograd() -> None:
    rm = torch.zeros(2)
    mean = torch.ones(2, requires_grad=True)
    _stats.update_running_stats(rm, None, mean * 2, torch.ones(2), 3, 0.5)
    assert not rm.requires_grad and rm.grad_fn is None


def test_cumulative_factor_keeps_float64_precision() -> None:
    counter = torch.tensor(0)
    rm = torch.zeros(1, dtype=torch.float64)
    values = [1.0, 2.0, 4.0]
    for value in values:
        factor = _stats.advance(counter, None)
        _stats.update_running_stats(rm, None, torch.tensor([value], dtype=torch.float64), torch.zeros(1), 2, factor)
    assert abs(rm.item() - 7.0 / 3.0) < 1e-15  # a float32 factor 1/3 would be off by about 1e-8


def test_batch_moments_are_the_one_definition_of_mu_and_sigma2() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])  # (N=3, C=2)
    moments = _stats.batch_moments(x)
    assert moments.count.tolist() == [3.0, 3.0]
    torch.testing.assert_close(moments.mean, torch.tensor([3.0, 6.0]))
    torch.testing.assert_close(moments.m2, torch.tensor([8.0, 32.0]))  # Σ(x − μ)²
    mean, var = _stats.mean_var(moments)
    assert mean is moments.mean
    torch.testing.assert_close(var, torch.tensor([8.0 / 3, 32.0 / 3]))


def test_merging_is_chan_s_formula_and_an_empty_part_is_its_identity() -> None:
    x = torch.randn(10, 3, 4, dtype=torch.float64) * 5 + 100
    whole = _stats.batch_moments(x)
    for split in (0, 1, 4, 10):
        first, second = _stats.batch_moments(x[:split]), _stats.batch_moments(x[split:])
        for merged in (_stats.merge_moments(first, second), _stats.merge_moments(second, first)):
            for a, b in zip(merged, whole, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)
    empty = _stats.batch_moments(x[:0])
    assert empty.count.sum() == empty.mean.abs().sum() == empty.m2.sum() == 0
    both_empty = _stats.merge_moments(empty, empty)
    assert torch.isfinite(both_empty.mean).all() and both_empty.count.sum() == 0


def test_masked_moments_leave_padding_out() -> None:
    x = torch.tensor([[[1.0, 2.0, 100.0]], [[3.0, -50.0, 5.0]]])  # (N=2, C=1, L=3)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    moments = _stats.batch_moments(x, mask)
    assert moments.count.tolist() == [4.0]
    torch.testing.assert_close(moments.mean, torch.tensor([2.75]))
    torch.testing.assert_close(moments.m2, torch.tensor([(1.75**2) + (0.75**2) + (0.25**2) + (2.25**2)]))
    with pytest.raises(ValueError, match="mask must be a boolean"):
        _stats.batch_moments(x, mask.float())


def test_a_per_channel_count_updates_on_the_device_and_skips_empty_channels() -> None:
    rm, rv = torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])
    count = torch.tensor([5.0, 0.0])  # the second channel saw no valid value (all masked)
    _stats.update_running_stats(rm, rv, torch.tensor([11.0, 99.0]), torch.tensor([0.8, 99.0]), count, 0.1)
    torch.testing.assert_close(rm, torch.tensor([0.9 + 1.1, 1.0]))
    torch.testing.assert_close(rv, torch.tensor([0.9 * 2 + 0.1 * 1.0, 2.0]))
