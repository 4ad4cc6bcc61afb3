"""``bnlab fold | recalibrate | doctor``: the happy paths, and every error path as one line, exit 2, no output."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import bnlab
from bnlab.cli import main

FACTORIES = textwrap.dedent('''
    import sys

    import torch

    def small_cnn():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))

    def wide_cnn():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8))

    def broken():
        raise RuntimeError("no GPU here")

    NOT_CALLABLE = 3

    def exits():
        sys.exit(3)

    class Asserting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            assert x.shape[1] == 3, "need 3 channels"
            return self.bn(x)

    class Indexed(torch.nn.Module):
        """Untraceable; on inputs above 100 it calls the members of its nn.Sequential one by one, which the
        nn.Sequential fallback cannot know: folded, it is wrong on those inputs only."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.f = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
            with torch.no_grad():
                self.f[1].running_mean.uniform_(-2, 2)
                self.f[1].running_var.uniform_(0.3, 3)

        def forward(self, x):
            if x.amax() > 100:  # control flow on data: torch.fx cannot trace it
                c = self.f[0](x)
                return self.f[2](self.f[1](c)) + c
            return self.f(x)
''')


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory with a factories module, trained-looking weights (.pt and .safetensors) and data (.npz)."""
    module = f"factories_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        model = __import__(module).small_cnn()
    finally:
        sys.path.remove(str(tmp_path))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 2)
        model[1].num_batches_tracked.fill_(10)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    save_file(model.state_dict(), str(tmp_path / "weights.safetensors"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 1, 6, 6, generator=gen) * 2 + 1
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=torch.randint(0, 3, (50,), generator=gen).numpy())
    (tmp_path / "module_name").write_text(module)
    yield tmp_path
    sys.modules.pop(module, None)


def _spec(workdir: Path, factory: str = "small_cnn") -> str:
    return f"{(workdir / 'module_name').read_text()}:{factory}"


def _factory(workdir: Path, name: str = "small_cnn") -> torch.nn.Module:
    module = (workdir / "module_name").read_text()
    sys.path.insert(0, str(workdir))
    try:
        return getattr(__import__(module), name)()
    finally:
        sys.path.remove(str(workdir))


def _data(workdir: Path) -> torch.Tensor:
    return torch.from_numpy(np.load(workdir / "data.npz")["x"])


def test_fold_writes_weights_of_the_folded_model(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fold", "--model", _spec(workdir), "--weights", "weights.pt", "--data", "data.npz",
                 "--out", "folded.safetensors"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "folded 1 batch-norm layer(s) (fx): 1 into 0" in out and "max |folded − original|" in out
    # The exact way back: the same fold of a freshly built model, whose keys and shapes were checked.
    recipe = "bnlab.tools.fold(small_cnn().eval(), example_inputs=x), x a batch shaped (50, 1, 6, 6)"
    assert recipe in out
    with safe_open("folded.safetensors", "pt") as f:
        stored = json.loads(f.metadata()["bnlab.fold"])
    assert stored == {"folded": [["1", "0"]], "method": "fx", "load": recipe}
    original = _factory(workdir)
    original.load_state_dict(torch.load("weights.pt", weights_only=True))
    folded = bnlab.tools.fold(_factory(workdir).eval())
    folded.load_state_dict(load_file("folded.safetensors"))
    x = _data(workdir)
    torch.testing.assert_close(folded(x), original.eval()(x), rtol=1e-5, atol=1e-5)


def test_recalibrate_from_safetensors(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["recalibrate", "--model", _spec(workdir), "--weights", "weights.safetensors", "--data",
                 "data.npz", "--batch-size", "16", "--out", "recalibrated.pt"])
    out = capsys.readouterr().out
    assert code == 0, out
    # 50 samples in batches of 16: the last batch holds 2.
    assert "recalibrated 1 batch-norm layer(s) from 4 batch(es), 50 sample(s), pooled average" in out
    expected = _factory(workdir)
    expected.load_state_dict(load_file("weights.safetensors"))
    bnlab.tools.recalibrate(expected.eval(), list(_data(workdir).split(16)))
    written = torch.load("recalibrated.pt", weights_only=True)
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(written[key], value, msg=key)


@pytest.mark.parametrize("as_json", [pytest.param(False, id="text"), pytest.param(True, id="json")])
def test_doctor_report(workdir: Path, capsys: pytest.CaptureFixture[str], as_json: bool) -> None:
    code = main(["doctor", "--model", _spec(workdir), "--weights", "weights.pt", "--data", "data.npz",
                 "--batch-size", "25", *(["--json"] if as_json else [])])
    out = capsys.readouterr().out
    assert code == 0, out
    if as_json:
        report = json.loads(out)
        assert report["findings"][0]["code"] == "stats_mismatch"  # random statistics do not fit the data
        assert [s["mode"] for s in report["effect"]["scores"]] == ["train", "eval", "recalibrated"]
    else:
        assert "ERROR: running statistics do not describe this data (1 layer)" in out
        assert "measured effect on 50 samples" in out


def _malicious_checkpoint(path: Path, marker: Path, raw: bool = False) -> None:
    """A checkpoint that creates ``marker`` when unpickled: written by torch.save, or (raw) by pickle.dump."""
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    content = {"0.weight": torch.zeros(1), "payload": Payload()}
    if raw:
        with open(path, "wb") as f:
            pickle.dump(content, f, protocol=4)
    else:
        torch.save(content, path)


def test_a_raw_pickle_is_refused_as_such(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = workdir / "pwned"
    _malicious_checkpoint(workdir / "raw.pt", marker, raw=True)
    code = main(["doctor", "--model", _spec(workdir), "--weights", "raw.pt", "--data", "data.npz"])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert err.count("\n") == 1 and err.startswith("bnlab: error: refusing to load 'raw.pt': it is a pickle"), err


def test_malicious_checkpoint_is_refused_and_nothing_runs(workdir: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    proof, marker = workdir / "proof", workdir / "pwned"
    _malicious_checkpoint(workdir / "proof.pt", proof)
    torch.load(workdir / "proof.pt", weights_only=False)  # the file really does carry code ...
    assert proof.exists()
    _malicious_checkpoint(workdir / "evil.pt", marker)
    code = main(["recalibrate", "--model", _spec(workdir), "--weights", "evil.pt", "--data", "data.npz",
                 "--out", "out.pt"])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists() and not Path("out.pt").exists()  # ... which must not run here
    assert err.count("\n") == 1 and err.startswith("bnlab: error: refusing to load 'evil.pt'")
    assert "GLOBAL" in err


ERRORS = [
    pytest.param(["--weights", "missing.pt"], "weights file 'missing.pt' does not exist", id="missing-weights"),
    pytest.param(["--weights", "wide.pt"], "shape mismatches (file vs model): 0.weight (8, 1, 3, 3) vs (4, 1, 3, 3)",
                 id="wrong-shapes"),
    pytest.param(["--weights", "partial.pt"], "missing keys: 1.weight", id="missing-keys"),
    pytest.param(["--weights", "extra.pt"], "unexpected keys: extra", id="unexpected-keys"),
    pytest.param(["--weights", "garbage.pt"], "cannot read 'garbage.pt' as a PyTorch checkpoint",
                 id="not-a-checkpoint"),
    pytest.param(["--weights", "garbage.safetensors"], "cannot read 'garbage.safetensors' as safetensors",
                 id="not-safetensors"),
    pytest.param(["--weights", "list.pt"], "holds a list, not a state_dict", id="not-a-state-dict"),
    pytest.param(["--model", "no_such_module_xyz:build"], "cannot import 'no_such_module_xyz'", id="factory-import"),
    pytest.param(["--model", "FACTORIES:nope"], "has no attribute 'nope'", id="factory-missing"),
    pytest.param(["--model", "FACTORIES:broken"], "broken() failed: RuntimeError: no GPU here", id="factory-raises"),
    pytest.param(["--model", "FACTORIES:NOT_CALLABLE"], "is not callable", id="factory-not-callable"),
    pytest.param(["--model", "just_a_module"], "--model must look like module:factory", id="model-spec"),
    pytest.param(["--data", "missing.npz"], "data file 'missing.npz' does not exist", id="missing-data"),
    pytest.param(["--data", "nox.npz"], "has arrays ['z'] but no inputs", id="npz-without-inputs"),
    pytest.param(["--data", "objects.npz"], "cannot read 'objects.npz' as an .npz of arrays", id="npz-with-objects"),
    pytest.param(["--data", "wrongshape.npz"], "recalibrate failed: RuntimeError", id="data-wrong-shape"),
    pytest.param(["--data", "no-such-dataset"], "no-such-dataset", id="unknown-dataset-name"),
    pytest.param(["--out", "nodir/out.pt"], "directory 'nodir' does not exist", id="out-directory-missing"),
]


@pytest.mark.parametrize(("change", "message"), ERRORS)
def test_errors_are_one_line_exit_2_and_leave_no_output(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                         change: list[str], message: str) -> None:
    torch.save(_factory(workdir, "wide_cnn").state_dict(), "wide.pt")
    state = torch.load("weights.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "1.weight"}, "partial.pt")
    torch.save({**state, "extra": torch.zeros(1)}, "extra.pt")
    torch.save([torch.zeros(1)], "list.pt")
    Path("garbage.pt").write_bytes(b"not a checkpoint")
    Path("garbage.safetensors").write_bytes(b"\x00" * 16)
    np.savez("nox.npz", z=np.zeros(3))
    np.savez("objects.npz", x=np.array([{"a": 1}], dtype=object))
    np.savez("wrongshape.npz", x=np.zeros((10, 3, 6, 6), dtype=np.float32))
    Path("out.pt").write_bytes(b"previous content")
    args = {"--model": _spec(workdir), "--weights": "weights.pt", "--data": "data.npz", "--out": "out.pt"}
    for option, value in zip(change[::2], change[1::2], strict=True):
        args[option] = value.replace("FACTORIES", (workdir / "module_name").read_text())
    argv = ["recalibrate"] + [item for pair in args.items() for item in pair]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and captured.err.startswith("bnlab: error: "), captured.err
    assert message in captured.err
    assert captured.out == ""
    assert Path("out.pt").read_bytes() == b"previous content"  # untouched: writes go through a rename
    assert not list(workdir.glob(".out.pt.*"))  # and no temporary file is left behind


def test_console_script_in_a_fresh_process(workdir: Path) -> None:
    marker = workdir / "pwned"
    _malicious_checkpoint(workdir / "evil.pt", marker)
    entry = "import sys; from bnlab.cli import main; sys.exit(main())"  # what the console script runs
    result = subprocess.run([sys.executable, "-c", entry, "doctor", "--model", _spec(workdir), "--weights",
                             "evil.pt", "--data", "data.npz"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and not marker.exists()
    assert result.stderr.count("\n") == 1 and "refusing to load" in result.stderr


def _fake_data_module(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """bnlab.data's interface (COMMON.md: load_dataset(name, *, data_dir, seed) -> Dataset), with a fake behind it.

    The CLI's named-data path is one call to load_dataset; this checks the CLI's side of that contract (which
    split, which errors) whether or not the real module is installed.
    """
    calls: list[tuple[str, object]] = []

    class Dataset:
        def __init__(self) -> None:
            gen = torch.Generator().manual_seed(2)
            self.name, self.num_classes = "synthetic", 3
            self.x_train, self.x_test = torch.rand(40, 1, 6, 6, generator=gen), torch.rand(20, 1, 6, 6, generator=gen)
            self.y_train, self.y_test = torch.randint(0, 3, (40,), generator=gen), torch.randint(0, 3, (20,),
                                                                                                 generator=gen)

    def load_dataset(name: str, *, data_dir: object = None, seed: int = 0) -> Dataset:
        calls.append((name, data_dir))
        if name == "fashion-mnist":
            raise FileNotFoundError("Fashion-MNIST not found in /usr/share/datasets/fashion-mnist;\ninstall it with "
                                    "`apt-get install dataset-fashion-mnist` or pass --data-dir")
        if name != "synthetic":
            raise ValueError(f"unknown dataset {name!r}; choose one of mnist-5k, fashion-mnist, digits, synthetic")
        return Dataset()

    import types

    module = types.ModuleType("bnlab.data")
    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bnlab.data", module)
    return calls


def test_named_datasets_through_bnlab_data(workdir: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_data_module(monkeypatch)
    assert main(["recalibrate", "--model", _spec(workdir), "--data", "synthetic", "--data-dir", "/data",
                 "--out", "recal.pt"]) == 0
    assert "from 1 batch(es), 40 sample(s)" in capsys.readouterr().out  # recalibrate reads the training split
    assert main(["doctor", "--model", _spec(workdir), "--data", "synthetic", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 20  # the doctor reads the test split
    assert calls == [("synthetic", "/data"), ("synthetic", None)]
    for name, message in (("fashion-mnist", "apt-get install dataset-fashion-mnist"), ("nope", "choose one of")):
        assert main(["doctor", "--model", _spec(workdir), "--data", name]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured
    assert captured.err.count("\n") == 1 and captured.err.startswith("bnlab: error: "), captured.err
    return captured.err


@pytest.mark.parametrize(("spike", "message"), [
    # The fold checks itself on the first batch (the example inputs) ...
    pytest.param(0, "fold failed: ValueError: folding changed the model's outputs", id="first-batch"),
    # ... and the command on every batch, before writing anything.
    pytest.param(40, "the folded model's outputs differ from the original's", id="later-batch"),
])
def test_fold_writes_nothing_it_measured_as_wrong(workdir: Path, capsys: pytest.CaptureFixture[str], spike: int,
                                                  message: str) -> None:
    x = _data(workdir).clone()
    x[spike, 0, 0, 0] = 1000.0
    np.savez("spike.npz", x=x.numpy())
    code = main(["fold", "--model", _spec(workdir, "Indexed"), "--data", "spike.npz", "--batch-size", "25",
                 "--out", "folded.pt"])
    err = _one_line_error(capsys, code)
    assert message in err and not Path("folded.pt").exists()


def test_fold_refuses_weights_that_a_fresh_model_would_not_take(workdir: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    state = torch.load("weights.pt", weights_only=True)
    state["1.running_var"][0] = float("nan")  # this batch norm stays unfolded; in a fresh model it folds
    torch.save(state, "nan.pt")
    code = main(["fold", "--model", _spec(workdir), "--weights", "nan.pt", "--out", "folded.pt"])
    err = _one_line_error(capsys, code)
    assert "would not load into bnlab.tools.fold(small_cnn().eval())" in err and "not finite" in err
    assert not Path("folded.pt").exists()


def test_an_unwritable_out_is_one_line_before_any_work(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a read-only directory answers (not to root)
    code = main(["recalibrate", "--model", _spec(workdir), "--data", "data.npz", "--out", "out.pt"])
    assert "cannot write 'out.pt': directory '.' is not writable" in _one_line_error(capsys, code)


@pytest.mark.parametrize(("argv", "message"), [
    pytest.param(["recalibrate", "--model", "FACTORIES:Asserting", "--out", "o.pt"],
                 "recalibrate failed: AssertionError: need 3 channels", id="recalibrate-assert"),
    pytest.param(["doctor", "--model", "FACTORIES:Asserting"], "doctor failed: AssertionError: need 3 channels",
                 id="doctor-assert"),
    pytest.param(["fold", "--model", "FACTORIES:Asserting", "--out", "o.pt"],
                 "fold failed: AssertionError: need 3 channels", id="fold-assert"),
    pytest.param(["doctor", "--model", "FACTORIES:exits"], "exits() failed: it called sys.exit(3)",
                 id="factory-exits"),
    pytest.param(["doctor", "--model", "exits_on_import:build"], "cannot import 'exits_on_import'", id="import-exits"),
])
def test_misbehaving_user_code_is_one_line(workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                           message: str) -> None:
    Path("exits_on_import.py").write_text("import sys\nsys.exit(1)\n")
    module = (workdir / "module_name").read_text()
    code = main([a.replace("FACTORIES", module) for a in argv] + ["--data", "data.npz"])
    err = _one_line_error(capsys, code)
    assert message in err and not Path("o.pt").exists()
