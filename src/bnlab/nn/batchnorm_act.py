"""``BatchNormAct1d/2d/3d``: batch norm, an optional residual add and an activation in one layer.

``forward(x, residual=None)`` returns act(BN(x) + residual). The classes subclass bnlab's (hence torch's)
BatchNorm modules and keep their buffers and state_dict keys, so a ``torch.nn.BatchNorm2d`` checkpoint loads
into a ``BatchNormAct2d``. What is saved for backward, and the γ = 0 rule of ``save="output"``, are described in
:mod:`bnlab.fused`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bnlab.fused import _batch_norm_act, _check_residual, check_act_args
from bnlab.kernels.fused import activate
from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _module_forward, prepare_call

__all__ = ["BatchNormAct1d", "BatchNormAct2d", "BatchNormAct3d"]


def _act_module_forward(module: Any, input: Tensor, residual: Tensor | None) -> Tensor:
    """The fused layer's forward: the plain layer's checks and counter, then act(BN(x) + r) in one operation."""
    _check_residual(input, residual)
    if module.normalize_with is not None or module.update_stats is not None:
        # Switched by bnlab.tools.freeze: the plain forward honours the switches; the activation follows unfused.
        z = _module_forward(module, input)
        return activate(z if residual is None else z + residual, module.activation, module.negative_slope)
    call = prepare_call(module, input)
    return _batch_norm_act(input, call.running_mean, call.running_var, call.weight, call.bias, call.use_batch_stats,
                           0.0 if call.factor is None else call.factor, module.eps, residual, module.activation,
                           module.negative_slope, module.save, module.backend)


# A leaf for torch.fx, as bnlab.nn.batchnorm._module_forward is: a traced graph keeps mode switching.
torch.fx.wrap("_act_module_forward")


class _ActMixin:
    """What the fused layers add to bnlab's BatchNorm: an activation, a save mode and a residual input."""

    activation: str
    negative_slope: float
    save: str

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None, *,
                 activation: str = "relu", negative_slope: float = 0.01, save: str = "input",
                 backend: str = "auto", **kwargs: Any) -> None:
        check_act_args(activation, negative_slope, save)
        super().__init__(num_features, eps, momentum, affine, track_running_stats,  # type: ignore[call-arg]
                         device, dtype, backend=backend, **kwargs)
        self.activation, self.negative_slope, self.save = activation, float(negative_slope), save

    def forward(self, input: Tensor, residual: Tensor | None = None) -> Tensor:
        """act(BN(input) + residual); residual is None or a tensor of input's shape, dtype and device."""
        return _act_module_forward(self, input, residual)

    def extra_repr(self) -> str:
        slope = f", negative_slope={self.negative_slope}" if self.activation == "leaky_relu" else ""
        return f"{super().extra_repr()}, activation={self.activation!r}{slope}, save={self.save!r}"  # type: ignore[misc]


class BatchNormAct1d(_ActMixin, BatchNorm1d):
    """act(BatchNorm1d(x) + residual) over (N, C) or (N, C, L) input; arguments as BatchNorm1d plus
    ``activation`` ("relu", "leaky_relu", "silu", "elu", "identity"; default "relu"), ``negative_slope``
    (0.01), ``save`` ("input" or "output") and ``backend``."""


class BatchNormAct2d(_ActMixin, BatchNorm2d):
    """act(BatchNorm2d(x) + residual) over (N, C, H, W) input; arguments as :class:`BatchNormAct1d`."""


class BatchNormAct3d(_ActMixin, BatchNorm3d):
    """act(BatchNorm3d(x) + residual) over (N, C, D, H, W) input; arguments as :class:`BatchNormAct1d`."""
