"""``bnlab list|run|report``: the success path, and every error a user can make is one line with exit code 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bnlab.cli import main

SMOKE = ["--set", "dataset=synthetic", "--set", "steps=20", "--set", "eval_every=10", "--set", "hidden=8"]


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bnlab: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    assert capsys.readouterr().out.startswith("fig1 ")


@pytest.mark.parametrize("argv", [["--help"], ["list", "--help"], ["run", "--help"], ["report", "--help"]])
def test_help_everywhere(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0 and "usage: bnlab" in capsys.readouterr().out


ERRORS = [
    pytest.param(["run", "fig9"], "unknown experiment 'fig9'; choose one of fig1", id="unknown-experiment"),
    pytest.param(["run", "fig1", "--set", "lrate=1"], "unknown setting 'lrate'", id="unknown-key"),
    pytest.param(["run", "fig1", "--set", "steps=many"], "steps takes an integer", id="bad-value"),
    pytest.param(["run", "fig1", "--set", "steps"], "--set expects key=value", id="no-equals"),
    pytest.param(["run", "fig1", "--set", "batch_size=1"], "batch_size must be at least 2", id="rejected-value"),
    pytest.param(["run", "fig1", *SMOKE, "--seeds", "2", "2"], "seeds must differ", id="repeated-seed"),
    pytest.param(["run", "fig1", *SMOKE, "--threads", "0"], "threads must be at least 1", id="zero-threads"),
]


@pytest.mark.parametrize(("argv", "message"), ERRORS)
def test_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                             tmp_path: Path) -> None:
    assert message in one_line_error(capsys, [*argv, "--out", str(tmp_path)])


def test_missing_data_names_the_install_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = one_line_error(capsys, ["run", "fig1", "--set", "dataset=fashion-mnist", "--data-dir", str(tmp_path),
                                  "--out", str(tmp_path / "runs")])
    assert "apt-get install dataset-fashion-mnist" in err


def test_cuda_without_a_gpu(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    assert "sees no CUDA GPU" in one_line_error(capsys, ["run", "fig1", *SMOKE, "--device", "cuda", "--out",
                                                         str(tmp_path)])


def test_argparse_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "fig1", "--device", "tpu"])
    assert info.value.code == 2


@pytest.mark.parametrize("what", ["missing", "empty"])
def test_report_of_a_folder_that_is_not_a_run(what: str, capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    target = tmp_path / "nothing"
    if what == "empty":
        target.mkdir()
    one_line_error(capsys, ["report", str(target)])


def test_run_then_report(capsys: pytest.CaptureFixture[str], tmp_path: Path, fig1_run: Path) -> None:
    assert main(["run", "fig1", "--quick", *SMOKE, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = Path(out.split("report: ")[1].split()[0])
    assert report.is_file() and "Quick run" in report.read_text()
    copy = tmp_path / "fig1" / "copied"
    shutil.copytree(fig1_run, copy)
    assert main(["report", str(copy)]) == 0
    assert "copied" in (tmp_path / "index.html").read_text()


def test_report_outside_a_runs_folder_writes_no_index(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                      fig1_run: Path) -> None:
    copy = tmp_path / "elsewhere" / "my-run"
    shutil.copytree(fig1_run, copy)
    assert main(["report", str(copy)]) == 0
    assert "all runs" not in capsys.readouterr().out
    assert not (tmp_path / "index.html").exists() and not (copy.parent / "index.html").exists()
