"""The ``cpu`` backend: bnlab's C++/OpenMP kernels (``bnlab_cpu.cpp``), built on first use (:mod:`.build`) and
called through ctypes (:mod:`.backend`)."""

from bnlab.kernels.cpu.backend import CpuBackend

__all__ = ["CpuBackend"]
