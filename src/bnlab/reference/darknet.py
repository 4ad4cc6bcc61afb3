"""darknet's CPU batch-norm layer, by name: a port of pjreddie/darknet's ``src/batchnorm_layer.c`` and ``src/blas.c``.

Same function names and argument order as the C; what the C writes through an output pointer is returned instead
(an in-out pointer such as ``bias_updates`` stays an argument and its updated value is returned). Arrays are in
darknet's flat layout: ``x[b·filters·spatial + f·spatial + k]`` for sample b, filter (channel) f and position k, i.e.
an NCHW tensor flattened; any tensor with batch·filters·spatial elements is accepted and results keep its shape.

darknet's arithmetic, which this port keeps (read ``docs/math.md``, "darknet's batch norm", for what it costs):

- ``variance_cpu`` divides by m − 1 (m = batch·spatial): the unbiased variance, and it is this one that
  normalizes in training, not the paper's biased σ²_B;
- ``normalize_cpu`` puts ε = 1e-6 *outside* the root, (x − μ)/(√σ² + 1e-6), while the backward steps
  (``mean_delta_cpu``, ``variance_delta_cpu``, ``normalize_delta_cpu``) use ε = 1e-5 *inside* it, √(σ² + 1e-5),
  and 1/m (not 1/(m − 1)) for ∂σ²/∂x; so the backward is not the exact gradient of the forward;
- the rolling statistics start at 0 and are updated as rolling ← .99·rolling + .01·batch (the unbiased variance);
- in eval, ``backward_batchnorm_layer`` swaps in the rolling statistics but still runs the batch-statistics
  formulas, with the ``x_norm`` of the last training forward.

Precision: darknet computes in float32 with some steps in double (``sqrt``, ``pow``, the ``1.``/``2.`` literals);
each function does its elementwise steps in the same precision as the C, so elementwise results are bit-equal to
darknet's for float32 input. Sums are taken in float64 and rounded once, where darknet adds float32 values one at
a time: per-channel sums can differ from darknet's in the last bits. float64 input runs everything in float64
(used to differentiate darknet's forward exactly). pjreddie's GPU kernels differ (``normalize_kernel`` has
√(σ² + 1e-5)); AlexeyAB's fork differs too (ε = 1e-5 inside the root in ``normalize_cpu``, rolling .9/.1,
``normalize_delta_cpu`` with 1/(√σ² + 1e-5)); neither is ported here.

``bnlab.reference.algorithm1.backward_darknet`` is the paper's backward written with these step names (biased
variance, one ε inside the root); ``tests/reference/test_darknet.py`` holds the two equal when this port is fed
the paper's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def _float32(value: float) -> float:
    """The value of a C float literal such as ``.000001f``."""
    return float(torch.tensor(value, dtype=torch.float32))


#: normalize_cpu: ``(x - mean)/(sqrt(variance) + .000001f)``: outside the root.
NORMALIZE_EPS = _float32(1e-6)
#: mean_delta_cpu, variance_delta_cpu, normalize_delta_cpu: ``sqrt(variance + .00001f)``: inside the root.
DELTA_EPS = _float32(1e-5)
#: forward_batchnorm_layer: ``scal_cpu(.99, rolling)`` then ``axpy_cpu(.01, batch, rolling)`` (float arguments).
ROLLING_DECAY = _float32(0.99)
ROLLING_WEIGHT = _float32(0.01)

_DTYPES = (torch.float32, torch.float64)


def _planes(x: Tensor, batch: int, filters: int, spatial: int, what: str = "x") -> Tensor:
    """x viewed as (batch, filters, spatial), after checking its size and dtype."""
    if x.dtype not in _DTYPES:
        raise TypeError(f"{what}: darknet's arrays are float32 (float64 for analysis), got {x.dtype}")
    if min(batch, filters, spatial) < 1:
        raise ValueError(f"batch, filters and spatial must be positive, got {batch}, {filters}, {spatial}")
    if x.numel() != batch * filters * spatial:
        raise ValueError(f"{what} has {x.numel()} elements, but batch·filters·spatial = "
                         f"{batch}·{filters}·{spatial} = {batch * filters * spatial}")
    return x.reshape(batch, filters, spatial)


def _per_filter(v: Tensor, filters: int, what: str) -> Tensor:
    """A per-filter array (filters,) viewed as (1, filters, 1)."""
    if v.numel() != filters:
        raise ValueError(f"{what} has {v.numel()} elements, expected one per filter ({filters})")
    return v.reshape(1, filters, 1)


def _constant(value: float, like: Tensor) -> Tensor:
    """A scalar rounded as the C stores it: to float for float32 arrays."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


# --- blas.c ---------------------------------------------------------------------------------------------------------

def mean_cpu(x: Tensor, batch: int, filters: int, spatial: int) -> Tensor:
    """Per-filter mean μ = (Σ x)·(1/m), m = batch·spatial; shape (filters,)."""
    xs = _planes(x, batch, filters, spatial)
    total = xs.to(torch.float64).sum((0, 2)).to(x.dtype)
    return total * _constant(1.0 / (batch * spatial), x)  # float scale = 1./(batch*spatial)


def variance_cpu(x: Tensor, mean: Tensor, batch: int, filters: int, spatial: int) -> Tensor:
    """Per-filter *unbiased* variance Σ (x − μ)² · 1/(m − 1); shape (filters,). Needs m = batch·spatial ≥ 2."""
    xs = _planes(x, batch, filters, spatial)
    if batch * spatial < 2:
        raise ValueError("variance_cpu divides by batch·spatial − 1 = 0: darknet's variance needs at least "
                         "2 values per filter (it would compute 0·inf = NaN)")
    diff = xs - _per_filter(mean, filters, "mean")  # float subtraction, as in the C
    total = diff.to(torch.float64).square().sum((0, 2)).to(x.dtype)  # pow(..., 2) is a double
    return total * _constant(1.0 / (batch * spatial - 1), x)


def normalize_cpu(x: Tensor, mean: Tensor, variance: Tensor, batch: int, filters: int, spatial: int) -> Tensor:
    """(x − μ)/(√σ² + 1e-6), with ε outside the root; shape of x."""
    xs = _planes(x, batch, filters, spatial)
    diff = xs - _per_filter(mean, filters, "mean")
    root = _per_filter(variance, filters, "variance").to(torch.float64).sqrt() + NORMALIZE_EPS  # sqrt() is double
    return (diff.to(torch.float64) / root).to(x.dtype).reshape(x.shape)


# --- convolutional_layer.c ------------------------------------------------------------------------------------------

def scale_bias(output: Tensor, scales: Tensor, batch: int, n: int, size: int) -> Tensor:
    """output · scales[f] per filter f (the forward's γ, and the backward's ∂ℓ/∂y → ∂ℓ/∂x̂); shape of output."""
    return (_planes(output, batch, n, size, "output") * _per_filter(scales, n, "scales")).reshape(output.shape)


def add_bias(output: Tensor, biases: Tensor, batch: int, n: int, size: int) -> Tensor:
    """output + biases[f] per filter f (the forward's β); shape of output."""
    return (_planes(output, batch, n, size, "output") + _per_filter(biases, n, "biases")).reshape(output.shape)


def backward_bias(bias_updates: Tensor, delta: Tensor, batch: int, n: int, size: int) -> Tensor:
    """bias_updates + Σ delta per filter (∂ℓ/∂β, accumulated as darknet does); shape (n,)."""
    ds = _planes(delta, batch, n, size, "delta")
    # darknet sums each (sample, filter) row with sum_array, then adds the rows into bias_updates.
    rows = ds.to(torch.float64).sum(2).to(delta.dtype)
    return (_per_filter(bias_updates, n, "bias_updates").flatten().to(torch.float64)
            + rows.to(torch.float64).sum(0)).to(bias_updates.dtype)


# --- batchnorm_layer.c ----------------------------------------------------------------------------------------------

def backward_scale_cpu(x_norm: Tensor, delta: Tensor, batch: int, n: int, size: int,
                       scale_updates: Tensor | None = None) -> Tensor:
    """scale_updates + Σ x_norm·delta per filter (∂ℓ/∂γ); shape (n,).

    ``scale_updates`` is the C's trailing in-out pointer: omitted, the sum alone is returned.
    """
    products = _planes(delta, batch, n, size, "delta") * _planes(x_norm, batch, n, size, "x_norm")
    total = products.to(torch.float64).sum((0, 2)).to(delta.dtype)
    return total if scale_updates is None else _per_filter(scale_updates, n, "scale_updates").flatten() + total


def mean_delta_cpu(delta: Tensor, variance: Tensor, batch: int, filters: int, spatial: int) -> Tensor:
    """Σ delta · (−1/√(σ² + 1e-5)) per filter (∂ℓ/∂μ without the paper's zero term); shape (filters,)."""
    total = _planes(delta, batch, filters, spatial, "delta").to(torch.float64).sum((0, 2)).to(delta.dtype)
    shifted = variance.flatten() + _constant(DELTA_EPS, variance)  # variance[i] + .00001f: a float addition
    return (total.to(torch.float64) * (-1.0 / shifted.to(torch.float64).sqrt())).to(delta.dtype)


def variance_delta_cpu(x: Tensor, delta: Tensor, mean: Tensor, variance: Tensor, batch: int, filters: int,
                       spatial: int) -> Tensor:
    """Σ delta·(x − μ) · (−½)(σ² + 1e-5)^(−3/2) per filter (∂ℓ/∂σ²); shape (filters,)."""
    diff = _planes(x, batch, filters, spatial) - _per_filter(mean, filters, "mean")
    products = _planes(delta, batch, filters, spatial, "delta") * diff
    total = products.to(torch.float64).sum((0, 2)).to(delta.dtype)
    shifted = variance.flatten() + _constant(DELTA_EPS, variance)
    return (total.to(torch.float64) * (-0.5 * shifted.to(torch.float64).pow(-1.5))).to(delta.dtype)


def normalize_delta_cpu(x: Tensor, mean: Tensor, variance: Tensor, mean_delta: Tensor, variance_delta: Tensor,
                        batch: int, filters: int, spatial: int, delta: Tensor) -> Tensor:
    """∂ℓ/∂x = delta/√(σ² + 1e-5) + variance_delta·2(x − μ)/m + mean_delta/m; shape of delta.

    ``delta`` (∂ℓ/∂x̂ on entry) is the array the C overwrites; here the new values are returned.
    """
    m = batch * spatial
    ds = _planes(delta, batch, filters, spatial, "delta").to(torch.float64)
    diff = (_planes(x, batch, filters, spatial) - _per_filter(mean, filters, "mean")).to(torch.float64)
    shifted = _per_filter(variance, filters, "variance") + _constant(DELTA_EPS, variance)
    direct = ds / shifted.to(torch.float64).sqrt()
    through_variance = _per_filter(variance_delta, filters, "variance_delta").to(torch.float64) * 2.0 * diff / m
    # mean_delta[f]/(spatial*batch) is a float division in the C: round it before adding.
    through_mean = (_per_filter(mean_delta, filters, "mean_delta") / m).to(torch.float64)
    return (direct + through_variance + through_mean).to(delta.dtype).reshape(delta.shape)


@dataclass
class Layer:
    """darknet's ``layer`` struct, the fields a batch-norm layer uses, named as in darknet.

    Per-filter arrays have shape (c,); ``x``, ``x_norm``, ``output`` and ``delta`` are flat (batch·c·h·w,) in
    darknet's layout, holding what the last forward and backward left there.
    """

    batch: int
    w: int
    h: int
    c: int
    scales: Tensor  # γ, starts at 1
    biases: Tensor  # β, starts at 0
    rolling_mean: Tensor  # starts at 0
    rolling_variance: Tensor  # starts at 0 (torch, Keras and Flax start at 1)
    mean: Tensor  # the last training batch's μ
    variance: Tensor  # the last training batch's unbiased variance
    scale_updates: Tensor  # ∂ℓ/∂γ, accumulated over backward calls until darknet's update step
    bias_updates: Tensor  # ∂ℓ/∂β, accumulated likewise
    mean_delta: Tensor
    variance_delta: Tensor
    x: Tensor  # the last forward's input
    x_norm: Tensor  # the last *training* forward's normalized input
    output: Tensor = field(repr=False)
    delta: Tensor = field(repr=False)

    @property
    def spatial(self) -> int:
        """out_h·out_w, the positions per filter in one sample."""
        return self.h * self.w

    @property
    def outputs(self) -> int:
        """Values per sample: c·h·w (darknet's l.outputs)."""
        return self.c * self.h * self.w


def make_batchnorm_layer(batch: int, w: int, h: int, c: int, *, dtype: torch.dtype = torch.float32) -> Layer:
    """A batch-norm layer for ``batch`` images of c channels of h×w: scales 1, everything else 0.

    pjreddie's CPU build allocates ``x`` and ``x_norm`` only for convolutional layers (a stand-alone BATCHNORM
    layer would write through NULL); here they are allocated, as AlexeyAB's fork does.
    """
    if min(batch, w, h, c) < 1:
        raise ValueError(f"batch, w, h and c must be positive, got {batch}, {w}, {h}, {c}")
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be float32 (darknet's) or float64, got {dtype}")
    size = batch * c * h * w

    def zeros(n: int) -> Tensor:
        return torch.zeros(n, dtype=dtype)

    return Layer(batch=batch, w=w, h=h, c=c, scales=torch.ones(c, dtype=dtype), biases=zeros(c),
                 rolling_mean=zeros(c), rolling_variance=zeros(c), mean=zeros(c), variance=zeros(c),
                 scale_updates=zeros(c), bias_updates=zeros(c), mean_delta=zeros(c), variance_delta=zeros(c),
                 x=zeros(size), x_norm=zeros(size), output=zeros(size), delta=zeros(size))


def _flat(t: Tensor, layer: Layer, what: str) -> Tensor:
    if t.dtype != layer.scales.dtype:
        raise TypeError(f"{what} is {t.dtype}, but the layer holds {layer.scales.dtype}")
    if t.numel() != layer.batch * layer.outputs:
        raise ValueError(f"{what} has {t.numel()} elements; the layer takes batch·c·h·w = "
                         f"{layer.batch * layer.outputs}")
    return t.reshape(-1)


def forward_batchnorm_layer(l: Layer, input: Tensor, train: bool) -> Tensor:  # noqa: E741 (darknet's name)
    """Normalize ``input`` (batch·c·h·w values, darknet's layout) and return the output, flat.

    In training: batch mean and unbiased variance, the rolling statistics updated (.99/.01) *before*
    normalizing, x_norm kept for the backward. In eval: the rolling statistics normalize. Then y = scales·x̂ + biases.
    Updates l.x, l.mean, l.variance, l.rolling_mean, l.rolling_variance, l.x_norm (training) and l.output.
    """
    b, c, s = l.batch, l.c, l.spatial
    l.x = _flat(input, l, "input").clone()
    if train:
        l.mean = mean_cpu(l.x, b, c, s)
        l.variance = variance_cpu(l.x, l.mean, b, c, s)
        decay, weight = _constant(ROLLING_DECAY, l.mean), _constant(ROLLING_WEIGHT, l.mean)
        l.rolling_mean = l.rolling_mean * decay + weight * l.mean  # scal_cpu, then axpy_cpu
        l.rolling_variance = l.rolling_variance * decay + weight * l.variance
        normalized = normalize_cpu(l.x, l.mean, l.variance, b, c, s)
        l.x_norm = normalized
    else:
        normalized = normalize_cpu(l.x, l.rolling_mean, l.rolling_variance, b, c, s)
    l.output = add_bias(scale_bias(normalized, l.scales, b, c, s), l.biases, b, c, s)
    return l.output


def backward_batchnorm_layer(l: Layer, delta: Tensor, train: bool) -> Tensor:  # noqa: E741 (darknet's name)
    """From ∂ℓ/∂y (``delta``, flat) return darknet's ∂ℓ/∂x; accumulate l.bias_updates and l.scale_updates.

    Uses l.x and l.x_norm from the forward. In eval (``train=False``) darknet swaps in the rolling statistics for
    mean and variance but runs the same formulas, and x_norm is the one of the last training forward.
    """
    b, c, s = l.batch, l.c, l.spatial
    dy = _flat(delta, l, "delta")
    mean, variance = (l.mean, l.variance) if train else (l.rolling_mean, l.rolling_variance)
    l.bias_updates = backward_bias(l.bias_updates, dy, b, c, s)
    l.scale_updates = backward_scale_cpu(l.x_norm, dy, b, c, s, l.scale_updates)
    dxhat = scale_bias(dy, l.scales, b, c, s)
    l.mean_delta = mean_delta_cpu(dxhat, variance, b, c, s)
    l.variance_delta = variance_delta_cpu(l.x, dxhat, mean, variance, b, c, s)
    l.delta = normalize_delta_cpu(l.x, mean, variance, l.mean_delta, l.variance_delta, b, c, s, dxhat)
    return l.delta
