"""bnlab.tools.recalibrate: Algorithm 2's population statistics, exact on known data, restoring what it touches."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import bnlab
from bnlab.reference import population_statistics
from bnlab.tools import recalibrate
from bnlab.tools._population import NonFiniteBatchError, PopulationAccumulator
from bnlab.tools.recalibrate import MODES

DATA = torch.randn(40, 3, 4, 4, dtype=torch.float64) * torch.tensor([0.5, 2.0, 5.0]).view(1, 3, 1, 1) + torch.tensor(
    [-1.0, 0.0, 100.0]).view(1, 3, 1, 1)  # channel 2: a large mean over a small spread, cancellation-prone

SPLITS = [
    pytest.param([40], id="one-batch"),
    pytest.param([10, 10, 10, 10], id="equal"),
    pytest.param([16, 16, 8], id="short-last-batch"),
    pytest.param([2, 31, 7], id="uneven"),
    pytest.param([1, 39], id="single-sample-batch"),  # 16 values per channel: still a valid batch
]


@pytest.mark.parametrize("sizes", SPLITS)
def test_pooled_statistics_are_exact_and_do_not_depend_on_batching(sizes: list[int]) -> None:
    bn = nn.BatchNorm2d(3).double().eval()
    report = recalibrate(nn.Sequential(bn), list(DATA.split(sizes)))
    torch.testing.assert_close(bn.running_mean, DATA.mean((0, 2, 3)), rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(bn.running_var, DATA.var((0, 2, 3), correction=1), rtol=1e-12, atol=1e-12)
    assert (report.layers, report.batches, report.samples) == (1, len(sizes), 40)
    assert int(bn.num_batches_tracked) == len(sizes)


@pytest.mark.parametrize("sizes", SPLITS[1:4])
def test_paper_mode_is_the_reference_algorithm_2(sizes: list[int]) -> None:
    bn = nn.BatchNorm2d(3).double().eval()
    batches = list(DATA.split(sizes))
    recalibrate(nn.Sequential(bn), batches, mode="paper")
    expected = population_statistics(batches)
    torch.testing.assert_close(bn.running_mean, expected.mean, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(bn.running_var, expected.var, rtol=1e-12, atol=1e-12)


def test_cumulative_mode_is_torchs_momentum_none_average() -> None:
    batches = list(DATA.float().split([16, 16, 8]))
    ours = nn.BatchNorm2d(3, momentum=0.3).eval()
    report = recalibrate(nn.Sequential(ours), batches, mode="cumulative")
    theirs = nn.BatchNorm2d(3, momentum=None).train()
    for b in batches:
        theirs(b)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert ours.momentum == 0.3 and not ours.training and report.mode == "cumulative"


def _network() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), bnlab.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, momentum=None), nn.Flatten(),
                         nn.Linear(4 * 2 * 2, 5), nn.BatchNorm1d(5, momentum=0.99))


def test_layers_see_the_inference_network_with_batch_statistics() -> None:
    """Every layer gets the statistics of its inputs as computed with batch norm in training mode, dropout off."""
    model = _network().eval()
    batches = list(DATA.float().split([16, 16, 8]))
    seen: dict[str, list[torch.Tensor]] = {"1": [], "5": [], "8": []}
    probe = _network().eval()
    probe.load_state_dict(model.state_dict())
    for name in seen:
        probe.get_submodule(name).train()
        probe.get_submodule(name).register_forward_pre_hook(lambda m, a, name=name: seen[name].append(a[0]))
    with torch.no_grad():
        for b in batches:
            probe(b)
    recalibrate(model, batches)
    for name, inputs in seen.items():
        bn = model.get_submodule(name)
        everything = torch.cat([x.double() for x in inputs])
        dims = [0, *range(2, everything.dim())]
        torch.testing.assert_close(bn.running_mean.double(), everything.mean(dims), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), everything.var(dims), rtol=1e-5, atol=1e-6)


def test_modes_momenta_and_switches_are_restored() -> None:
    model = bnlab.tools.freeze(_network(), "1", normalize_with="running", update_stats=False, train_affine=None)
    model.train()
    model[3].eval()  # a mixed state must come back exactly
    modes = [m.training for m in model.modules()]
    momenta = [m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    recalibrate(model, list(DATA.float().split(20)))
    assert [m.training for m in model.modules()] == modes
    assert [m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] == momenta
    assert model[1].normalize_with == "running" and model[1].update_stats is False


def test_an_error_midway_restores_everything() -> None:
    model = _network().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def batches() -> Iterator[torch.Tensor]:
        yield DATA[:8].float()
        raise RuntimeError("the data loader broke")

    with pytest.raises(RuntimeError, match="data loader broke"):
        recalibrate(model, batches())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any(m.training for m in model.modules()) and model[5].momentum is None


def test_dict_batches_through_a_forward_callable_and_num_batches() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn_a, self.bn_b = nn.BatchNorm1d(2), nn.BatchNorm1d(3)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.bn_a(a), self.bn_b(b)], 1)

    a, b = torch.randn(30, 2) + 3, torch.randn(30, 3) * 4
    batches = [{"a": a[i:i + 10], "b": b[i:i + 10]} for i in range(0, 30, 10)]
    model = TwoInputs().eval()
    with pytest.raises(TypeError, match="forward="):
        recalibrate(model, batches)
    report = recalibrate(model, batches, forward=lambda m, batch: m(**batch), num_batches=2)
    assert (report.layers, report.batches, report.samples) == (2, 2, 20)
    torch.testing.assert_close(model.bn_a.running_mean, a[:20].mean(0))
    torch.testing.assert_close(model.bn_b.running_var, b[:20].var(0))


class _WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn, self.unused = nn.BatchNorm1d(3), nn.BatchNorm1d(7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


def test_dataloader_pairs_and_unreached_layers() -> None:
    model = _WithUnused().eval()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(25, 3), torch.zeros(25)),
                                         batch_size=10)
    report = recalibrate(model, loader)
    assert report.unused == ("unused",) and report.layers == 1 and report.samples == 25
    assert "unused" in str(report) and int(model.unused.num_batches_tracked) == 0


NON_FINITE = [
    pytest.param(float("nan"), torch.float32, id="nan"),
    pytest.param(float("-inf"), torch.float32, id="infinity"),
    pytest.param(1e300, torch.float64, id="finite-but-its-square-overflows"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("value", "dtype"), NON_FINITE)
def test_a_batch_with_non_finite_statistics_is_refused_by_name_and_nothing_changes(
        value: float, dtype: torch.dtype, mode: str) -> None:
    """One bad value in channel 1 of sample 23 (batch 2 of 4): without the check every channel after it would
    be written as NaN (or inf); with it, the error names the batch, its samples, the layer and the channel."""
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).to(dtype).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [b.to(dtype).clone() for b in DATA.split(10)]
    batches[2][3, 1, 0, 0] = value
    with pytest.raises(NonFiniteBatchError, match=r"^batch 2 \(samples 20 to 29; both counted from 0\) gives "
                                                  r"non-finite statistics at layer '0': channel\(s\) 1 of 3 "):
        recalibrate(model, batches, mode=mode)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[key]), key


@pytest.mark.parametrize(("model", "batches", "error", "match"), [
    pytest.param(nn.Sequential(nn.BatchNorm1d(3)), [torch.randn(1, 3)], ValueError, "1 value per channel",
                 id="one-value-per-channel"),
    pytest.param(nn.Sequential(nn.BatchNorm1d(3)), [], ValueError, "no batch reached", id="no-batches"),
    pytest.param(nn.Sequential(nn.Linear(3, 3)), [torch.randn(4, 3)], ValueError, "no batch-norm layer",
                 id="no-batch-norm"),
    pytest.param(nn.Sequential(nn.BatchNorm1d(3)), 5, TypeError, "iterable of batches", id="not-iterable"),
])
def test_bad_input(model: nn.Module, batches: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        recalibrate(model.eval(), batches)  # type: ignore[arg-type]


WORKER = Path(__file__).with_name("distributed_worker.py")


def _run_two_workers(tmp_path: Path, suffix: str, *extra: str, timeout: float = 120) -> list[Path]:
    """Start distributed_worker.py as ranks 0 and 1 on gloo; both must exit 0 within ``timeout`` seconds."""
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("this PyTorch build has no gloo backend for torch.distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = [tmp_path / f"rank{r}.{suffix}" for r in range(2)]
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), "2", str(tmp_path / "store"), str(outs[r]),
                               *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    try:
        for r, p in enumerate(procs):
            try:
                output, _ = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                pytest.fail(f"rank {r} did not finish within {timeout} s: a process waits for its peer (a hang)")
            assert p.returncode == 0, output.decode()[-2000:]
    finally:
        # On a timeout or a failed rank the other worker would wait for its peer forever: end both.
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


def test_two_processes_on_gloo_agree_with_one_process(tmp_path: Path) -> None:
    """Each of two processes sees part of the data; all-reduced, both end with the statistics of all of it."""
    sys.path.insert(0, str(WORKER.parent))
    try:
        import distributed_worker as w
    finally:
        sys.path.pop(0)
    outs = _run_two_workers(tmp_path, "pt")
    results = [torch.load(o, weights_only=True) for o in outs]
    for mode in ("pooled", "paper", "cumulative"):
        single = w.model()
        report = recalibrate(single, w.data(), mode=mode)
        for r in range(2):
            assert results[r][mode]["report"] == [report.layers, report.batches, report.samples] == [3, 5, 29]
            for key, value in single.state_dict().items():
                torch.testing.assert_close(results[r][mode]["state"][key], value, rtol=1e-5, atol=1e-6,
                                           msg=lambda m, key=key, mode=mode: f"{mode} {key}: {m}")


NAN_ON_RANK_1 = (r"^batch 1 \(samples 7 to 9; both counted from 0\) of process 1 \(of 2\) gives non-finite "
                 r"statistics at layer '1': channel\(s\) 0, 1, 2 of 3 \(channel 0: mean nan, variance nan\)")


def test_an_error_on_one_process_is_raised_by_every_process_instead_of_a_hang(tmp_path: Path) -> None:
    """Rank 1's data holds a NaN (then, a batch of one value per channel); rank 0's is clean. Before, rank 1
    raised and rank 0 waited in the all-gather forever. Now the error travels in that same collective: both
    raise it (the same NonFiniteBatchError, naming the process, the batch and the layer), both models are left
    as they were, and a later recalibration still works, so the processes' collectives stayed in step."""
    outs = _run_two_workers(tmp_path, "json", "failures", timeout=55)
    ranks = [json.loads(o.read_text()) for o in outs]
    for mode in MODES:
        for r in range(2):
            kind, message, unchanged = ranks[r][f"nan/{mode}"]
            assert kind == "NonFiniteBatchError" and re.match(NAN_ON_RANK_1, message), (r, mode, message)
            assert unchanged, (r, mode)
        assert ranks[0][f"nan/{mode}"] == ranks[1][f"nan/{mode}"]
    assert ranks[1]["one-sample/pooled"][:2] == ["ValueError", "layer '1' got a batch of shape (1, 3, 1, 1), which "
                                                 "has 1 value per channel: a variance needs at least 2; use batches "
                                                 "of 2 or more samples"]
    kind, message, unchanged = ranks[0]["one-sample/pooled"]
    assert kind == "RuntimeError" and message.startswith(
        "process 1 (of 2) failed while recalibrating, at batch 1 (samples 7 to 7; both counted from 0)"), message
    assert unchanged and ranks[1]["one-sample/pooled"][2]
    assert ranks[0]["afterwards"] == ranks[1]["afterwards"] == [5, 29]


def test_merging_means_and_variances_weighs_them_and_refuses_the_pooled_estimate() -> None:
    # How processes' cumulative averages (over 1 and 3 batches) combine: weighted by their batch counts.
    acc = PopulationAccumulator()
    acc.merge_mean_var(1, torch.tensor([1.0, 2.0]), torch.tensor([4.0, 1.0]))
    acc.merge_mean_var(3, torch.tensor([5.0, 2.0]), torch.tensor([8.0, 1.0]))
    mean, var = acc.result("paper")
    torch.testing.assert_close(mean, torch.tensor([4.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(var, torch.tensor([7.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="pooled variance needs"):
        acc.result("pooled")
