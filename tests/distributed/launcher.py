"""Starting the processes of a multi-process test (tests/distributed/): gloo on CPU, a file store, one worker.py per
rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

WORKER = Path(__file__).with_name("worker.py")


def require_gloo() -> None:
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("this PyTorch build has no gloo backend for torch.distributed")


def launch(scenario: str, world: int, directory: Path, arg: str = "", timeout: float = 300,
           expect_failure: bool = False) -> list[Any]:
    """Run ``worker.py scenario`` on ``world`` processes; returns each rank's saved result (or its output text
    when ``expect_failure``: then every rank must exit non-zero)."""
    require_gloo()
    directory.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = [directory / f"{scenario}-rank{r}.pt" for r in range(world)]
    procs = [subprocess.Popen([sys.executable, str(WORKER), scenario, str(r), str(world), str(directory / "store"),
                               str(outs[r]), arg], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(world)]
    texts = []
    try:
        for p in procs:
            output, _ = p.communicate(timeout=timeout)
            texts.append(output.decode(errors="replace"))
            if expect_failure:
                assert p.returncode != 0, f"rank {len(texts) - 1} succeeded:\n{texts[-1][-3000:]}"
            else:
                assert p.returncode == 0, texts[-1][-3000:]
    finally:
        # A failed or stuck rank would leave its peers waiting: end every process this test started.
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if expect_failure:
        return texts
    return [torch.load(o, weights_only=True) for o in outs]
