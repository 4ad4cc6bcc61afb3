"""The networks E4 looks at, at initialization: what each layer's signal looks like going forward and back.

A network here is ``depth`` bias-free linear layers ``z = h @ Wᵀ``, each followed (optionally) by a bnlab
``BatchNorm1d`` in training mode (batch statistics, γ = 1, β = 0) and by the activation: ``h = act(BN(z))``. The
input of the activation, ``BN(z)`` or ``z``, is the *pre-activation*. Gradients are back-propagated from a
cross-entropy against random labels, summed over the batch (so they are per-example gradients) through a last
linear layer of 10 outputs with the same initialization; ∂L/∂z is recorded per layer (Glorot & Bengio's
"back-propagated gradients").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

import bnlab
from bnlab import init as keras_init

__all__ = ["CLASSES", "LayerStats", "activation_fn", "init_weight", "jacobian_singular_values", "measure",
           "network_weights", "selu_deep"]

CLASSES = 10
_QUANTILE_SAMPLE = 5_000  # values a histogram's range is estimated from (torch.quantile sorts its input)


def init_weight(name: str, fan_out: int, fan_in: int, generator: torch.Generator) -> Tensor:
    """A (fan_out, fan_in) float32 weight drawn as the initialization ``name`` says (see :mod:`.config`)."""
    w = torch.empty(fan_out, fan_in)
    if name == "normal-0.01":
        return w.normal_(0.0, 0.01, generator=generator)
    if name == "normal-1":
        return w.normal_(0.0, 1.0, generator=generator)
    if name == "standard":
        bound = 1 / math.sqrt(fan_in)
        return w.uniform_(-bound, bound, generator=generator)
    return keras_init.INITIALIZERS[name](w, generator=generator)


def activation_fn(name: str, leak: float = 0.01) -> Callable[[Tensor], Tensor]:
    fns: dict[str, Callable[[Tensor], Tensor]] = {
        "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "elu": torch.nn.functional.elu,
        "selu": torch.selu, "leaky_relu": lambda x: torch.nn.functional.leaky_relu(x, leak)}
    return fns[name]


def _saturated(name: str, h: Tensor) -> float | None:
    """The share of units at the flat ends of a bounded activation: |h| > 0.99 (tanh), h < 0.01 or > 0.99
    (sigmoid); None for the others."""
    if name == "tanh":
        return float((h.abs() > 0.99).float().mean())
    if name == "sigmoid":
        return float(((h < 0.01) | (h > 0.99)).float().mean())
    return None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class LayerStats:
    """Per-layer statistics of one network (lists of ``depth`` values; None where not finite) and its histograms:
    ``h_hist``/``g_hist`` (depth, bins) counts of activations and gradients over ``h_edges``/``g_edges``."""

    z_std: list[float | None]
    pre_mean: list[float | None]
    pre_std: list[float | None]
    h_mean: list[float | None]
    h_std: list[float | None]
    saturated: list[float | None]
    g_mean: list[float | None]
    g_std: list[float | None]
    h_hist: Tensor
    h_edges: Tensor
    g_hist: Tensor
    g_edges: Tensor


def _histograms(values: list[Tensor], bins: int, bounds: tuple[float, float] | None) -> tuple[Tensor, Tensor]:
    """Counts (layers, bins) of each layer's values on one shared range: ``bounds``, or the 0.5th to 99.5th
    percentile over all layers (a layer's collapse shows as a spike against the others' spread)."""
    if bounds is None:
        lows, highs = [], []
        for v in values:
            flat = v.flatten()
            sample = flat[:: flat.numel() // _QUANTILE_SAMPLE + 1]  # a strided sample: no sort of the whole layer
            sample = sample[torch.isfinite(sample)]
            if sample.numel():
                q = torch.quantile(sample, torch.tensor([0.005, 0.995], device=sample.device))
                lows.append(float(q[0]))
                highs.append(float(q[1]))
        low, high = (min(lows), max(highs)) if lows else (-1.0, 1.0)
        if not high > low:
            low, high = low - 1e-12, high + 1e-12
        bounds = (low, high)
    edges = torch.linspace(bounds[0], bounds[1], bins + 1, dtype=torch.float64)
    # Values beyond the range count in the outermost bins (the histogram keeps every value); NaN counts nowhere.
    counts = torch.stack([torch.histc(v.clamp(bounds[0], bounds[1]), bins, bounds[0], bounds[1]).cpu()
                          for v in values])
    return counts, edges


_BOUNDS = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}


def network_weights(init: str, inputs: int, width: int, depth: int, generator: torch.Generator,
                    device: torch.device) -> list[Tensor]:
    """The ``depth`` hidden weights and the head's, drawn as ``init`` says (shared by the nets with and without BN)."""
    shapes = [(width, inputs if i == 0 else width) for i in range(depth)] + [(CLASSES, width)]
    return [init_weight(init, out, in_, generator).to(device) for out, in_ in shapes]


def measure(x: Tensor, labels: Tensor, weights: list[Tensor], activation: str, batch_norm: bool, *, bins: int,
            leak: float, backend: str = "auto") -> LayerStats:
    """Forward ``x`` (N, D) through the network of ``weights`` (:func:`network_weights`: the hidden layers', then
    the head's), back-propagate the random-label cross-entropy, measure. Runs on ``x``'s device."""
    act = activation_fn(activation, leak)
    device = x.device
    weights, head = weights[:-1], weights[-1]
    width, depth = head.shape[1], len(weights)
    norms = [bnlab.BatchNorm1d(width, backend=backend).to(device).train() for _ in range(depth)] if batch_norm \
        else []
    h = x.detach().requires_grad_(True)  # so the graph reaches every z (the weights need no gradient)
    zs, pres, hs = [], [], []
    for i, w in enumerate(weights):
        z = h @ w.T
        z.retain_grad()
        pre = norms[i](z) if batch_norm else z
        h = act(pre)
        zs.append(z)
        pres.append(pre.detach())
        hs.append(h.detach())
    loss = torch.nn.functional.cross_entropy(h @ head.T, labels, reduction="sum")
    loss.backward()
    grads = [z.grad if z.grad is not None else torch.zeros_like(z) for z in zs]

    def stats(ts: list[Tensor], f: Callable[[Tensor], Tensor]) -> list[float | None]:
        return [_finite(float(f(t))) for t in ts]

    h_hist, h_edges = _histograms(hs, bins, _BOUNDS.get(activation))
    g_hist, g_edges = _histograms(grads, bins, None)
    return LayerStats(
        z_std=stats([z.detach() for z in zs], torch.std), pre_mean=stats(pres, torch.mean),
        pre_std=stats(pres, torch.std), h_mean=stats(hs, torch.mean), h_std=stats(hs, torch.std),
        saturated=[_saturated(activation, t) for t in hs], g_mean=stats(grads, torch.mean),
        g_std=stats(grads, torch.std), h_hist=h_hist, h_edges=h_edges, g_hist=g_hist, g_edges=g_edges)


def selu_deep(x: Tensor, depth: int, width: int, generator: torch.Generator) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each layer's output of ``depth`` SELU layers with LeCun normal weights."""
    means, stds = [], []
    h = x
    with torch.no_grad():
        for _ in range(depth):
            w = keras_init.lecun_normal_(torch.empty(width, h.shape[1]), generator=generator).to(x.device)
            h = torch.selu(h @ w.T)
            means.append(float(h.double().mean()))
            stds.append(float(h.double().std()))
    return means, stds


def jacobian_singular_values(x: Tensor, init: str, depth: int, generator: torch.Generator) -> list[float]:
    """Glorot & Bengio's check: for a tanh net of ``depth`` square layers (width = x's), the mean singular value
    of each Jacobian ∂h⁽ⁱ⁺¹⁾/∂h⁽ⁱ⁾ = diag(1 − h⁽ⁱ⁺¹⁾²)·W⁽ⁱ⁺¹⁾ between consecutive hidden layers, averaged over the
    rows of ``x`` (each example has its own Jacobian). Returns ``depth − 1`` values."""
    width = x.shape[1]
    means = []
    with torch.no_grad():
        h = torch.tanh(x @ init_weight(init, width, width, generator).to(x.device).T)
        for _ in range(depth - 1):
            w = init_weight(init, width, width, generator).to(x.device)
            h = torch.tanh(h @ w.T)
            jacobians = (1 - h.square()).unsqueeze(2) * w  # (examples, width, width): row j scaled by tanh'
            means.append(float(torch.linalg.svdvals(jacobians).double().mean()))
    return means
