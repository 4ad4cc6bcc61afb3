"""``bnlab.recalibrate`` on two processes started by ``torch.distributed.run`` (the launcher ``--nproc`` uses)
ends with the statistics one process computes on all the data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from bnlab.tools import recalibrate
from distributed.launcher import require_gloo

# tests/tools on the path only for this import: left there, its conftest.py would shadow the suite's root
# conftest for the test modules collected after this one (`from conftest import ...`).
sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
try:
    import distributed_worker as w
finally:
    sys.path.pop(0)


def test_recalibrate_under_torchrun_equals_one_process(tmp_path: Path) -> None:
    require_gloo()
    script = Path(__file__).with_name("recalibrate_torchrun.py")
    out = tmp_path / "state"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    single = w.model()
    recalibrate(single, w.data(), mode="pooled")
    for rank in range(2):
        state = torch.load(f"{out}.rank{rank}", weights_only=True)
        for key, value in single.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
