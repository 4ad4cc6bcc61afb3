"""``bnlab fold --report`` and ``bnlab doctor --html``: the per-layer fold table and the doctor's page."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.cli import main

FACTORIES = textwrap.dedent('''
    import torch

    class Checked(torch.nn.Module):
        """Checks its input in Python (torch.fx cannot trace it; torch.export can); a residual keeps one BN."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv1, self.bn1 = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4)
            self.conv2, self.bn2 = torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4)
            with torch.no_grad():
                for bn in (self.bn1, self.bn2):
                    bn.running_mean.uniform_(-1, 1)
                    bn.running_var.uniform_(0.5, 2)

        def forward(self, x):
            if x.shape[1] != 1:
                raise ValueError("one channel")
            c = self.conv2(torch.relu(self.bn1(self.conv1(x))))
            return (self.bn2(c) + c).mean((2, 3))

    def no_batch_norm():
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
''')


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    module = f"fold_doctor_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 6, 6, generator=gen) * 2 + 1
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=torch.randint(0, 3, (40,), generator=gen).numpy())
    (tmp_path / "module_name").write_text(module)
    yield tmp_path
    sys.modules.pop(module, None)


def _spec(workdir: Path, factory: str) -> str:
    return f"{(workdir / 'module_name').read_text()}:{factory}"


def test_fold_report_prints_one_row_per_batch_norm(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fold", "--model", _spec(workdir, "Checked"), "--data", "data.npz", "--batch-size", "20",
                 "--out", "folded.pt", "--report"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("fold: 1 of 2 batch-norm layer(s) folded, found with torch.export")
    assert lines[2].split() == ["bn1", "folded", "into", "conv1", "(the", "layer", "before", "it)"]
    assert lines[3].split()[:2] == ["bn2", "left"] and "the output of 'conv2' is also used elsewhere" in lines[3]
    assert "bnlab.tools.fold(Checked().eval(), example_inputs=x, method='export')" in out
    assert Path("folded.pt").is_file()


def test_doctor_html_writes_the_page_and_prints_the_text(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", "--model", _spec(workdir, "Checked"), "--data", "data.npz", "--batch-size", "20",
                 "--html", "doctor.html"])
    out = capsys.readouterr().out
    assert code == 0, out
    page = Path("doctor.html").read_text(encoding="utf-8")
    summary = out.splitlines()[1]
    assert summary.startswith("1 problem(s): running statistics do not describe this data")
    assert summary.replace("'", "&#x27;") in page and 'id="gap-chart"' in page and 'id="effect-chart"' in page
    assert out.rstrip().endswith("wrote doctor.html")
    # With --json the standard output stays one JSON document; the page is written all the same.
    Path("doctor.html").unlink()
    assert main(["doctor", "--model", _spec(workdir, "Checked"), "--data", "data.npz", "--json", "--html",
                 "doctor.html"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"].startswith("1 problem(s)") and Path("doctor.html").is_file()


@pytest.mark.parametrize("target", [pytest.param("folder", id="a-directory"),
                                    pytest.param("missing/doctor.html", id="no-such-directory")])
def test_doctor_html_that_cannot_be_written_is_one_line_before_any_work(
        workdir: Path, capsys: pytest.CaptureFixture[str], target: str) -> None:
    Path("folder").mkdir()
    code = main(["doctor", "--model", _spec(workdir, "Checked"), "--data", "data.npz", "--html", target])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and captured.err.count("\n") == 1, captured
    assert captured.err.startswith("bnlab: error: ") and target in captured.err
    assert sorted(p.name for p in Path(".").iterdir() if p.name != "__pycache__") == sorted(
        ["folder", "data.npz", "module_name", f"{(workdir / 'module_name').read_text()}.py"])


def test_doctor_on_a_model_without_batch_norm(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", "--model", _spec(workdir, "no_batch_norm"), "--data", "data.npz"])
    out = capsys.readouterr().out
    assert code == 0 and "the model has no batch-norm layer: there is nothing for the doctor to check" in out
    assert "(40 samples)" in out and "healthy" not in out
