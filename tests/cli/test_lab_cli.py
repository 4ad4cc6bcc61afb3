"""``bnlab list|run|report``: the success path, and every error a user can make is one line with exit code 2."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bnlab.cli import main
from bnlab.kernels import get_backend, registry
from bnlab.lab import registry as experiments

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


def test_help_imports_neither_torch_nor_numpy() -> None:
    # `bnlab --help` took 4.5 s when the model tools' module imported torch to build its options.
    code = ("import sys\nfrom bnlab.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


ERRORS = [
    pytest.param(["run", "fig9"], "unknown experiment 'fig9'; choose one of fig1,", id="unknown-experiment"),
    pytest.param(["run", "fig1", "--set", "lrate=1"], "unknown setting 'lrate'", id="unknown-key"),
    pytest.param(["run", "fig1", "--set", "steps=many"], "steps takes an integer", id="bad-value"),
    pytest.param(["run", "fig1", "--set", "steps"], "--set expects key=value", id="no-equals"),
    pytest.param(["run", "fig1", "--set", "batch_size=1"], "batch_size must be at least 2", id="rejected-value"),
    pytest.param(["run", "fig1", *SMOKE, "--seeds", "2", "2"], "seeds must differ", id="repeated-seed"),
    pytest.param(["run", "fig1", *SMOKE, "--threads", "0"], "--threads must be between 1 and", id="zero-threads"),
    pytest.param(["run", "fig1", *SMOKE, "--set", "lr=inf"], "lr takes a finite number", id="infinite-lr"),
    pytest.param(["run", "fig1", "--set", "dataset=digits", "--data-dir", "/tmp"],
                 "--data-dir is used only by fashion-mnist", id="data-dir-not-used"),
]


@pytest.mark.parametrize(("argv", "message"), ERRORS)
def test_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                             tmp_path: Path) -> None:
    assert message in one_line_error(capsys, [*argv, "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []  # a run that cannot start leaves no folder


def test_missing_data_names_the_install_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = one_line_error(capsys, ["run", "fig1", "--set", "dataset=fashion-mnist", "--data-dir", str(tmp_path),
                                  "--out", str(tmp_path / "runs")])
    assert "apt-get install dataset-fashion-mnist" in err
    assert not (tmp_path / "runs").exists()


def test_corrupt_data_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"\x00\x00\x08")
    err = one_line_error(capsys, ["run", "fig1", "--set", "dataset=fashion-mnist", "--data-dir", str(tmp_path),
                                  "--out", str(tmp_path / "runs")])
    assert "too short for an IDX header" in err and not (tmp_path / "runs").exists()


def test_backend_that_cannot_run_here(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Under pytest the Triton interpreter makes triton run on CPU; take that away, as on a plain CPU machine.
    monkeypatch.setattr(type(get_backend("triton")), "unavailable_reason", lambda self, device, dtype: "no GPU")
    monkeypatch.setattr(registry, "_RESOLVED", {})
    err = one_line_error(capsys, ["run", "fig1", *SMOKE, "--set", "backend=triton", "--out", str(tmp_path)])
    assert "batch-norm backend 'triton'" in err and "cannot run on cpu" in err and "no GPU" in err
    assert list(tmp_path.iterdir()) == []


def with_train(monkeypatch: pytest.MonkeyPatch, train: Any) -> None:
    """Register fig1 with another training function for this test."""
    monkeypatch.setitem(experiments.experiments(), "fig1",
                        dataclasses.replace(experiments.get_experiment("fig1"), train=train))


def test_a_bug_is_a_traceback_not_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def buggy(config: Any, ctx: Any) -> None:
        raise ValueError("a bug deep inside training")

    with_train(monkeypatch, buggy)
    with pytest.raises(ValueError, match="a bug deep inside training"):
        main(["run", "fig1", *SMOKE, "--out", str(tmp_path)])
    assert list(tmp_path.glob("fig1/*")) == []  # nothing was measured, so no run folder is kept


def test_ctrl_c_names_the_run_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = experiments.get_experiment("fig1").train

    def interrupted_in_seed_1(config: Any, ctx: Any) -> None:
        if ctx.seed == 1:
            log, written = ctx.log, []

            def log_then_stop(record: dict[str, Any]) -> None:
                log(record)
                written.append(record)
                if len(written) == 2:
                    raise KeyboardInterrupt
            ctx = dataclasses.replace(ctx, log=log_then_stop)
        real(config, ctx)

    with_train(monkeypatch, interrupted_in_seed_1)
    assert main(["run", "fig1", *SMOKE, "--seeds", "0", "1", "2", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    (run_dir,) = (tmp_path / "fig1").iterdir()
    assert f"bnlab report {run_dir}" in err and err.rstrip().endswith("bnlab: interrupted")
    assert run_dir.name in (tmp_path / "index.html").read_text()  # the index lists it at once
    assert main(["report", str(run_dir)]) == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert result["summary"]["seeds"] == [0]
    assert result["incomplete"] == ("seed 1: baseline stopped at step 10 of 20 (interrupted); bn never started; "
                                    "seed 2: never started")


def test_ctrl_c_before_any_measurement_keeps_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(config: Any, ctx: Any) -> None:
        raise KeyboardInterrupt

    with_train(monkeypatch, interrupted)
    assert main(["run", "fig1", *SMOKE, "--out", str(tmp_path)]) == 130
    assert "nothing was measured" in capsys.readouterr().err
    assert list(tmp_path.glob("fig1/*")) == []


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
    assert report.is_file() and "steps = 20 (full run: 50000), eval_every = 10 (full run: 500)" in report.read_text()
    meta = json.loads((report.parent / "config.json").read_text())
    assert meta["quick_settings"] == {"steps": 20, "eval_every": 10}  # what ran, not --quick's defaults
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


# Issue 14: every bad request is one line and exit code 2, checked before any work; the commands run as the
# console script does (a crash in torch or a hang would otherwise take the test process with it).
ENTRY = "import sys; from bnlab.cli import main; sys.exit(main())"


def bnlab_cli(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``bnlab ARGS`` in a fresh process with ``tmp_path`` as its working folder."""
    return subprocess.run([sys.executable, "-c", ENTRY, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, check=False)


def assert_one_line(done: subprocess.CompletedProcess[str], message: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("bnlab: error: ") and message in done.stderr


def test_threads_beyond_the_machine_is_one_line(tmp_path: Path) -> None:
    """`--threads 100000` crashed inside torch's thread pool (SIGSEGV); now it is refused before any work."""
    done = bnlab_cli(tmp_path, "run", "fig1", *SMOKE, "--threads", "100000")
    assert_one_line(done, f"--threads must be between 1 and {os.cpu_count()}")
    assert not (tmp_path / "runs").exists()


def test_out_a_dangling_symlink_is_one_line(tmp_path: Path) -> None:
    """The run-folder loop took "the link exists" for "that second is taken" and never returned."""
    (tmp_path / "runs").symlink_to(tmp_path / "gone")
    done = bnlab_cli(tmp_path, "run", "fig1", *SMOKE, "--out", "runs", timeout=60)
    assert_one_line(done, "is a symbolic link to")
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize("where", [pytest.param("file", id="a-file"), pytest.param("file/runs", id="inside-a-file")])
def test_out_a_file_is_one_line(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("not a folder")
    done = bnlab_cli(tmp_path, "run", "fig1", *SMOKE, "--out", where)
    assert_one_line(done, "not a folder")
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.parametrize(("argv", "message"), [
    pytest.param(["--seeds", str(2**64)], "a seed is an integer in 0..2^64 − 1", id="seed-beyond-64-bits"),
    pytest.param(["--seeds", "-1"], "a seed is an integer in 0..2^64 − 1", id="negative-seed"),
    pytest.param(["--set", "steps=100000000000", "--set", "eval_every=1"], "steps must be at most 100,000,000",
                 id="steps-beyond-the-bound"),
    pytest.param(["--set", "steps=10000000", "--set", "eval_every=1"], "10,000,000 evaluations; at most 20,000",
                 id="evaluations-beyond-the-bound"),
    pytest.param(["--set", "hidden=1000000000"], "hidden must be at most", id="huge-network"),
    pytest.param(["--set", "batch_size=100000"], "more than the 600 training images", id="batch-beyond-the-data"),
])
def test_sizes_beyond_reason_are_checked_before_any_work(tmp_path: Path, argv: list[str], message: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert message in one_line_error(capsys, ["run", "fig1", *SMOKE, *argv, "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_non_finite_training_data_is_one_line_naming_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A NaN in the data would poison batch norm's running statistics: the lab refuses it and says where it is."""
    from bnlab.data import load_dataset
    from bnlab.lab.experiments.fig1 import train as fig1_train

    def with_a_nan(name: str, **kwargs: Any) -> Any:
        data = load_dataset(name, **kwargs)
        data.x_train[3, 0, 5, 5] = float("nan")
        return data

    monkeypatch.setattr(fig1_train, "load_dataset", with_a_nan)
    err = one_line_error(capsys, ["run", "fig1", *SMOKE, "--out", str(tmp_path)])
    assert "the synthetic training images hold non-finite values: 1 of 600 examples, the first at index 3" in err
    assert list(tmp_path.iterdir()) == []


REPORT_DAMAGE = [
    pytest.param("env.json", "[]", "env.json must be a JSON object", id="env-a-list"),
    pytest.param("env.json", '{"git": "abc"}', "field 'git' must be an object", id="git-a-string"),
    pytest.param("metrics.jsonl", "[1, 2, 3]", "line 2: a record must be a JSON object, got list", id="record-a-list"),
    pytest.param("metrics.jsonl", '{"kind": "eval", "seed": 0, "model": "bn"}', "has no field 'step'",
                 id="step-missing"),
    pytest.param("metrics.jsonl", "STEP:\"ten\"", "field 'step' of a 'eval' record must be an integer",
                 id="step-not-an-integer"),
    pytest.param("metrics.jsonl", "STEP:1e400", "field 'step' of a 'eval' record must be an integer",
                 id="step-infinite"),
    pytest.param("metrics.jsonl", "STEP:99999999999999999999999", "field 'step' of a 'eval' record must be in 0..60",
                 id="step-huge"),
    pytest.param("config.json", '{"experiment": "fig1", "config": {}, "seeds": "0"}', "field 'seeds' must be",
                 id="seeds-a-string"),
    pytest.param("result.json", "ignored", "", id="stale-result-ignored"),
]


@pytest.mark.parametrize(("name", "content", "message"), REPORT_DAMAGE)
def test_report_of_files_of_the_wrong_shape_is_one_line(fig1_run: Path, tmp_path: Path, name: str, content: str,
                                                        message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Valid JSON of the wrong shape: one line naming the file and the field, never a traceback."""
    run = tmp_path / "fig1" / "run"
    shutil.copytree(fig1_run, run)
    path = run / name
    if name == "metrics.jsonl":
        lines = path.read_text().splitlines()
        if content.startswith("STEP:"):
            evals = [i for i, line in enumerate(lines) if '"kind": "eval"' in line]
            record = json.loads(lines[evals[1]])
            lines[evals[1]] = json.dumps(record).replace(f'"step": {record["step"]}', f'"step": {content[5:]}')
        else:
            lines.insert(1, content)
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text(content)
    if not message:  # result.json is rewritten from the metrics: whatever it held does not matter
        assert main(["report", str(run)]) == 0
        return
    err = one_line_error(capsys, ["report", str(run)])
    assert message in err and name in err


def test_resume_after_ctrl_c_finishes_the_run(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = experiments.get_experiment("fig1")
    calls: list[tuple[int, str]] = []

    def interrupted_in_seed_1(config: Any, ctx: Any) -> None:
        calls.append((ctx.seed, ctx.unit["model"]))
        if calls == [(0, "baseline"), (0, "bn"), (1, "baseline")]:
            raise KeyboardInterrupt
        real.train(config, ctx)

    with_train(monkeypatch, interrupted_in_seed_1)
    assert main(["run", "fig1", *SMOKE, "--seeds", "0", "1", "--out", str(tmp_path)]) == 130
    (run_dir,) = (tmp_path / "fig1").iterdir()
    assert f"bnlab resume {run_dir}" in capsys.readouterr().err
    assert main(["resume", str(run_dir)]) == 0
    assert calls[3:] == [(1, "baseline"), (1, "bn")]  # only the units not done
    result = json.loads((run_dir / "result.json").read_text())
    assert result["complete"] and result["summary"]["seeds"] == [0, 1]


@pytest.mark.parametrize("what", ["missing", "empty"])
def test_resume_of_a_folder_that_is_not_a_run(what: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "nothing"
    if what == "empty":
        target.mkdir()
    one_line_error(capsys, ["resume", str(target)])


def test_list_shows_every_experiment_with_its_threads(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in experiments.experiment_names():
        assert re.search(rf"^{name} .*\(\d+ threads?\)$", out, re.MULTILINE)
