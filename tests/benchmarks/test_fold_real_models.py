"""benchmarks/fold_real_models.py: one model measured end to end (the full run is ``make bench``)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="needs the test-models extra: make setup installs it")

from benchmarks.fold_real_models import _models, measure


def test_a_row_holds_the_fold_the_timings_and_why_torch_fuse_did_not_run() -> None:
    row = measure("regnet", _models()["regnet"], batch=2, reps=1)
    assert row["method"] == "export" and row["folded"] == row["batch_norms"] == 26
    assert set(row["median_ms"]) == {"unfolded", "bnlab fold"} and row["speedup_vs_unfolded"] > 0
    assert row["ratio_vs_torch_fuse"] is None and row["torch_fuse"].startswith("TraceError")
    assert row["max_abs_error"]["bnlab fold"] < 1e-4
