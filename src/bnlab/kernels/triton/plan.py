"""Launch plans of the Triton kernels: tile sizes and grids per shape, cached (no autotuning on the critical path).

Channel blocks follow the contiguous dimension (wide blocks of channels for channels_last, long runs of M for
NCHW), and the training passes either read each channel block once (it fits in registers) or split M over several
programs whose partial results are merged in a fixed order, so two runs give bit-identical results.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import torch

ONE_PASS_MAX = 8192  # values per program (BLOCK_C × BLOCK_M) that still fit in registers for the one-pass path
TILE = 4096  # values per program tile in the split path and the elementwise passes
GRID_AXIS1_MAX = 65_535  # CUDA's limit on grid axes 1 and 2
#: Programs a split pass launches under the interpreter, which runs each program as a Python loop.
INTERPRETER_PROGRAMS = 4


def interpreting() -> bool:
    """Whether Triton runs under its CPU interpreter in this process (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class Plan(NamedTuple):
    """How a (C, M, layout) problem is launched: tile sizes and the three grids its kernels take.

    The M tiles of the elementwise passes go on grid axis 0, where CUDA allows 2³¹ − 1 programs (a channels_last
    512×64×112×112 batch has 100,352 of them); axis 1 allows only 65,535, which :func:`plan` keeps the channel
    blocks under (and the splits, on axis 1 of the statistics passes, number at most ``programs_wanted``).
    """

    block_c: int  # channels per program
    block_m: int  # M values per tile of the statistics passes (all of M, rounded up, on the one-pass path)
    one_pass: bool
    splits: int  # programs along M in the split statistics passes
    m_per_split: int
    c_blocks: int
    tile_m: int  # M values per program of the elementwise passes (_normalize, _grad_input)
    m_tiles: int

    @property
    def channel_grid(self) -> tuple[int]:
        return (self.c_blocks,)

    @property
    def split_grid(self) -> tuple[int, int]:
        return (self.c_blocks, self.splits)

    @property
    def tile_grid(self) -> tuple[int, int]:
        return (self.m_tiles, self.c_blocks)


@functools.lru_cache(maxsize=1024)
def plan(C: int, M: int, channels_contiguous: bool, programs_wanted: int) -> Plan:
    """The launch plan of a shape, cached per shape.

    channels_contiguous (channels_last, or (N, C)): a tile spans up to 64 adjacent channels, so loads are
    coalesced along C; otherwise (NCHW) a tile is a few channels × a long run of M.
    """
    block_c = min(_next_pow2(C), 64) if channels_contiguous else min(_next_pow2(C), 4 if M >= 1024 else 16)
    # Wider channel blocks where C would need more than grid axis 1 takes (NCHW with C > 262,140).
    block_c = max(block_c, _next_pow2(math.ceil(C / GRID_AXIS1_MAX)))
    c_blocks = math.ceil(C / block_c)
    tile_m = min(_next_pow2(M), max(16, TILE // block_c))
    tiles = (c_blocks, tile_m, math.ceil(M / tile_m))
    if block_c * _next_pow2(M) <= ONE_PASS_MAX:
        return Plan(block_c, _next_pow2(M), True, 1, M, *tiles)
    block_m = max(16, TILE // block_c)
    # Enough (channel block, split) programs to fill the machine, each with at least a few tiles of work.
    splits = max(1, min(math.ceil(M / (4 * block_m)), math.ceil(programs_wanted / c_blocks)))
    m_per_split = math.ceil(math.ceil(M / splits) / block_m) * block_m
    return Plan(block_c, block_m, False, math.ceil(M / m_per_split), m_per_split, *tiles)


def programs_wanted(device: torch.device) -> int:
    """How many programs a split pass should launch: enough to fill the GPU, few under the interpreter.

    The interpreter runs each program as a Python loop whatever the machine, so its count ignores any GPU present.
    """
    if device.type != "cuda" or interpreting():
        return INTERPRETER_PROGRAMS
    return gpu_programs(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=16)
def gpu_programs(device_index: int) -> int:
    """Programs that fill the GPU: four per streaming multiprocessor."""
    return 4 * torch.cuda.get_device_properties(device_index).multi_processor_count
