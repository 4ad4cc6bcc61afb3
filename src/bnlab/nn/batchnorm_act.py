"""``BatchNormAct1d/2d/3d``: batch norm, an optional residual add and an activation in one layer.

``forward(x, residual=None)`` returns act(BN(x) + residual). The classes subclass bnlab's (hence torch's)
BatchNorm modules and keep their buffers and state_dict keys, so a ``torch.nn.BatchNorm2d`` checkpoint loads
into a ``BatchNormAct2d``. They run the same forward as the plain layers (:func:`bnlab.nn.batchnorm.module_forward`,
one path for both); what is saved for backward, and when ``save="output"`` keeps the input instead, is described
in :func:`bnlab.functional.batch_norm_act`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bnlab._checks import check_act_args
from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, module_forward
from bnlab.variants.convention import CONVENTIONS

__all__ = ["ActMixin", "BatchNormAct1d", "BatchNormAct2d", "BatchNormAct3d"]

# A leaf for torch.fx here too (fx.wrap patches the name in the module that calls it): a traced graph keeps mode
# switching for the fused layers, as it does for the plain ones.
torch.fx.wrap("module_forward")


class ActMixin:
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
        """act(BN(input) + residual); residual is None or a tensor of input's shape, dtype and device.

        Under a convention other than "torch" (docs/compat.md) the batch norm follows that framework's rules and
        the residual and activation are applied after it, in torch ops, where they change what it computes
        (training; and eval under "darknet"); ``save`` then has no effect.
        """
        if self.convention != "torch":  # type: ignore[attr-defined]
            from bnlab.nn.variant import convention_forward  # (nn.variant imports nn.batchnorm)

            return convention_forward(self, input, residual)
        return module_forward(self, input, residual)

    def extra_repr(self) -> str:
        slope = f", negative_slope={self.negative_slope}" if self.activation == "leaky_relu" else ""
        return f"{super().extra_repr()}, activation={self.activation!r}{slope}, save={self.save!r}"  # type: ignore[misc]


class BatchNormAct1d(ActMixin, BatchNorm1d):
    """act(BatchNorm1d(x) + residual) over (N, C) or (N, C, L) input; arguments as BatchNorm1d plus
    ``activation`` ("relu", "leaky_relu", "silu", "elu", "identity"; default "relu"), ``negative_slope``
    (0.01), ``save`` ("input" or "output"), ``backend`` and ``convention``."""

    _bnlab_conventions = CONVENTIONS


class BatchNormAct2d(ActMixin, BatchNorm2d):
    """act(BatchNorm2d(x) + residual) over (N, C, H, W) input; arguments as :class:`BatchNormAct1d`."""

    _bnlab_conventions = CONVENTIONS


class BatchNormAct3d(ActMixin, BatchNorm3d):
    """act(BatchNorm3d(x) + residual) over (N, C, D, H, W) input; arguments as :class:`BatchNormAct1d`."""

    _bnlab_conventions = CONVENTIONS
