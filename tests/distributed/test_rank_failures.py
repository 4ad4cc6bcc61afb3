"""Which failure a ``--nproc`` run reports (``bnlab.lab.rank_failures``), without starting processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bnlab.lab.rank_failures import FAILURES_ENV, RankFailure, first_failure, lost_connection, record_failure
from bnlab.nn.sync_exchange import SyncBatchNormError

GLOO_RESET = ("[third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:13698: Connection reset "
              "by peer.")


def test_a_user_error_is_reported_before_an_earlier_bug(tmp_path: Path) -> None:
    (tmp_path / "rank-0.bug").write_text("Traceback ...\nRuntimeError: x\n")
    os.utime(tmp_path / "rank-0.bug", ns=(1, 1))  # written first
    (tmp_path / "rank-2.user").write_text("the data file went missing")
    assert first_failure(tmp_path) == RankFailure(2, True, "the data file went missing")


def test_among_bugs_the_earliest_written_is_reported(tmp_path: Path) -> None:
    for rank, when in ((0, 5), (1, 3), (2, 4)):
        (tmp_path / f"rank-{rank}.bug").write_text(f"bug {rank}")
        os.utime(tmp_path / f"rank-{rank}.bug", ns=(when, when))
    (tmp_path / "rank-x.user").write_text("not a rank's file")
    assert first_failure(tmp_path) == RankFailure(1, False, "bug 1")


def test_no_file_is_no_failure(tmp_path: Path) -> None:
    assert first_failure(tmp_path) is None


def test_a_rank_records_only_inside_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAILURES_ENV, raising=False)
    monkeypatch.setenv("RANK", "3")
    record_failure("ignored", user_error=True)
    monkeypatch.setenv(FAILURES_ENV, str(tmp_path))
    record_failure("the message", user_error=True)
    assert [p.name for p in tmp_path.iterdir()] == ["rank-3.user"]
    assert first_failure(tmp_path) == RankFailure(3, True, "the message")


@pytest.mark.parametrize("error, lost", [
    pytest.param(RuntimeError(GLOO_RESET), True, id="gloo-reset"),
    pytest.param(SyncBatchNormError(f"bn1: the forward exchange ... did not complete within 5 s ({GLOO_RESET})"),
                 True, id="sync-timeout"),
    pytest.param(torch.distributed.DistBackendError("NCCL communicator was aborted"), True, id="dist-error"),
    pytest.param(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False, id="other-runtime-error"),
    pytest.param(ValueError("gloo"), False, id="not-a-runtime-error"),
])
def test_a_lost_connection_is_told_from_a_failure_of_its_own(error: BaseException, lost: bool) -> None:
    assert lost_connection(error) is lost
