"""The lab's subcommands: ``bnlab list``, ``bnlab run EXPERIMENT``, ``bnlab report RUN_DIR``."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

from bnlab.cli.errors import CLIError

__all__ = ["register"]

DEFAULT_RUNS = Path("runs")


def register(subparsers: Any) -> None:
    p_list = subparsers.add_parser("list", help="list the experiments, one line each",
                                   description="List the registered experiments with a one-line summary each.")
    p_list.set_defaults(func=_list)

    p_run = subparsers.add_parser(
        "run", help="run an experiment and write its report",
        description="Run an experiment; its files, figures and report.html go to OUT/EXPERIMENT/TIMESTAMP/ and "
                    "OUT/index.html lists all runs.",
    )
    p_run.add_argument("experiment", help="the experiment's name (see `bnlab list`)")
    p_run.add_argument("--quick", action="store_true",
                       help="the experiment's short version (fewer steps; the report says which settings changed)")
    p_run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="change a setting of the experiment's configuration (repeatable; type-checked)")
    p_run.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED",
                       help="train once per seed; figures show mean and spread (default: 0)")
    p_run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where to train: auto uses a CUDA GPU when there is one (default: auto)")
    p_run.add_argument("--out", type=Path, default=DEFAULT_RUNS, metavar="DIR",
                       help=f"the runs folder (default: {DEFAULT_RUNS})")
    p_run.add_argument("--data-dir", default=None, metavar="DIR",
                       help="folder holding a local data set's files (default: $BNLAB_DATA, then the system's)")
    p_run.add_argument("--threads", type=int, default=None, metavar="N",
                       help="CPU threads for PyTorch (default: 1, faster for the lab's small networks)")
    p_run.add_argument("--deterministic", action="store_true", help="use only deterministic algorithms")
    p_run.add_argument("--show-config", action="store_true",
                       help="print the configuration the run would use, and stop")
    p_run.set_defaults(func=_run)

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
        print(f"{name:12s} {get_experiment(name).summary}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from bnlab.lab.config import ConfigError
    from bnlab.lab.records import REPORT, RunFilesError
    from bnlab.lab.registry import RunSetupError, get_experiment
    from bnlab.lab.runner import DEFAULT_THREADS, make_config, run_experiment

    try:
        experiment = get_experiment(args.experiment)
        config = make_config(experiment, quick=args.quick, overrides=args.overrides)
    except ConfigError as err:
        raise CLIError(f"{err} (see --show-config for the settings)") from None
    except ValueError as err:
        raise CLIError(str(err)) from None
    if args.show_config:
        for key, value in dataclasses.asdict(config).items():
            print(f"{key} = {value}")
        return 0
    command = shlex.join(["bnlab", *sys.argv[1:]]) if sys.argv and Path(sys.argv[0]).name == "bnlab" else None
    try:
        run_dir = run_experiment(experiment, config, out_root=args.out, seeds=args.seeds, device=args.device,
                                 data_dir=args.data_dir, quick=args.quick, deterministic=args.deterministic,
                                 threads=DEFAULT_THREADS if args.threads is None else args.threads,
                                 command=command)
    # Only the errors that are about the request; any other exception is a bug and keeps its traceback.
    except (FileNotFoundError, RunSetupError, RunFilesError) as err:
        raise CLIError(str(err)) from None
    _print_verdicts(run_dir)
    print(f"report: {run_dir / REPORT}")
    print(f"all runs: {args.out / 'index.html'}")
    return 0


def _print_verdicts(run_dir: Path) -> None:
    """Each claim's verdict and evidence, as the report states them, so a terminal user sees the outcome."""
    from bnlab.lab.records import RESULT, read_json

    result = read_json(run_dir / RESULT)
    for claim in result.get("claims", []):
        print(f"[{claim['verdict']}] {claim['claim']}")
        print(f"    {claim['evidence']}")


def _report(args: argparse.Namespace) -> int:
    from bnlab.lab.records import CONFIG, RunFilesError, read_json
    from bnlab.lab.report import build_report, write_index

    try:
        page = build_report(args.run_dir)
    except RunFilesError as err:
        raise CLIError(str(err)) from None
    _print_verdicts(args.run_dir)
    print(f"report: {page}")
    run_dir = args.run_dir.resolve()
    # Only a folder laid out as RUNS/EXPERIMENT/RUN has a runs index to refresh; a copy elsewhere does not.
    if run_dir.parent.name == read_json(run_dir / CONFIG).get("experiment"):
        print(f"all runs: {write_index(run_dir.parent.parent)}")
    return 0
