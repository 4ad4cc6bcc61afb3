"""darknet's batch-norm layer (``bnlab.reference.darknet.Layer``, pjreddie's CPU layer) ↔ a bnlab BatchNorm2d.

The module follows ``convention="darknet"``: in training x̂ = (x − μ_B)/(√s² + ε) with the unbiased batch variance
s², the running statistics move as rolling ← .99·rolling + .01·batch (torch's momentum 0.01), and eval divides by
√rolling_variance + ε. What carries over: ``scales`` (γ), ``biases`` (β), ``rolling_mean`` and
``rolling_variance``, exactly. darknet's rolling statistics start at 0 (``make_batchnorm_layer``), torch's variance
at 1: the port is where that start is set, by copying the layer's own values, so a fresh darknet layer gives a
module whose running variance is 0 (its eval then divides by ε until trained, as darknet's does). A module built
directly, ``bnlab.BatchNorm2d(C, eps=1e-6, momentum=0.01, convention="darknet")``, keeps torch's start (1) and
``reset_running_stats`` keeps torch's meaning: its constructor and state_dict stay torch's.

ε is darknet's ``normalize_cpu`` constant, 1e-6 (``compat.DARKNET.eps``). darknet computes in float32 and adds
float32 values one at a time; the module sums in two passes (docs/math.md), so the two agree to float32 rounding.
"""

from __future__ import annotations

import math

import torch

from bnlab.compat.conventions import DARKNET
from bnlab.compat.modules import Ported, build_module
from bnlab.reference import darknet
from bnlab.variants.convention import DARKNET_MOMENTUM

__all__ = ["from_darknet", "to_darknet"]


def from_darknet(layer: darknet.Layer, *, backend: str = "auto", dtype: torch.dtype | None = None) -> Ported:
    """A bnlab ``BatchNorm2d(layer.c, eps=1e-6, momentum=0.01, convention="darknet")`` with the layer's numbers.

    Args:
        layer: a :class:`bnlab.reference.darknet.Layer` (``make_batchnorm_layer(batch, w, h, c)``, possibly trained
            with ``forward_batchnorm_layer``).
        backend: the module's bnlab backend.
        dtype: the module's parameter and buffer dtype (default: the layer's, float32 as darknet's).

    The module takes darknet's input as an (batch, c, h, w) tensor: ``x.reshape(batch, c, h, w)`` of the flat
    array (``channels_last`` is False).
    """
    if not isinstance(layer, darknet.Layer):
        raise TypeError(f"from_darknet expects a bnlab.reference.darknet.Layer, got {type(layer).__name__}")
    module, notes = build_module(
        4, mean=layer.rolling_mean.numpy(), var=layer.rolling_variance.numpy(), gamma=layer.scales.numpy(),
        beta=layer.biases.numpy(), eps=DARKNET.eps, torch_momentum=DARKNET_MOMENTUM,
        backend=backend, dtype=layer.scales.dtype if dtype is None else dtype, convention="darknet")
    return Ported(module, False, notes)


def to_darknet(module: torch.nn.Module, batch: int, w: int, h: int) -> darknet.Layer:
    """darknet's layer for ``batch`` inputs of w×h with the numbers of a ``convention="darknet"`` bnlab layer.

    The module must have γ and β (darknet's layer always has scales and biases), running statistics, and darknet's
    ε (1e-6, ``compat.DARKNET.eps``): darknet's ε and update are constants of its C code.
    """
    if getattr(module, "convention", "torch") != "darknet":
        raise ValueError(f"to_darknet: the module follows convention={getattr(module, 'convention', 'torch')!r}; "
                         "darknet's layer normalizes otherwise (ε outside the root, the unbiased variance). Build it "
                         "with convention='darknet' (bnlab.compat.from_darknet) to train it as darknet")
    if not isinstance(module, torch.nn.BatchNorm2d):
        raise TypeError(f"to_darknet converts a bnlab BatchNorm2d, got {type(module).__name__}")
    if module.weight is None or module.bias is None or module.running_mean is None or module.running_var is None:
        raise ValueError("to_darknet: darknet's layer has scales, biases and rolling statistics; the module lacks "
                         "some (affine=False, bias=False or track_running_stats=False)")
    if not math.isclose(module.eps, DARKNET.eps, rel_tol=1e-6):
        raise ValueError(f"to_darknet: darknet's ε is {DARKNET.eps:g} (normalize_cpu), the module's {module.eps:g}")
    dtype = module.running_mean.dtype if module.running_mean.dtype == torch.float64 else torch.float32
    layer = darknet.make_batchnorm_layer(batch, w, h, module.num_features, dtype=dtype)

    def values(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", dtype).clone()

    layer.scales, layer.biases = values(module.weight), values(module.bias)
    layer.rolling_mean, layer.rolling_variance = values(module.running_mean), values(module.running_var)
    return layer
