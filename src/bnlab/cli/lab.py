"""The lab's subcommands: ``bnlab list``, ``bnlab run EXPERIMENT|all``, ``bnlab resume RUN_DIR``,
``bnlab report RUN_DIR``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from bnlab.cli.errors import CLIError
from bnlab.lab.rank_failures import in_nproc_run

__all__ = ["register"]

DEFAULT_RUNS = Path("runs")
ALL = "all"
MAX_NPROC = 256


def register(subparsers: Any) -> None:
    p_list = subparsers.add_parser("list", help="list the experiments, one line each",
                                   description="List the registered experiments with a one-line summary each.")
    p_list.set_defaults(func=_list)

    p_run = subparsers.add_parser(
        "run", help="run an experiment (or all of them) and write its report",
        description="Run an experiment; its files, figures and report.html go to OUT/EXPERIMENT/TIMESTAMP/ and "
                    "OUT/index.html lists all runs. `bnlab run all --quick` is the tour: every experiment's quick "
                    "version, then OUT/tour.html with each one's verdicts, time and report.",
    )
    p_run.add_argument("experiment", help=f"the experiment's name (see `bnlab list`), or {ALL!r}")
    p_run.add_argument("--quick", action="store_true",
                       help="the experiment's short version (the report says which settings changed)")
    p_run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="change a setting (repeatable; type-checked; a list is comma-separated: lrs=0.01,0.1)")
    p_run.add_argument("--grid", dest="grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="sweep a setting over values (repeatable: the product of the axes; a list-valued "
                            "setting's values are separated by /); resumable like any run")
    p_run.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED",
                       help="train once per seed; figures show mean and spread (default: 0)")
    p_run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where to train: auto uses a CUDA GPU when there is one (default: auto)")
    p_run.add_argument("--out", type=Path, default=DEFAULT_RUNS, metavar="DIR",
                       help=f"the runs folder (default: {DEFAULT_RUNS})")
    p_run.add_argument("--data-dir", default=None, metavar="DIR",
                       help="folder holding a local data set's files (default: $BNLAB_DATA, then the system's)")
    p_run.add_argument("--threads", type=int, default=None, metavar="N",
                       help="CPU threads for PyTorch (default: the experiment's own, see `bnlab list`)")
    p_run.add_argument("--deterministic", action="store_true", help="use only deterministic algorithms")
    p_run.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train on N processes (torch.distributed.run; gloo on CPU, NCCL with one GPU each) "
                            "with DDP and SyncBatchNorm, each rank taking its share of every batch (default: 1)")
    p_run.add_argument("--show-config", action="store_true",
                       help="print the configuration the run would use, and stop")
    p_run.set_defaults(func=_run)

    p_resume = subparsers.add_parser(
        "resume", help="continue an interrupted run (or sweep) where it stopped",
        description="Continue the run in RUN_DIR: what its unfinished unit of work wrote is dropped, the units "
                    "not yet done run with the run's own settings, seeds and device, then its report is built.")
    p_resume.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder, e.g. runs/fig1/20250101-120000")
    p_resume.set_defaults(func=_resume)

    p_report = subparsers.add_parser(
        "report", help="rebuild a run's figures and report.html from its files",
        description="Rebuild result.json (the verdicts, from metrics.jsonl), the figures and report.html of a run "
                    "folder from its files alone, and the runs index beside it.",
    )
    p_report.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder, e.g. runs/fig1/20250101-120000")
    p_report.set_defaults(func=_report)


def _list(args: argparse.Namespace) -> int:
    from bnlab.lab.registry import experiment_names, get_experiment

    for name in experiment_names():
        experiment = get_experiment(name)
        threads = f"{experiment.threads} thread{'s' * (experiment.threads > 1)}"
        print(f"{name:15s} {experiment.summary} ({threads})")
    return 0


def _command() -> str | None:
    return shlex.join(["bnlab", *sys.argv[1:]]) if sys.argv and Path(sys.argv[0]).name == "bnlab" else None


def _check_request(args: argparse.Namespace) -> None:
    """The options every run takes, checked before any work: seeds, threads and the runs folder."""
    from bnlab.lab.records import check_out_root
    from bnlab.lab.registry import RunSetupError
    from bnlab.lab.runner import check_seeds, check_threads

    try:
        check_seeds(args.seeds)
        if args.threads is not None:
            check_threads(args.threads)
        check_out_root(args.out)
    except (RunSetupError, ValueError) as err:
        raise CLIError(str(err)) from None


def _run(args: argparse.Namespace) -> int:
    from bnlab.lab.config import ConfigError, config_to_dict, format_value
    from bnlab.lab.records import REPORT, RunFilesError
    from bnlab.lab.registry import RunSetupError, get_experiment
    from bnlab.lab.runner import make_config, parse_grid, run_experiment

    _check_request(args)
    if args.experiment == ALL:
        return _tour(args)
    try:
        experiment = get_experiment(args.experiment)
        config = make_config(experiment, quick=args.quick, overrides=args.overrides)
        grid = parse_grid(experiment, config, args.grid) if args.grid else None
    except ConfigError as err:
        raise CLIError(f"{err} (see --show-config for the settings)") from None
    except ValueError as err:
        raise CLIError(str(err)) from None
    if args.nproc != 1 and not experiment.trains_on_processes:
        raise CLIError(f"--nproc applies to the experiments that train through the lab's training loop "
                       f"({', '.join(_nproc_experiments())}); {experiment.name} does not: run it without --nproc")
    if args.show_config:
        for key, value in config_to_dict(config).items():
            print(f"{key} = {format_value(value)}")
        for i, point in enumerate(grid or []):
            print(f"point {i}: " + ", ".join(f"{k} = {format_value(v)}" for k, v in point.items()))
        return 0
    if args.nproc != 1 or in_nproc_run():
        return _run_on_processes(args, experiment, config, grid)
    try:
        run_dir = run_experiment(experiment, config, out_root=args.out, seeds=args.seeds, grid=grid,
                                 device=args.device, data_dir=args.data_dir, quick=args.quick,
                                 deterministic=args.deterministic, threads=args.threads, command=_command())
    # Only the errors that are about the request; any other exception is a bug and keeps its traceback.
    except (FileNotFoundError, RunSetupError, RunFilesError) as err:
        raise CLIError(" ".join(str(err).split())) from None
    _print_verdicts(run_dir)
    print(f"report: {run_dir / REPORT}")
    print(f"all runs: {args.out / 'index.html'}")
    return 0


def _nproc_experiments() -> list[str]:
    from bnlab.lab.registry import experiment_names, get_experiment

    return [name for name in experiment_names() if get_experiment(name).trains_on_processes]


def _without_nproc(argv: list[str]) -> list[str]:
    """The command for each process: --nproc dropped (the launcher's own options would take it for
    --nproc-per-node; the processes know they are part of a run from the environment)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _run_on_processes(args: argparse.Namespace, experiment: Any, config: Any, grid: Any) -> int:
    """``--nproc N``: start N processes of this command (the parent), or be one of them (bnlab.lab.distributed)."""
    import tempfile

    from bnlab.lab import distributed, engine
    from bnlab.lab.records import REPORT, RunFilesError
    from bnlab.lab.registry import RunSetupError
    from bnlab.lab.runner import run_experiment

    if not 1 <= args.nproc <= MAX_NPROC:
        raise CLIError(f"--nproc must be between 1 and {MAX_NPROC}, got {args.nproc}")
    if not in_nproc_run():
        return _launch(args.nproc, _without_nproc(args.argv))
    try:
        where = distributed.setup(engine.resolve_device(args.device))
    except ValueError as err:
        raise CLIError(str(err)) from None
    assert where is not None
    try:
        with tempfile.TemporaryDirectory() as scratch:
            # Only rank 0 writes the run's files; the others write theirs into a folder that is then removed.
            out = args.out if where.rank == 0 else Path(scratch)
            try:
                run_dir = run_experiment(experiment, config, out_root=out, seeds=args.seeds, grid=grid,
                                         device=args.device, data_dir=args.data_dir, quick=args.quick,
                                         deterministic=args.deterministic, threads=args.threads,
                                         command=_command(), progress=False if where.rank else None,
                                         nproc=where.world)
            except (FileNotFoundError, RunSetupError, RunFilesError) as err:
                raise CLIError(" ".join(str(err).split())) from None
            if where.rank == 0:
                _print_verdicts(run_dir)
                print(f"report: {run_dir / REPORT}")
                print(f"all runs: {args.out / 'index.html'}")
    finally:
        distributed.teardown()
    return 0


def _launch(nproc: int, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start ``bnlab ARGV`` on ``nproc`` processes and end as they did: a failure on any rank is told once, as a
    one-line user error (exit 2) or as the rank's traceback and one line (exit 1), not as the launcher's report."""
    from bnlab.lab import distributed

    launched = distributed.launch(nproc, argv, env)
    if launched.code == 0:
        sys.stderr.write(launched.stderr)  # the ranks' warnings, if any
        return 0
    failure = launched.failure
    if failure is None:  # a rank killed by a signal, or the launcher itself failing: its own words are all there is
        sys.stderr.write(launched.stderr[-4000:])
        raise CLIError(f"the run on {nproc} processes failed (exit code {launched.code}) without a rank saying why "
                       f"(a rank killed by a signal, e.g. for lack of memory, takes its peers' connections with it); "
                       f"the launcher's output is above")
    if failure.user_error:
        raise CLIError(f"rank {failure.rank} of {nproc}: {' '.join(failure.text.split())}")
    sys.stderr.write(failure.text)
    print(f"bnlab: error: rank {failure.rank} of {nproc} failed with the exception above (a bug in bnlab: please "
          f"report it)", file=sys.stderr)
    return 1


def _tour(args: argparse.Namespace) -> int:
    from bnlab.lab.tour import run_tour

    if args.overrides or args.grid or args.show_config or args.nproc != 1:
        raise CLIError(f"--set, --grid, --show-config and --nproc apply to one experiment, not to {ALL!r}")
    page = run_tour(args.out, quick=args.quick, seeds=args.seeds, device=args.device, data_dir=args.data_dir,
                    threads=args.threads, command=_command())
    print(f"tour: {page}")
    print(f"all runs: {args.out / 'index.html'}")
    return 0


def _print_verdicts(run_dir: Path) -> None:
    """Each claim's verdict and evidence, as the report states them, so a terminal user sees the outcome."""
    from bnlab.lab.records import RESULT, read_json
    from bnlab.lab.result import Result

    result = Result.from_json(read_json(run_dir / RESULT))
    if result.points:
        for i, point in enumerate(result.points):
            print(f"point {i} {point.settings}: {point.result.verdict_line()}")
        return
    for claim in result.claims:
        print(f"[{claim.verdict}] {claim.claim}")
        print(f"    {claim.evidence}")


def _resume(args: argparse.Namespace) -> int:
    from bnlab.lab.records import CONFIG, REPORT, RunFilesError, RunMeta
    from bnlab.lab.registry import RunSetupError
    from bnlab.lab.runner import resume_run

    if in_nproc_run():
        return _resume_on_processes(args)
    try:
        nproc = RunMeta.read(args.run_dir).nproc if (args.run_dir / CONFIG).is_file() else 1
        if nproc > 1:
            return _resume_launch(args.run_dir, nproc)
        run_dir = resume_run(args.run_dir, command=_command())
    except (FileNotFoundError, RunSetupError, RunFilesError) as err:
        raise CLIError(" ".join(str(err).split())) from None
    _print_verdicts(run_dir)
    print(f"report: {run_dir / REPORT}")
    return 0


def _resume_launch(run_dir: Path, nproc: int) -> int:
    """Resume a ``--nproc N`` run on N processes. Rank 0 resumes the run folder; the others resume copies of it
    taken before any rank starts (rank 0 rewrites the folder at once), which they then delete."""
    import shutil
    import tempfile

    from bnlab.lab import distributed

    with tempfile.TemporaryDirectory(prefix="bnlab-resume-") as folder:
        copy = Path(folder, run_dir.name)
        try:
            shutil.copytree(run_dir, copy)
        except OSError as err:
            raise CLIError(f"cannot copy {run_dir} for the ranks other than 0 (they resume a copy): {err}") from None
        return _launch(nproc, ["resume", str(run_dir)], env={distributed.RUN_COPY_ENV: str(copy)})


def _resume_on_processes(args: argparse.Namespace) -> int:
    """One rank of :func:`_resume_launch`."""
    import os
    import shutil
    import tempfile

    from bnlab.lab import distributed, engine
    from bnlab.lab.records import REPORT, RunFilesError, RunMeta
    from bnlab.lab.registry import RunSetupError
    from bnlab.lab.runner import resume_run

    try:
        where = distributed.setup(engine.resolve_device(RunMeta.read(args.run_dir).device.partition(":")[0]))
    except (RunFilesError, ValueError) as err:
        raise CLIError(" ".join(str(err).split())) from None
    assert where is not None
    try:
        with tempfile.TemporaryDirectory() as scratch:
            run_dir = args.run_dir
            if where.rank:
                run_dir = Path(scratch, "runs", "copy", args.run_dir.name)
                shutil.copytree(os.environ[distributed.RUN_COPY_ENV], run_dir)
            run_dir = resume_run(run_dir, command=_command(), progress=False if where.rank else None)
            if where.rank == 0:
                _print_verdicts(run_dir)
                print(f"report: {run_dir / REPORT}")
    except (FileNotFoundError, RunSetupError, RunFilesError) as err:
        raise CLIError(" ".join(str(err).split())) from None
    finally:
        distributed.teardown()
    return 0


def _report(args: argparse.Namespace) -> int:
    from bnlab.lab.records import RunFilesError, RunMeta
    from bnlab.lab.report import build_report, write_index

    try:
        page = build_report(args.run_dir)
    except RunFilesError as err:
        raise CLIError(" ".join(str(err).split())) from None
    _print_verdicts(args.run_dir)
    print(f"report: {page}")
    run_dir = args.run_dir.resolve()
    # Only a folder laid out as RUNS/EXPERIMENT/RUN has a runs index to refresh; a copy elsewhere does not.
    if run_dir.parent.name == RunMeta.read(run_dir).experiment:
        print(f"all runs: {write_index(run_dir.parent.parent)}")
    return 0
