"""A toy experiment for the platform's tests: two units of work per seed, a record and an artifact each, a claim
and a figure; seconds to run. ``with_toy(monkeypatch)`` registers it as ``toy``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bnlab.lab import registry, schema
from bnlab.lab.plots import new_figure, save
from bnlab.lab.registry import Experiment, Figure, RunContext
from bnlab.lab.result import Claim, Result, Table
from bnlab.lab.store import Artifacts


@dataclass(frozen=True)
class ToyConfig:
    scale: float = 1.0
    parts: tuple[str, ...] = ("a", "b")
    log: list[str] = field(default_factory=list)  # what train did, for the tests (never set from outside)


CALLS: list[tuple[int, str, float]] = []  # (seed, part, scale) of every unit trained, in order


def train(config: ToyConfig, ctx: RunContext) -> None:
    part = ctx.unit["part"]
    CALLS.append((ctx.seed, part, config.scale))
    value = float(torch.rand(()).item()) * config.scale  # the runner seeded torch for this unit
    ctx.log({"kind": "value", "seed": ctx.seed, "part": part, "value": value})
    assert ctx.artifacts is not None
    ctx.artifacts.save_arrays(f"draws-{ctx.seed}-{part}", draws=np.full(3, value))


def summarize(config: ToyConfig, records: list[dict[str, Any]]) -> Result:
    values = [r["value"] for r in records if r["kind"] == "value"]
    if not values:
        raise ValueError("nothing measured")
    mean = float(np.mean(values))
    return Result("toy", "A toy", [Claim("The mean is below the scale.", "reproduced" if mean < config.scale
                                         else "not reproduced", f"mean {mean:.3f}")],
                  [Table("values", ["part", "value"], [[r["part"], r["value"]] for r in records
                                                       if r["kind"] == "value"])], summary={"mean": mean})


def plot(config: ToyConfig, records: list[dict[str, Any]], result: Result, out_dir: Path) -> list[Figure]:
    fig, (ax,) = new_figure(1)
    for name in Artifacts(out_dir).names():
        ax.plot(Artifacts(out_dir).load_arrays(name.removesuffix(".npz"))["draws"], color="#ff00ff")
    save(fig, out_dir, "toy")
    return [Figure("toy", "the draws")]


TOY = Experiment(
    name="toy", summary="a toy for the platform's tests", config_cls=ToyConfig, train=train, summarize=summarize,
    plot=plot, records=lambda c: {"value": {"seed": schema.integer(), "part": schema.text(c.parts),
                                            "value": schema.number()}},
    units=lambda c: [{"part": p} for p in c.parts], quick={"scale": 2.0}, smoke={"scale": 0.5},
    headline=lambda r: {"mean": f"{r.summary['mean']:.3f}"}, threads=1)


def with_toy(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> Experiment:
    """Register the toy (with ``changes``) as ``toy`` for one test; clears ``CALLS``."""
    from dataclasses import replace

    CALLS.clear()
    experiment = replace(TOY, **changes)
    monkeypatch.setitem(registry.experiments(), "toy", experiment)
    return experiment
