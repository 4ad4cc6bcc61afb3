"""One process of the recalibration test under ``torch.distributed.run``
(tests/distributed/test_recalibrate_launcher.py); not a test module. Usage: python -m torch.distributed.run
--standalone --nproc-per-node 2 recalibrate_torchrun.py OUT. The model, the data and each rank's share are
tests/tools/distributed_worker.py's."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
import distributed_worker as w

from bnlab.tools import recalibrate


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # rank, world size and rendezvous from the launcher's environment
    try:
        m = w.model()
        recalibrate(m, w.share(dist.get_rank()), mode="pooled")
        torch.save(m.state_dict(), f"{sys.argv[1]}.rank{dist.get_rank()}")
    finally:
        gc.collect()  # before gloo's threads go: see bnlab.lab.distributed.teardown
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
