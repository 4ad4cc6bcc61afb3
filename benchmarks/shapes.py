"""The shape catalogue: batch-norm inputs of ResNet-50, a few 1d shapes, and a CPU-sized subset.

A case is a shape, a dtype and a layout ("nchw" = contiguous, "nhwc" = channels_last; 1d shapes only "nchw").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# (C, H×W) of every distinct batch-norm input in ResNet-50 (torchvision layout, 224×224 images).
RESNET50_BN = [(64, 112), (64, 56), (256, 56), (128, 56), (128, 28), (512, 28), (256, 28), (256, 14),
               (1024, 14), (512, 14), (512, 7), (2048, 7)]
ONE_D = [(256, 512), (1024, 4096), (64, 128, 256), (32, 512, 1024)]


@dataclass(frozen=True)
class Case:
    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: str  # "nchw" or "nhwc"
    fused: bool = False  # BN + add + ReLU against PyTorch's unfused bn → add → relu

    @property
    def name(self) -> str:
        dt = str(self.dtype).removeprefix("torch.")
        kind = "bn+add+relu" if self.fused else "bn"
        return f"{kind} {'x'.join(map(str, self.shape))} {dt} {self.layout}"


def _resnet(batch: int) -> list[tuple[int, ...]]:
    return [(batch, c, hw, hw) for c, hw in RESNET50_BN]


# The CPU subset: ResNet-50's layers at batch 8 (from 112×112 down to 7×7), two 1d shapes; sized so a suite
# finishes in minutes on two cores.
CPU_SHAPES = [(8, 64, 112, 112), (8, 256, 56, 56), (8, 128, 28, 28), (8, 512, 28, 28), (8, 1024, 14, 14),
              (8, 256, 14, 14), (8, 2048, 7, 7), (8, 512, 7, 7), (256, 512), (64, 128, 256)]
CPU_QUICK = [(8, 64, 112, 112), (8, 256, 56, 56), (8, 512, 28, 28), (8, 1024, 14, 14), (8, 2048, 7, 7),
             (256, 512), (64, 128, 256)]
CPU_FUSED = [(8, 256, 56, 56), (8, 1024, 14, 14)]
GPU_FUSED = [(32, 256, 56, 56), (256, 256, 56, 56), (256, 1024, 14, 14), (256, 2048, 7, 7)]


def _layouts(shape: tuple[int, ...]) -> list[str]:
    return ["nchw", "nhwc"] if len(shape) == 4 else ["nchw"]


def catalogue(device: str, suite: str) -> list[Case]:
    """The cases of a suite: ``quick`` (float32, then bfloat16 on the largest shapes) or ``full``."""
    cases: list[Case] = []
    if device == "cpu":
        shapes = CPU_QUICK if suite == "quick" else CPU_SHAPES
        dtypes = [torch.float32] if suite == "quick" else [torch.float32, torch.bfloat16]
        for dt in dtypes:
            cases += [Case(s, dt, lay) for s in shapes for lay in _layouts(s)]
        cases += [Case(s, torch.float32, lay, fused=True) for s in CPU_FUSED for lay in _layouts(s)]
        return cases
    shapes = _resnet(32) + ([] if suite == "quick" else _resnet(256)) + [s for s in ONE_D]
    dtypes = [torch.bfloat16, torch.float32] + ([] if suite == "quick" else [torch.float16])
    for dt in dtypes:
        cases += [Case(s, dt, lay) for s in shapes for lay in _layouts(s)]
    for dt in (torch.bfloat16, torch.float32):
        cases += [Case(s, dt, lay, fused=True) for s in GPU_FUSED for lay in _layouts(s)]
    return cases
