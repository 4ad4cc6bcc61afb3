"""What ``bnlab fold``, ``bnlab recalibrate`` and ``bnlab doctor`` do (their options: :mod:`bnlab.cli.tools`).

Imported only when one of them runs, so that ``bnlab --help`` starts without importing torch (4.5 s saved).
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from bnlab.cli.checkpoint import (
    CheckpointError,
    build_model,
    check_output_path,
    describe_error,
    load_state_dict,
    load_weights,
    save_state_dict,
)
from bnlab.cli.errors import CLIError
from bnlab.tools.fold.check import discrepancy, outputs

if TYPE_CHECKING:
    from bnlab.tools.fold import Folding

INPUT_KEYS = ("x", "inputs", "images")
LABEL_KEYS = ("y", "labels", "targets")


# ----------------------------------------------------------------------------------------------- inputs

def _model(args: argparse.Namespace) -> nn.Module:
    try:
        model = build_model(args.model)
        if args.weights:
            load_weights(model, load_state_dict(args.weights), f"weights {args.weights!r}")
    except CheckpointError as err:
        raise CLIError(str(err)) from None
    return model.eval()


def load_arrays(spec: str, *, split: str, data_dir: str | None) -> tuple[Tensor, Tensor | None]:
    """Inputs (float32) and labels (int64 or float, or None) from an .npz file or a named dataset."""
    if spec.endswith(".npz"):
        return _load_npz(Path(spec))
    from bnlab.data import load_dataset

    try:
        dataset = load_dataset(spec, data_dir=data_dir)
    except (ValueError, FileNotFoundError) as err:
        raise CLIError(" ".join(str(err).split())) from None
    if split == "train":
        return dataset.x_train, dataset.y_train
    return dataset.x_test, dataset.y_test


def _load_npz(path: Path) -> tuple[Tensor, Tensor | None]:
    if not path.is_file():
        raise CLIError(f"data file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise CLIError(f"cannot read {str(path)!r} as an .npz of arrays: {' '.join(str(err).split())}") from None
    x_key = next((k for k in INPUT_KEYS if k in arrays), None)
    if x_key is None:
        raise CLIError(f"{str(path)!r} has arrays {sorted(arrays)} but no inputs; name the input array one of "
                       f"{', '.join(INPUT_KEYS)}")
    x = arrays[x_key]
    if x.dtype.kind not in "fiub" or x.ndim < 2 or x.shape[0] == 0:
        raise CLIError(f"inputs {x_key!r} in {str(path)!r} must be a numeric array of shape (N, ...) with N ≥ 1, "
                       f"got {x.dtype} of shape {x.shape}")
    inputs = torch.from_numpy(_as_float32(x, f"inputs {x_key!r} in {str(path)!r}"))
    y_key = next((k for k in LABEL_KEYS if k in arrays), None)
    if y_key is None:
        return inputs, None
    y = arrays[y_key]
    if y.shape[:1] != x.shape[:1]:
        raise CLIError(f"labels {y_key!r} in {str(path)!r} have {y.shape[0] if y.ndim else 0} entries for "
                       f"{x.shape[0]} inputs")
    labels = torch.from_numpy(np.ascontiguousarray(y.astype(np.int64) if y.dtype.kind in "iub" else y))
    return inputs, labels


def _as_float32(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as contiguous float32, refusing finite values that the cast would make infinite (1e300 in float64)."""
    with np.errstate(over="ignore"):
        cast = np.ascontiguousarray(x, dtype=np.float32)
    if x.dtype.kind == "f" and x.dtype.itemsize > 4:
        overflow = np.isinf(cast) & np.isfinite(x)
        if overflow.any():
            where = tuple(int(i) for i in np.argwhere(overflow)[0])
            raise CLIError(f"{what} hold {int(overflow.sum())} value(s) beyond float32's range (±3.4e38), which "
                           f"the models run in: {float(x[where]):.3g} at index {where} (sample {where[0]}) would "
                           f"become infinite; rescale the data")
    return cast


def _batches(args: argparse.Namespace) -> tuple[list[Tensor], list[Tensor] | None]:
    x, y = load_arrays(args.data, split=args.split, data_dir=args.data_dir)
    xs = list(x.split(args.batch_size))
    ys = None if y is None else list(y.split(args.batch_size))
    # A last batch of one sample cannot give batch statistics; it is dropped rather than failing the command.
    if len(xs) > 1 and xs[-1].shape[0] < 2:
        xs = xs[:-1]
        ys = None if ys is None else ys[:-1]
    if args.num_batches is not None:
        xs = xs[:args.num_batches]
        ys = None if ys is None else ys[:args.num_batches]
    return xs, ys


def _run(what: str, call: Any) -> Any:
    """Run a tool on the user's model and data; whatever their code raises (a shape error, an assert in a
    forward, sys.exit) becomes a one-line error naming its type."""
    try:
        return call()
    except (Exception, SystemExit) as err:
        raise CLIError(f"{what} failed: {describe_error(err)}") from None


def _inputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The files a command reads, which its --out must not replace."""
    data = args.data if args.data and args.data.endswith(".npz") else None
    return [("--weights", args.weights), ("--data", data)]


def _save(state_dict: dict[str, Tensor], args: argparse.Namespace, metadata: dict[str, str] | None = None) -> None:
    try:
        save_state_dict(state_dict, args.out, metadata, inputs=_inputs(args))
    except CheckpointError as err:
        raise CLIError(str(err)) from None


def _checked_out(args: argparse.Namespace) -> None:
    try:
        check_output_path(args.out, inputs=_inputs(args))
    except CheckpointError as err:
        raise CLIError(str(err)) from None


# ----------------------------------------------------------------------------------------------- commands

def fold_command(args: argparse.Namespace) -> int:
    from bnlab.tools.fold import fold_with_report

    _checked_out(args)
    model = _model(args)
    batches = _batches(args)[0] if args.data else []
    example = batches[0] if batches else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _run("fold", lambda: fold_with_report(model, example_inputs=example, method=args.method))
    if args.report:
        report = [result.report()]
    else:
        report = [f"folded {len(result.folded)} batch-norm layer(s) ({result.method}): "
                  + (", ".join(f"{bn} into {layer}" for bn, layer in result.folded) or "none")]
        report += [f"left {bn}: {reason}" for bn, reason in result.skipped]
    # On the command line, the example inputs fold_with_report asks for are --data.
    report += [f"warning: {w.message}".replace("pass example_inputs", "pass --data") for w in caught]
    if batches:
        error, allowed, worst = _run("checking the folded model", lambda: _worst(model, result.model, batches))
        if not error <= allowed:
            raise CLIError(f"the folded model's outputs differ from the original's by up to {error:.3g} on batch "
                           f"{worst + 1} of --data, more than float rounding ({allowed:.2g}); the model's forward "
                           f"uses its layers in a way the fold cannot see: nothing written")
        report.append(f"max |folded − original| over {sum(b.shape[0] for b in batches)} inputs: {error:.3g}")
    recipe = _load_recipe(args, result, example)
    stored = {"folded": [list(pair) for pair in result.folded], "method": result.method, "load": recipe}
    _save(result.model.state_dict(), args, {"bnlab.fold": json.dumps(stored)})
    print("\n".join(report))
    print(f"wrote {args.out}; it loads into {recipe}")
    return 0


def _worst(original: nn.Module, folded: nn.Module, batches: list[Tensor]) -> tuple[float, float, int]:
    """(error, allowed, batch index) of the batch where folded and original outputs differ most, relative to
    what float rounding allows there (bnlab.tools.fold.check.discrepancy)."""
    worst = (0.0, float("inf"), 0)
    for index, x in enumerate(batches):
        error, allowed = discrepancy(outputs(original, (x,)), outputs(folded, (x,)))
        if not error <= allowed or error * worst[1] > worst[0] * allowed:
            worst = (error, allowed, index)
            if not error <= allowed:
                break
    return worst


def _load_recipe(args: argparse.Namespace, result: Folding, example: Tensor | None) -> str:
    """How to build a model that the folded weights load into: the same fold of a freshly built model.

    What folds depends on the weights (a batch norm with non-finite statistics stays) and on the example
    inputs, so the fresh model is folded here and compared, and a mismatch is refused rather than written.
    """
    from bnlab.tools.fold import fold_with_report

    factory, method = args.model.partition(":")[2], result.method
    options = ("" if example is None else ", example_inputs=x") + ("" if method == "fx" else f", method={method!r}")
    recipe = f"bnlab.tools.fold({factory}().eval(){options})"
    if example is not None:
        recipe += f", x a batch shaped {tuple(example.shape)}"
    try:
        fresh = build_model(args.model).eval()
    except CheckpointError as err:
        raise CLIError(str(err)) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said once already, for the model itself
        again = _run("folding a freshly built model", lambda: fold_with_report(fresh, example_inputs=example,
                                                                                 method=method))
    def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    if again.folded != result.folded or shapes(again.model) != shapes(result.model):
        why = {**dict(again.skipped), **dict(result.skipped)}  # each side's reason for a layer it left
        differ = [f"{bn!r} ({why.get(bn, 'folded differently')})"
                  for bn in sorted({bn for bn, _ in set(again.folded) ^ set(result.folded)})]
        raise CLIError(f"the folded weights would not load into bnlab.tools.fold({factory}().eval()), because what "
                       f"folds depends on these weights: {', '.join(differ) or 'the state_dict keys differ'}; fix "
                       f"the weights (bnlab doctor, bnlab recalibrate) or fold in Python after loading them; "
                       f"nothing written")
    return recipe


def recalibrate_command(args: argparse.Namespace) -> int:
    from bnlab.tools.recalibrate import recalibrate

    _checked_out(args)
    model = _model(args)
    batches, _ = _batches(args)
    report = _run("recalibrate", lambda: recalibrate(model, batches, mode=args.mode))
    _save(model.state_dict(), args)
    print(report)
    print(f"wrote {args.out}")
    return 0


def doctor_command(args: argparse.Namespace) -> int:
    from bnlab.tools.diagnosis import doctor

    if args.html is not None:
        _checked_page(args.html)
    model = _model(args)
    batches, labels = _batches(args)
    report = _run("doctor", lambda: doctor(model, batches, labels=labels))
    if args.html is not None:
        _write_page(report.to_html(), args.html)
    print(report.to_json() if args.json else report.to_text())
    if args.html is not None and not args.json:
        print(f"wrote {args.html}")
    return 0


def _checked_page(path: str) -> None:
    """Refuse, before any work, an --html path that is not a new or regular file in an existing directory."""
    out = Path(path)
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise CLIError(f"--html {path!r} exists and is not a regular file; give the name of a new .html file")
    if not out.parent.is_dir():
        raise CLIError(f"cannot write {path!r}: directory {str(out.parent)!r} does not exist")


def _write_page(page: str, path: str) -> None:
    """Write through a temporary file in the same directory and a rename: a failure leaves nothing behind."""
    out = Path(path)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(page, encoding="utf-8")
        os.replace(temporary, out)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise CLIError(f"cannot write {path!r}: {err.strerror or err}") from None
