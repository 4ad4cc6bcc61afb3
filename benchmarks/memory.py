"""Saved-for-backward bytes, counted with ``torch.autograd.graph.saved_tensors_hooks``.

Two measurements, both deterministic (no timing):

- one layer: BN + activation alone, PyTorch's ``BatchNorm2d → activation`` against ``BatchNormAct2d``;
- a stack of conv → BN → activation blocks, where tensors saved by several layers (a BN+act output that the
  next conv also saves) are counted once, by storage.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import bnlab

_TORCH_ACT = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "silu": nn.SiLU, "identity": nn.Identity}


def saved_bytes(fn: Any, *args: Any) -> int:
    """Bytes of distinct storages autograd saves while ``fn(*args)`` runs (parameters included)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    del out
    return sum(seen.values())


class _Block(nn.Module):
    def __init__(self, channels: int, norm_act: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm_act = norm_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_act(self.conv(x))


def _torch_norm_act(channels: int, activation: str) -> nn.Module:
    return nn.Sequential(nn.BatchNorm2d(channels), _TORCH_ACT[activation]())


def _ours(channels: int, activation: str, save: str, backend: str) -> nn.Module:
    return bnlab.nn.BatchNormAct2d(channels, activation=activation, save=save, backend=backend)


def measure(activation: str = "leaky_relu", shape: tuple[int, int, int, int] = (8, 32, 32, 32), blocks: int = 4,
            backend: str = "auto") -> dict[str, Any]:
    """Saved bytes of PyTorch's BN → act against BatchNormAct2d with save="input" and save="output"."""
    torch.manual_seed(0)
    channels = shape[1]
    x = torch.randn(shape, requires_grad=True)
    layer = {"torch": saved_bytes(_torch_norm_act(channels, activation), x)}
    stack = {"torch": saved_bytes(nn.Sequential(*[_Block(channels, _torch_norm_act(channels, activation))
                                                  for _ in range(blocks)]), x)}
    for save in ("input", "output"):
        layer[f"bnlab save={save}"] = saved_bytes(_ours(channels, activation, save, backend), x)
        stack[f"bnlab save={save}"] = saved_bytes(nn.Sequential(*[_Block(channels, _ours(channels, activation, save,
                                                                                           backend))
                                                                  for _ in range(blocks)]), x)
    return {
        "activation": activation, "shape": list(shape), "blocks": blocks,
        "layer_bytes": layer, "stack_bytes": stack,
        "layer_ratio_output": layer["bnlab save=output"] / layer["torch"],
        "layer_ratio_input": layer["bnlab save=input"] / layer["torch"],
        "stack_ratio_output": stack["bnlab save=output"] / stack["torch"],
    }
