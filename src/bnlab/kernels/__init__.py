"""Batch-norm backends behind one phase-level contract (:mod:`bnlab.kernels.base`) and the registry that picks one.

Registered here, in the order a newcomer should read them: ``reference`` (the paper's math in float64) and
``native`` (PyTorch's ATen kernels, torch ops for the rest: :mod:`.composed`); then the fast ones: ``cpu`` (bnlab's
C++/OpenMP kernels, built on first use) and ``triton`` (GPU kernels).
"""

from bnlab.kernels.base import Backend, GradSums, Moments, TrainBackward, TrainForward, memory_format_of
from bnlab.kernels.cpu import CpuBackend
from bnlab.kernels.native import NativeBackend
from bnlab.kernels.reference import ReferenceBackend
from bnlab.kernels.registry import (
    AUTO,
    ENV_VAR,
    BackendUnavailableError,
    available_backends,
    backend_names,
    check_backend_name,
    clear_cache,
    get_backend,
    register,
    resolve,
)
from bnlab.kernels.triton import TritonBackend

register(ReferenceBackend())
register(NativeBackend())
register(CpuBackend())
register(TritonBackend())

__all__ = [
    "AUTO",
    "ENV_VAR",
    "Backend",
    "BackendUnavailableError",
    "GradSums",
    "Moments",
    "TrainBackward",
    "TrainForward",
    "available_backends",
    "backend_names",
    "check_backend_name",
    "clear_cache",
    "get_backend",
    "memory_format_of",
    "register",
    "resolve",
]
