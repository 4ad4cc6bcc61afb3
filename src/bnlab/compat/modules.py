"""The torch side of the converters: build a bnlab batch-norm module from another framework's numbers, read a
torch or bnlab module's numbers back, and map channels-last inputs onto channels-first modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from bnlab.nn import BatchNorm1d, BatchNorm2d, BatchNorm3d

#: bnlab's module for an input of each rank: (N, C) and (N, C, L), (N, C, H, W), (N, C, D, H, W).
MODULE_FOR_RANK: dict[int, type[BatchNorm1d] | type[BatchNorm2d] | type[BatchNorm3d]] = {
    2: BatchNorm1d, 3: BatchNorm1d, 4: BatchNorm2d, 5: BatchNorm3d}
_TORCH_CLASSES = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)

#: What a module converted with convention="torch" does differently from its Keras or Flax source.
BIASED_RUNNING_VAR_NOTE = (
    "{name} averages the biased batch variance σ²_B into its running variance; this module (convention='torch') "
    "averages the unbiased m/(m−1)·σ²_B, so after training steps running_var exceeds {name}'s by "
    "(1 − decay)·σ²_B/(m − 1) per step, decayed. Inference, training outputs and the running mean are the same; "
    "the default convention='{convention}' trains as {name} does.")
FROZEN_SCALE_NOTE = ("the source layer has no scale (γ): the module's weight is fixed at 1 with requires_grad=False, "
                     "so an optimizer leaves it alone")


@dataclass(frozen=True)
class Ported:
    """A layer converted from another framework.

    Attributes:
        module: the bnlab module (BatchNorm1d/2d/3d), in train mode, with the source's statistics and parameters.
        channels_last: the source took channels-last input (Keras's and Flax's default: NHWC, NLC, NDHWC); bnlab's
            modules take channels-first input (NCHW), so inputs move their last axis to position 1 on the way in
            and outputs move it back (:meth:`module_input`, :meth:`framework_output`).
        notes: what the module does differently from the source framework, in words; empty when nothing does.
    """

    module: torch.nn.Module
    channels_last: bool
    notes: tuple[str, ...] = ()

    def module_input(self, x: Tensor) -> Tensor:
        """An input in the source framework's layout, as the module takes it: NHWC → NCHW (a view)."""
        return x.movedim(-1, 1) if self.channels_last else x

    def framework_output(self, y: Tensor) -> Tensor:
        """A module output in the source framework's layout: NCHW → NHWC (a view)."""
        return y.movedim(1, -1) if self.channels_last else y


def channel_axis_layout(axis: int, rank: int, source: str) -> bool:
    """Whether a normalization axis of a rank-``rank`` input is channels-last (True) or channels-first (False)."""
    if rank not in MODULE_FOR_RANK:
        raise ValueError(f"{source}: bnlab has batch-norm modules for inputs of rank 2 to 5, got rank {rank}")
    canonical = axis % rank if -rank <= axis < rank else None
    if canonical == 1:  # also the last axis of (N, C): no permutation either way
        return False
    if canonical == rank - 1:
        return True
    raise ValueError(f"{source}: axis={axis} of a rank-{rank} input is neither the channels-last axis (-1) nor "
                     f"the channels-first axis (1); move the features to one of those first")


def _tensor(values: Any, dtype: torch.dtype, what: str, channels: int) -> Tensor:
    # A copy: training the module must not write into the caller's arrays (torch.as_tensor would share them).
    t = torch.tensor(np.array(values, copy=True), dtype=dtype)
    if t.shape != (channels,):
        raise ValueError(f"{what} has shape {tuple(t.shape)}, expected ({channels},)")
    return t


def check_port_convention(convention: object, source: str, own: str) -> None:
    """A converter's ``convention=``: the source framework's own (``own``, the default) or torch's."""
    if convention not in (own, "torch"):
        raise ValueError(f"{source}: convention must be {own!r} (train as the source framework does, the default) "
                         f"or 'torch' (train by PyTorch's rules), got {convention!r}")


def build_module(rank: int, *, mean: Any, var: Any, gamma: Any | None, beta: Any | None, eps: float,
                 torch_momentum: float, backend: str, dtype: torch.dtype,
                 convention: str = "torch") -> tuple[torch.nn.Module, tuple[str, ...]]:
    """A bnlab module holding the given numbers (array-likes of shape (C,)), and notes on what it changed.

    ``convention``: the rules the module follows (docs/compat.md), e.g. "keras" for a layer ported from Keras.
    """
    channels = int(np.asarray(mean).shape[0]) if np.asarray(mean).ndim == 1 else -1
    if channels < 1:
        raise ValueError(f"the moving mean must be a non-empty vector, got shape {np.asarray(mean).shape}")
    affine = gamma is not None or beta is not None
    module = MODULE_FOR_RANK[rank](channels, eps=eps, momentum=torch_momentum, affine=affine,
                                   bias=beta is not None or not affine, backend=backend, dtype=dtype,
                                   convention=convention)
    notes: list[str] = []
    module.running_mean = _tensor(mean, dtype, "the moving mean", channels)  # replaces the buffer
    module.running_var = _tensor(var, dtype, "the moving variance", channels)
    with torch.no_grad():
        if gamma is not None:
            module.weight.copy_(_tensor(gamma, dtype, "gamma (scale)", channels))
        elif affine:
            module.weight.requires_grad_(False)  # stays 1
            notes.append(FROZEN_SCALE_NOTE)
        if beta is not None:
            module.bias.copy_(_tensor(beta, dtype, "beta (bias)", channels))
    return module, tuple(notes)


class ModuleNumbers(NamedTuple):
    """A torch/bnlab batch-norm module's numbers as float arrays of shape (C,), and its hyper-parameters."""

    gamma: np.ndarray | None
    beta: np.ndarray | None
    mean: np.ndarray
    var: np.ndarray
    eps: float
    torch_momentum: float
    rank: int | None  # the input rank; None for a BatchNorm1d when the caller did not say


def read_module(module: torch.nn.Module, input_rank: int | None, target: str) -> ModuleNumbers:
    """The numbers of a torch or bnlab BatchNorm1d/2d/3d, checked for export to ``target`` ("Keras", "Flax").

    A module with convention "torch", "keras" or "flax" is accepted (their inference is the same; in training a
    torch-convention module's running variance averages the unbiased variance where Keras and Flax average the
    biased one); "darknet" is refused.
    """
    if not isinstance(module, _TORCH_CLASSES):
        raise TypeError(f"to {target}: expected a torch or bnlab BatchNorm1d/2d/3d, got {type(module).__name__} "
                        "(frozen layers: bnlab.convert(model, to='bnlab') first)")
    if module.running_mean is None or module.running_var is None:
        raise ValueError(f"to {target}: the module has no running statistics (track_running_stats=False), and "
                         f"{target} always keeps them; build it with track_running_stats=True")
    if getattr(module, "convention", "torch") == "darknet":
        raise ValueError(f"to {target}: the module follows convention='darknet' (ε outside the root, the unbiased "
                         f"batch variance normalizes), which {target}'s batch norm cannot represent; "
                         f"bnlab.compat.to_darknet gives darknet's layer")
    if module.momentum is None:
        raise ValueError(f"to {target}: momentum=None (torch's cumulative average) has no {target} equivalent; "
                         "set module.momentum to a number first")
    rank: int | None
    if isinstance(module, torch.nn.BatchNorm1d):  # takes (N, C) and (N, C, L)
        if input_rank not in (None, 2, 3):
            raise ValueError(f"to {target}: a BatchNorm1d takes (N, C) or (N, C, L) input, so input_rank is 2 or 3, "
                             f"not {input_rank}")
        rank = input_rank
    else:
        rank = 5 if isinstance(module, torch.nn.BatchNorm3d) else 4
        if input_rank not in (None, rank):
            raise ValueError(f"to {target}: a {type(module).__name__} takes rank-{rank} input, not rank {input_rank}")

    def numpy(t: Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().copy()

    return ModuleNumbers(None if module.weight is None else numpy(module.weight),
                         None if module.bias is None else numpy(module.bias), numpy(module.running_mean),
                         numpy(module.running_var), float(module.eps), float(module.momentum), rank)
