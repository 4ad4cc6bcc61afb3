"""Weights and data that would load into wrong numbers, or fail with a cryptic message: one line each, exit 2.

- ``--weights`` whose tensors are of another kind than the model's (complex, integer): refused, naming the key.
- ``--weights`` that is not a PyTorch checkpoint, or is truncated: said in those words.
- ``--data`` with a NaN, an infinity, or a float64 value beyond float32: refused, naming where, nothing written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from cli.conftest import run_installed as main  # the installed command, in its own process

if TYPE_CHECKING:
    from cli.conftest import ToolDir


def _error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured
    assert captured.err.count("\n") == 1 and captured.err.startswith("bnlab: error: "), captured.err
    return captured.err


def _recalibrate(tool_dir: ToolDir, weights: str = "weights.pt", data: str = "data.npz") -> int:
    return main(["recalibrate", "--model", tool_dir.spec(), "--weights", weights, "--data", data,
                 "--batch-size", "10", "--out", "out.pt"])


def _changed(key: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
    def write() -> None:
        state = torch.load("weights.pt", weights_only=True)
        state[key] = change(state[key])
        torch.save(state, "changed.pt")
    return write


def _cut(fraction: float, legacy: bool = False) -> Callable[[], None]:
    def write() -> None:
        state = torch.load("weights.pt", weights_only=True)
        torch.save(state, "full.pt", _use_new_zipfile_serialization=not legacy)
        data = Path("full.pt").read_bytes()
        Path("changed.pt").write_bytes(data[:int(len(data) * fraction)])
    return write


def _text() -> None:
    Path("changed.pt").write_text("epoch 1: loss 0.31, accuracy 0.92\n")


def _empty() -> None:
    Path("changed.pt").write_bytes(b"")


WEIGHTS = [
    pytest.param(_changed("0.weight", lambda t: t * (1 + 1j)),
                 "'0.weight' is complex64 where the model has float32 (loading would drop the imaginary part)",
                 id="complex-weight"),
    pytest.param(_changed("1.running_var", lambda t: (t * 10).to(torch.int64)),
                 "'1.running_var' is int64 where the model has float32 (the model holds floating values there",
                 id="integer-where-float"),
    pytest.param(_changed("1.num_batches_tracked", lambda t: t.double() + 0.5),
                 "'1.num_batches_tracked' is float64 where the model has int64 (loading would truncate",
                 id="float-where-integer"),
    pytest.param(_text, "cannot read 'changed.pt' as a PyTorch checkpoint: it is not one: torch.save writes a zip "
                        "archive (a pickle before torch 1.6), and this file starts with text 'epoch 1: loss 0.31",
                 id="text-file"),
    pytest.param(_empty, "cannot read 'changed.pt' as a PyTorch checkpoint: the file is empty", id="empty-file"),
    pytest.param(_cut(0.5), "cannot read 'changed.pt' as a PyTorch checkpoint: it is truncated: it starts as "
                            "torch.save's zip archive but the archive's end is missing", id="truncated"),
    pytest.param(_cut(0.99), "it is truncated: it starts as torch.save's zip archive", id="truncated-at-the-end"),
    pytest.param(_cut(0.6, legacy=True), "it is truncated (the pickle of the old format ends early)",
                 id="truncated-old-format"),
]


@pytest.mark.parametrize(("write", "message"), WEIGHTS)
def test_weights_that_would_load_wrong_or_cannot_load_are_one_line(tool_dir: ToolDir,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  write: Callable[[], None], message: str) -> None:
    write()
    err = _error(capsys, _recalibrate(tool_dir, weights="changed.pt"))
    assert message in err and not Path("out.pt").exists()


def test_weights_in_half_precision_still_load(tool_dir: ToolDir, capsys: pytest.CaptureFixture[str]) -> None:
    """Within a kind only the precision changes, as with any float16 checkpoint: that is not refused."""
    _changed("0.weight", lambda t: t.half())()
    assert _recalibrate(tool_dir, weights="changed.pt") == 0, capsys.readouterr().err


@pytest.mark.parametrize("value", [pytest.param(float("nan"), id="nan"), pytest.param(float("inf"), id="inf")])
def test_non_finite_data_is_refused_naming_the_batch_and_layer(tool_dir: ToolDir, capsys: pytest.CaptureFixture[str],
                                                               value: float) -> None:
    x = np.load("data.npz")["x"]
    x[23, 0, 2, 2] = value
    np.savez("bad.npz", x=x)
    Path("out.pt").write_bytes(b"previous result")
    err = _error(capsys, _recalibrate(tool_dir, data="bad.npz"))
    assert ("NonFiniteBatchError: batch 2 (samples 20 to 29; both counted from 0) gives non-finite statistics at "
            "layer '1'") in err
    assert Path("out.pt").read_bytes() == b"previous result"


def test_float64_data_beyond_float32_is_refused_where_it_is(tool_dir: ToolDir,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    x = np.load("data.npz")["x"].astype(np.float64)
    x[17, 0, 1, 3] = 1e300
    np.savez("big.npz", x=x)
    err = _error(capsys, _recalibrate(tool_dir, data="big.npz"))
    assert ("inputs 'x' in 'big.npz' hold 1 value(s) beyond float32's range (±3.4e38), which the models run in: "
            "1e+300 at index (17, 0, 1, 3) (sample 17) would become infinite") in err
    assert not Path("out.pt").exists()
