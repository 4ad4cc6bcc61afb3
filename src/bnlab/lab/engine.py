"""Where and how the lab trains: the device, seeding, and (re-exported from :mod:`bnlab.lab.train`) the loop.

``engine.train`` is the one-model classifier loop the benchmark ``python -m benchmarks.engine_overhead`` times
against a hand-written one; experiments with several models or probes use :func:`bnlab.lab.train.run_steps`.
"""

from __future__ import annotations

import os

import torch

from bnlab.lab.train import OPTIMIZERS, NonFiniteDataError, TrainResult, batches, make_optimizer, train

__all__ = ["OPTIMIZERS", "NonFiniteDataError", "TrainResult", "batches", "make_optimizer", "resolve_device",
           "seed_everything", "train"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when there is a GPU, else CPU), ``"cpu"`` or ``"cuda"``; ValueError if it cannot run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but this PyTorch sees no CUDA GPU; use --device cpu or auto")
        return torch.device("cuda")
    raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed torch's generators (CPU and every GPU) and switch deterministic algorithms on or off."""
    if deterministic:
        # cuBLAS is deterministic only with a fixed workspace; it must be set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
