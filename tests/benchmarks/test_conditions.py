"""What the CPU runner keeps out of its timings: allocator page faults (malloc settings) and disturbed samples."""

from __future__ import annotations

import os
import platform
import time

import pytest
from benchmarks.run import Disturbances, Timer

from benchmarks import conditions, report


def test_reexec_is_skipped_when_asked_or_already_done(monkeypatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("the runner must not restart itself here")

    monkeypatch.setattr(os, "execve", fail)
    conditions.reexec_with_malloc_settings(["--malloc-defaults"])
    for name, value in conditions.MALLOC_SETTINGS.items():
        monkeypatch.setenv(name, value)
    conditions.reexec_with_malloc_settings([])
    assert conditions.malloc_settings() == conditions.MALLOC_SETTINGS


@pytest.mark.skipif(platform.system() != "Linux", reason="the restart exists only on Linux (glibc)")
def test_reexec_sets_the_variables_for_the_new_process(monkeypatch) -> None:
    seen: dict[str, object] = {}
    for name in conditions.MALLOC_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "execve", lambda exe, argv, env: seen.update(argv=argv, env=env))
    conditions.reexec_with_malloc_settings(["--suite", "quick"])
    assert seen["argv"][-3:] == ["benchmarks.run", "--suite", "quick"]
    assert all(seen["env"][name] == value for name, value in conditions.MALLOC_SETTINGS.items())


@pytest.mark.skipif(not conditions.InterferenceProbe().available, reason="no /proc/self/task/*/schedstat here")
def test_probe_counts_run_queue_waits_monotonically() -> None:
    probe = conditions.InterferenceProbe()
    first = probe.waited_ns()
    sum(range(100_000))
    assert probe.waited_ns() >= first >= 0


class _FakeProbe:
    """Reports a long run-queue wait for the first `disturbed` readings pairs, none afterwards."""

    def __init__(self, disturbed: int) -> None:
        self.disturbed, self.total, self.reads = disturbed, 0, 0

    def waited_ns(self) -> int:
        self.reads += 1
        if self.reads % 2 == 0 and self.reads // 2 <= self.disturbed:
            self.total += 10_000_000  # 10 ms waiting: a neighbour held the CPU
        return self.total


def test_disturbed_samples_are_retaken_then_kept() -> None:
    timer = Timer(__import__("torch").device("cpu"))
    calls = []
    d = Disturbances(_FakeProbe(disturbed=3))  # type: ignore[arg-type]
    d.measure(timer, lambda: (lambda: calls.append(1)), lambda: None)
    assert (d.samples, d.retaken, d.kept) == (1, 3, 0) and len(calls) == 4
    d = Disturbances(_FakeProbe(disturbed=100))  # type: ignore[arg-type]
    d.measure(timer, lambda: (lambda: time.sleep(0)), lambda: None)
    assert d.kept == 1 and d.retaken == 10


def test_markdown_states_the_conditions() -> None:
    result = {"environment": {"device": "cpu", "malloc": dict(conditions.MALLOC_SETTINGS)},
              "disturbances": {"probe": True, "samples": 10, "retaken": 2, "kept_disturbed": 0,
                               "threshold_us": 50.0, "threshold_fraction": 0.05, "max_retakes": 10}}
    text = "\n".join(report._conditions(result))
    assert "MALLOC_MMAP_THRESHOLD_" in text and "2 retakes over 10 samples" in text
    result["environment"]["malloc"] = {name: None for name in conditions.MALLOC_SETTINGS}
    assert "glibc defaults" in "\n".join(report._conditions(result))
