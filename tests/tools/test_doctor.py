"""bnlab.tools.doctor: every finding is triggered by a model built to have it (and only it); a clean model has none."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import pytest
import torch
from torch import nn

import bnlab
from bnlab.tools import doctor, recalibrate
from bnlab.tools.diagnosis import CODES, Report


def _images(n: int = 64, shift: float = 0.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return list((torch.randn(n, 3, 6, 6, generator=gen) * 2 + 1 + shift).split(32))


def _vectors(n: int = 64, batch: int = 32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    return list((torch.randn(n, 5, generator=gen) * 3 - 2).split(batch))


def _calibrated(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Statistics that are right for this data: what a well-trained model has."""
    recalibrate(model.eval(), batches)
    return model


def _clean_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 6, bias=False), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


class _Reused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(5, 4, bias=False), nn.Linear(5, 4, bias=False)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.a(x)) + self.bn(self.b(x))


def _never_updated() -> tuple[nn.Module, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    return nn.Sequential(nn.BatchNorm1d(5)).eval(), list(torch.randn(256, 5, generator=gen).split(64))


def _non_finite() -> tuple[nn.Module, list[torch.Tensor]]:
    model = _calibrated(nn.Sequential(nn.BatchNorm1d(5)), _vectors())
    model[0].running_var[2] = float("nan")
    return model, _vectors()


def _unconverged() -> tuple[nn.Module, list[torch.Tensor]]:
    """Trained for 3 batches at momentum 0.1: 73% of the initial E[x] = 0, Var[x] = 1 is still in the averages."""
    model = nn.Sequential(nn.BatchNorm1d(5)).train()
    with torch.no_grad():
        for batch in _vectors(96):
            model(batch)
    return model.eval(), _vectors(96)


def _nan_in_batch_two() -> tuple[nn.Module, list[torch.Tensor]]:
    batches = _vectors(96)
    batches[1] = batches[1].clone()
    batches[1][3, 2] = float("nan")
    return _calibrated(nn.Sequential(nn.BatchNorm1d(5)), _vectors(96)), batches


class _Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)  # NaN for negative inputs: the model, not the data, makes them


def _model_makes_nan() -> tuple[nn.Module, list[torch.Tensor]]:
    positive = [b.abs() + 1 for b in _vectors(96)]
    model = _calibrated(nn.Sequential(_Log(), nn.BatchNorm1d(5)), positive)
    positive[2] = positive[2] - 100  # finite data, but the log of a negative number
    return model, positive


def _mismatch(shift: float) -> Callable[[], tuple[nn.Module, list[torch.Tensor]]]:
    return lambda: (_calibrated(nn.Sequential(nn.BatchNorm2d(3)), _images()), _images(shift=shift))


# (builder returning (model, batches), code, severity, layer)
FINDINGS = [
    pytest.param(lambda: (_calibrated(_clean_cnn(), _images()).train(), _images()), "training_mode", "error", "",
                 id="training-mode"),
    pytest.param(_non_finite, "stats_non_finite", "error", "0", id="non-finite-statistics"),
    pytest.param(_never_updated, "stats_never_updated", "error", "0", id="never-updated"),
    pytest.param(_mismatch(1.0), "stats_mismatch", "warning", "0", id="statistics-mismatch-warning"),  # 0.5 σ
    pytest.param(_mismatch(5.0), "stats_mismatch", "error", "0", id="statistics-mismatch-error"),  # 2.5 σ
    pytest.param(lambda: (_calibrated(nn.Sequential(nn.BatchNorm1d(5)), _vectors(64, 4)), _vectors(64, 4)),
                 "few_values_per_channel", "error", "0", id="tiny-batches"),
    pytest.param(lambda: (_calibrated(nn.Sequential(nn.BatchNorm1d(5)), _vectors(64, 16)), _vectors(64, 16)),
                 "few_values_per_channel", "warning", "0", id="small-batches"),
    pytest.param(lambda: (_calibrated(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), _images()), _images()),
                 "bias_before_bn", "info", "1", id="bias-before-bn"),
    pytest.param(lambda: (_calibrated(nn.Sequential(nn.Linear(5, 4, bias=False), nn.Dropout(0.5),
                                                    nn.BatchNorm1d(4)), _vectors()), _vectors()),
                 "bn_after_dropout", "warning", "2", id="dropout-before-bn"),
    pytest.param(lambda: (_calibrated(nn.Sequential(nn.BatchNorm1d(5, momentum=0.99)), _vectors()), _vectors()),
                 "keras_momentum", "warning", "0", id="keras-momentum"),
    pytest.param(lambda: (_calibrated(nn.Sequential(nn.BatchNorm1d(5, eps=1e-3)), _vectors()), _vectors()),
                 "foreign_convention", "warning", "0", id="keras-eps"),
    pytest.param(lambda: (_calibrated(nn.Sequential(bnlab.BatchNorm1d(5, momentum=0.01, convention="darknet")),
                                      _vectors()), _vectors()),
                 "convention_set", "info", "0", id="darknet-convention-set"),
    pytest.param(lambda: (_calibrated(_Reused(), _vectors()), _vectors()), "bn_reused", "warning", "bn",
                 id="reused-module"),
    pytest.param(_unconverged, "stats_not_converged", "error", "0", id="not-converged"),
    pytest.param(_nan_in_batch_two, "data_non_finite", "error", "", id="nan-in-the-data"),
    pytest.param(_model_makes_nan, "activations_non_finite", "error", "1", id="nan-made-by-the-model"),
]


@pytest.mark.parametrize(("build", "code", "severity", "layer"), FINDINGS)
def test_each_finding_is_triggered_by_a_model_built_to_have_it(
        build: Callable[[], tuple[nn.Module, list[torch.Tensor]]], code: str, severity: str, layer: str) -> None:
    model, batches = build()
    before = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    report = doctor(model, batches)
    assert [(f.code, f.severity, f.layer) for f in report.findings] == [(code, severity, layer)], report
    finding = report.findings[0]
    assert finding.evidence and finding.fix and finding.message and finding.detail
    assert finding.value is not None  # the number the grouped table shows
    assert all(isinstance(v, int | float | str) for v in finding.evidence.values())
    for key, value in model.state_dict().items():  # the doctor examines a copy
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, equal_nan=True, msg=key)
    assert [m.training for m in model.modules()] == modes


def test_every_code_has_a_test() -> None:
    tested = {p.values[1] for p in FINDINGS}
    assert tested == set(CODES)


def test_clean_model_gives_no_findings() -> None:
    model = _calibrated(_clean_cnn(), _images(256))
    report = doctor(model, _images(256))
    assert report.findings == () and report.healthy
    assert "no findings" in report.to_text()
    assert report.layers == 3 and report.batches == 8 and report.samples == 256


def test_evidence_of_the_variance_shift_and_keras_momentum() -> None:
    model = _calibrated(nn.Sequential(nn.Linear(5, 4, bias=False), nn.Dropout(0.5), nn.BatchNorm1d(4)), _vectors())
    (finding,) = doctor(model, _vectors(256)).findings
    ratio = finding.evidence["input_variance_ratio_train_vs_eval"]
    assert isinstance(ratio, float) and 1.6 < ratio < 2.4  # inverted dropout at p = 0.5 doubles E[x²]
    (keras,) = keras_momentum_findings()
    assert keras.evidence["pytorch_equivalent"] == pytest.approx(0.01)


def keras_momentum_findings() -> tuple:
    model = _calibrated(nn.Sequential(nn.BatchNorm1d(5, momentum=0.99)), _vectors())
    return doctor(model, _vectors()).findings


def _badly_calibrated_classifier() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(200, 2, generator=gen) + 5
    y = (x[:, 0] > 5).long()
    model = nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[-4.0, 0.0], [4.0, 0.0]]))
        model[1].bias.zero_()
        model[0].num_batches_tracked.fill_(100)  # trained, but its statistics describe other data
    return model.eval(), list(zip(x.split(50), y.split(50), strict=True))


def test_measured_effect_train_eval_recalibrated() -> None:
    model, pairs = _badly_calibrated_classifier()
    report = doctor(model, pairs)
    assert report.effect is not None and report.effect.loss_name == "cross-entropy"
    scores = {s.mode: s for s in report.effect.scores}
    assert scores["train"].accuracy > 0.9 and scores["recalibrated"].accuracy > 0.9
    assert scores["eval"].accuracy < 0.7 and scores["eval"].loss > 2 * scores["recalibrated"].loss
    assert report.effect.samples == 200 and "measured effect" in report.to_text()
    # Labels given separately: one tensor in batch order, or one tensor per batch.
    inputs = [x for x, _ in pairs]
    labels = torch.cat([y for _, y in pairs])
    for given in (labels, [y for _, y in pairs]):
        again = doctor(model, inputs, labels=given)
        assert again.effect is not None and again.effect.scores == report.effect.scores
    with pytest.raises(ValueError, match="labels has 199 entries"):
        doctor(model, inputs, labels=labels[:-1])


def test_regression_outputs_use_mean_squared_error() -> None:
    model = _calibrated(nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 1)), _vectors())
    report = doctor(model, _vectors(), labels=[torch.zeros(32, 1), torch.zeros(32, 1)])
    assert report.effect is not None and report.effect.loss_name == "mean squared error"
    assert all(s.accuracy is None for s in report.effect.scores)


def test_json_output() -> None:
    model, batches = _non_finite()
    model[0].running_mean[0] = float("inf")
    data = json.loads(_strict_json(doctor(model, batches)))
    assert data["counts"] == {"error": 1, "warning": 0, "info": 0} and data["healthy"] is False
    (finding,) = data["findings"]
    assert finding["code"] == "stats_non_finite" and finding["evidence"]["nonfinite_var"] == 1
    # The structure the JSON had stays; the summary, each finding's number and one-line evidence are added.
    assert set(finding) == {"code", "severity", "layer", "message", "evidence", "fix", "detail", "value"}
    assert set(data) == {"model", "layers", "batches", "samples", "findings", "effect", "notes", "counts",
                         "healthy", "summary", "gaps"}
    assert finding["value"] == 2 and data["summary"].startswith("1 problem(s): running statistics are NaN")


def _strict_json(report: Report) -> str:
    text = report.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    return text


def test_forward_callable_and_bad_input() -> None:
    model = _calibrated(nn.Sequential(nn.BatchNorm1d(5)), _vectors())
    report = doctor(model, [{"x": b} for b in _vectors()], forward=lambda m, batch: m(batch["x"]))
    assert report.healthy
    with pytest.raises(ValueError, match="at least one batch"):
        doctor(model, [])
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        doctor("model", _vectors())  # type: ignore[arg-type]


def test_frozen_layers_are_judged_on_what_they_do() -> None:
    """Frozen layers use no batch statistics: mode, momentum and batch size do not matter; their statistics do."""
    calibrated = _calibrated(nn.Sequential(nn.BatchNorm1d(5, momentum=0.99)), _vectors(64, 4))
    frozen = bnlab.convert(calibrated, to="frozen").train()
    assert doctor(frozen, _vectors(64, 4)).findings == ()
    shifted = [b + 10 for b in _vectors(64, 4)]
    assert [f.code for f in doctor(frozen, shifted).findings] == ["stats_mismatch"]


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6, bias=False), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_a_short_last_batch_is_no_finding() -> None:
    # 1030 samples in batches of 64: the last holds 6. The batch size is judged on the typical batch.
    batches = list(torch.randn(1030, 5, generator=torch.Generator().manual_seed(7)).split(64))
    report = doctor(_calibrated(_mlp(), batches), batches)
    assert report.findings == () and report.samples == 1030


@pytest.mark.parametrize(("sizes", "severity"), [
    pytest.param([1] * 8, "error", id="all-single-samples"),  # legal at inference: reported, not raised
    pytest.param([64, 64, 1], None, id="last-batch-single"),
])
def test_batches_of_one_value_per_channel_are_counted(sizes: list[int], severity: str | None) -> None:
    data = torch.randn(sum(sizes), 5, generator=torch.Generator().manual_seed(8))
    model = _calibrated(_mlp(), [data])
    report = doctor(model, list(data.split(sizes)))
    few = [f for f in report.findings if f.code == "few_values_per_channel"]
    if severity is None:
        assert few == [] and any("1 batch(es) gave layer '1' one value per channel" in n for n in report.notes)
    else:
        assert [(f.severity, f.layer, f.evidence["values_per_channel"]) for f in few] == [(severity, "1", 1)]
        assert few[0].evidence["batches_with_one_value"] == 8
    assert report.samples == sum(sizes)


def test_samples_are_counted_when_every_batch_norm_is_reused() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.bn(x))

    report = doctor(_calibrated(Twice(), _vectors()), _vectors())
    assert report.samples == 64 and [f.code for f in report.findings] == ["bn_reused"]


# ----------------------------------------------------------------------------------------------- grouped report

class _Branches(nn.Module):
    """Five batch norms side by side on the input (no cascade: each sees the data as it is), one after a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm2d(3) for _ in range(5))
        self.conv = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).reshape(3, 3, 1, 1))
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(bn(self.conv(x) if i == 4 else x) for i, bn in enumerate(self.norms))


def _many_mismatches() -> tuple[nn.Module, list[torch.Tensor]]:
    """Statistics that describe other data: E[x] off by 2σ, 1.5σ (errors), 0.6σ, 0.5σ, 0.4σ (warnings)."""
    model = _calibrated(_Branches(), _images(256))
    with torch.no_grad():
        for bn, shift in zip(model.norms, (4.0, 3.0, 1.2, 1.0, 0.8), strict=True):  # the data's σ is 2
            bn.running_mean.add_(shift)
            bn.num_batches_tracked.fill_(1000)
    return model, _images(256)


def test_findings_of_one_kind_are_one_entry_with_a_table_and_the_fix_once() -> None:
    model, batches = _many_mismatches()
    report = doctor(model, batches)
    lines = report.to_text().splitlines()
    summary = ("1 problem(s): running statistics do not describe this data (5 layers, error); advice: a conv/linear "
               "bias right before batch norm is wasted (1 layer); worst: layer 'norms.0', running statistics do not "
               "describe this data: eval error (σ) ")
    assert lines[1].startswith(summary) and float(lines[1][len(summary):]) == pytest.approx(2.0, rel=0.02)
    entry = lines.index("ERROR: running statistics do not describe this data (5 layers)")
    table = lines[entry + 1:entry + 7]
    assert table[0].split() == ["layer", "eval", "error", "(σ)", "evidence"]
    # Worst first, the severity shown per row where the kind mixes errors and warnings.
    rows = [row.split()[:3] for row in table[1:]]
    assert [row[:2] for row in rows] == [["norms.0", "error"], ["norms.1", "error"], ["norms.2", "warning"],
                                         ["norms.3", "warning"], ["norms.4", "warning"]]
    assert [float(row[2]) for row in rows] == pytest.approx([2.0, 1.5, 0.6, 0.5, 0.4], rel=0.02)
    assert lines[entry + 7].startswith("  fix: recompute the running statistics")
    assert sum(line.strip().startswith("fix:") for line in lines) == len(report.groups()) == 2
    assert [g.code for g in report.groups()] == ["stats_mismatch", "bias_before_bn"]


def test_not_converged_is_told_apart_from_data_that_differs() -> None:
    model, batches = _unconverged()
    (finding,) = doctor(model, batches).findings
    assert finding.code == "stats_not_converged"
    assert finding.evidence["initial_weight"] == pytest.approx(0.9 ** 3)
    assert finding.evidence["output_error_if_unconverged"] < 0.25 <= finding.evidence["output_error_mean"]
    assert "not data unlike the training data" in finding.message
    # The same statistics on shifted data: an unconverged average of *this* data would not hold them.
    (shifted,) = doctor(model, [b + 6 for b in batches]).findings
    assert shifted.code == "stats_mismatch" and "this data differs from the data the statistics were" in \
        shifted.message and "not converged either (73% initial values)" in shifted.detail
    # Recalibrated statistics count few batches too, but fit the data: nothing to report.
    assert doctor(_calibrated(model, batches), batches).findings == ()


def test_non_finite_data_is_an_error_naming_the_batch_not_a_nan_gap() -> None:
    # Issue 14: a NaN in the data made every layer "off by nan standard deviations".
    model, batches = _nan_in_batch_two()
    report = doctor(model, batches, labels=[torch.zeros(32, 5)] * 3)
    (finding,) = report.findings
    assert finding.code == "data_non_finite" and finding.detail == "batch 2 of 3: 1 NaN and 0 infinite input values"
    assert "nan" not in report.to_text().replace("NaN", "")  # no NaN number anywhere, only the word
    assert report.gaps and all(g.error_mean == g.error_mean for g in report.gaps)
    assert any("leaves out the 1 batch(es) with non-finite inputs" in n for n in report.notes)


def test_a_model_that_makes_nan_is_named_at_the_first_layer_that_sees_it() -> None:
    model, batches = _model_makes_nan()
    (finding,) = doctor(model, batches).findings
    assert (finding.code, finding.layer, finding.evidence["first_batch"]) == ("activations_non_finite", "1", 3)


def test_a_model_without_batch_norm_says_so() -> None:
    # Issue 14: it said "(0 samples) ... no findings: batch norm looks healthy".
    report = doctor(nn.Sequential(nn.Linear(5, 3)).eval(), _vectors())
    text = report.to_text()
    assert text.splitlines()[0] == ("bnlab doctor: Sequential with no batch-norm layer, checked on 2 batch(es) "
                                    "(64 samples)")
    assert "the model has no batch-norm layer: there is nothing for the doctor to check" in text
    assert "healthy" not in text


class _Noise(nn.Module):
    """Noise drawn in eval mode too: the model's own use of the caller's generator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.01 * torch.randn_like(x)


def test_the_doctor_leaves_every_random_generator_as_it_found_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 9: torch.manual_seed inside fork_rng(devices=[]) reseeded every CUDA generator for good.
    def no_cuda_reseed(*args: object) -> None:
        raise AssertionError("the doctor reseeded a CUDA generator of the caller")

    for name in ("manual_seed", "manual_seed_all", "seed", "seed_all"):
        monkeypatch.setattr(torch.cuda, name, no_cuda_reseed)
        monkeypatch.setattr(torch.cuda.random, name, no_cuda_reseed)
    # Dropout before batch norm: the doctor draws seeded dropout masks to measure the variance shift.
    model = _calibrated(nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(5), _Noise()), _vectors())
    torch.default_generator.manual_seed(1234)
    before = torch.get_rng_state()
    report = doctor(model, _vectors(), labels=[torch.zeros(32, 5)] * 2)
    assert [f.code for f in report.findings] == ["bn_after_dropout"]
    assert torch.equal(torch.get_rng_state(), before)


# ----------------------------------------------------------------------------------------------- HTML

def test_the_html_page_is_self_contained_and_escapes_names() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.add_module("<b>&bn", nn.BatchNorm1d(5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.get_submodule("<b>&bn")(x)

    model = _calibrated(Odd(), _vectors())
    page = doctor(model, [b + 5 for b in _vectors()], labels=[torch.zeros(32, 5)] * 2).to_html()
    assert page.startswith("<!DOCTYPE html>") and "&lt;b&gt;&amp;bn" in page and "<b>&bn" not in page
    assert "<script" not in page and "src=" not in page and "href=" not in page  # nothing to fetch
    assert 'id="stats_mismatch"' in page and 'id="gap-chart"' in page and 'id="effect-chart"' in page


# ---------------------------------------------------------------------------------- the batch-norm family
def test_few_values_recommends_renorm_and_ghost_batches_with_numbers() -> None:
    model = _calibrated(nn.Sequential(nn.BatchNorm1d(5)), _vectors(64, 4))
    (few,) = [f for f in doctor(model, _vectors(64, 4)).findings if f.code == "few_values_per_channel"]
    assert few.evidence["ghost_virtual_batch_size"] == 32  # one value per sample: 32 samples per ghost batch
    assert few.evidence["renorm_r_max"] == 3.0 and few.evidence["renorm_d_max"] == 5.0
    assert "to='renorm'" in few.fix and "'virtual_batch_size': 32" in few.fix and "18% of σ" in few.fix


def test_non_finite_statistics_name_the_non_finite_policy() -> None:
    model, data = _non_finite()
    (bad,) = [f for f in doctor(model, data).findings if f.code == "stats_non_finite"]
    assert "non_finite='skip_update'" in bad.fix


@pytest.mark.parametrize(("make", "sign"), [
    pytest.param(lambda: nn.BatchNorm1d(5, eps=1e-3), "eps=1e-3", id="keras-eps"),
    pytest.param(lambda: _darknet_start(nn.BatchNorm1d(5)), "darknet's start", id="darknet-running-var"),
])
def test_a_foreign_convention_left_on_a_layer_is_recognised(make: Callable[[], nn.Module], sign: str) -> None:
    model = nn.Sequential(make()).eval()
    (found,) = [f for f in doctor(model, _vectors()).findings if f.code == "foreign_convention"]
    assert sign in found.message and found.layer == "0"


def test_a_layer_with_the_keras_convention_set_is_not_flagged_for_its_eps() -> None:
    model = _calibrated(nn.Sequential(bnlab.BatchNorm1d(5, eps=1e-3, momentum=0.01, convention="keras")),
                        _vectors())
    assert not [f for f in doctor(model, _vectors()).findings if f.code == "foreign_convention"]


def _darknet_start(layer: nn.BatchNorm1d) -> nn.BatchNorm1d:
    with torch.no_grad():
        layer.running_var.zero_()
    return layer
