"""bnlab.summary: parameter counts against hand counts, output shapes, the caller's model left as it was, errors.

The same counts against Keras's own ``model.summary()``: tests/compat/test_summary_keras.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

import bnlab
from bnlab.tools.summary import ModelSummary, summary


def mlp_bn() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 100, bias=False), torch.nn.BatchNorm1d(100),
                               torch.nn.ReLU(), torch.nn.Linear(100, 10))


class Tied(torch.nn.Module):
    """An encoder and a decoder sharing one weight (as tied embeddings do)."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = torch.nn.Linear(6, 4, bias=False)
        self.decode = torch.nn.Linear(4, 6, bias=False)
        self.decode.weight = self.encode.weight  # type: ignore[assignment]  # (4, 6) used transposed below

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(self.encode(x), self.encode.weight.T)


class WithCache(torch.nn.Module):
    """A layer with its own parameter, a persistent float buffer and a non-persistent cache."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(5))
        self.register_buffer("shift", torch.zeros(5))
        self.register_buffer("cache", torch.zeros(100), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def frozen_first() -> torch.nn.Sequential:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)
    return model


# (model, input_size, trainable, non-trainable, counters): counted by hand.
CASES = [
    # Linear 784·100 (no bias) + BN γ, β 2·100 + Linear 100·10 + 10; the running mean and variance 2·100.
    pytest.param(mlp_bn, (1, 28, 28), 78_400 + 200 + 1_010, 200, 1, id="mlp-bn"),
    pytest.param(lambda: torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, bias=False), bnlab.BatchNorm2d(8)),
                 (1, 10, 10), 72 + 16, 16, 1, id="conv-bnlab-bn"),
    # Without running statistics the layer holds γ and β only, and no counter.
    pytest.param(lambda: torch.nn.BatchNorm1d(7, track_running_stats=False), (7,), 14, 0, 0, id="bn-no-stats"),
    # affine=False: no γ, β; the statistics remain.
    pytest.param(lambda: torch.nn.BatchNorm1d(7, affine=False), (7,), 0, 14, 1, id="bn-not-affine"),
    # A frozen batch norm: γ, β, mean and variance, all buffers, none trained (its counter kept for state_dicts).
    pytest.param(lambda: bnlab.FrozenBatchNorm2d(3), (3, 4, 4), 0, 12, 1, id="frozen-bn"),
    pytest.param(frozen_first, (4,), 3 + 6 + 2, 12, 0, id="requires-grad-false"),
    pytest.param(Tied, (6,), 24, 0, 0, id="shared-weight-counted-once"),
    pytest.param(WithCache, (5,), 5, 5, 0, id="non-persistent-buffer-not-counted"),
]


@pytest.mark.parametrize(("make", "size", "trainable", "non_trainable", "counters"), CASES)
def test_counts_match_hand_counts(make, size, trainable: int, non_trainable: int, counters: int) -> None:  # type: ignore[no-untyped-def]
    found = summary(make(), size)
    assert (found.trainable, found.non_trainable, found.counters) == (trainable, non_trainable, counters)
    assert found.total == trainable + non_trainable
    assert sum(layer.params for layer in found.layers) == found.total  # each tensor in one row only


def test_rows_shapes_and_text() -> None:
    found = summary(mlp_bn(), (1, 28, 28))
    assert [(r.name, r.kind, r.output_shape, r.params) for r in found.layers] == [
        ("0", "Flatten", "(None, 784)", 0), ("1", "Linear", "(None, 100)", 78_400),
        ("2", "BatchNorm1d", "(None, 100)", 400), ("3", "ReLU", "(None, 100)", 0),
        ("4", "Linear", "(None, 10)", 1_010)]
    bn = found.layers[2]
    assert (bn.trainable, bn.non_trainable) == (200, 200)  # seed 004: 4 per feature, 2 trained
    text = str(found)
    for line in ("Total params: 79,810 (311.76 KB)", "Trainable params: 79,610 (310.98 KB)",
                 "Non-trainable params: 200 (800.00 B)", "Not counted: 1 integer buffer element(s)",
                 " 2 (BatchNorm1d)", "(None, 1, 28, 28)"):
        assert line in text, line
    convs = summary(torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.MaxPool2d(2)), (1, 10, 10))
    assert [r.output_shape for r in convs.layers] == ["(None, 8, 8, 8)", "(None, 8, 4, 4)"]


def test_collapsed_rows_of_a_deep_network() -> None:
    layers: list[torch.nn.Module] = [torch.nn.Flatten()]
    for i in range(100):
        layers += [torch.nn.Linear(784 if i == 0 else 100, 100, bias=False), torch.nn.BatchNorm1d(100),
                   torch.nn.ReLU()]
    layers.append(torch.nn.Linear(100, 10))
    found = summary(torch.nn.Sequential(*layers), (1, 28, 28))
    assert len(found.layers) == 302
    assert found.rows(collapse=True) == [  # the block (BatchNorm1d, ReLU, Linear) repeats 99 times from layer 2
        ["0 (Flatten)", "(None, 784)", 0, 0, 0],
        ["1 (Linear)", "(None, 100)", 78_400, 78_400, 0],
        ["2 … 296 (BatchNorm1d) ×99", "(None, 100)", 400, 200, 200],
        ["3 … 297 (ReLU) ×99", "(None, 100)", 0, 0, 0],
        ["4 … 298 (Linear) ×99", "(None, 100)", 10_000, 10_000, 0],
        ["299 (BatchNorm1d)", "(None, 100)", 400, 200, 200],
        ["300 (ReLU)", "(None, 100)", 0, 0, 0],
        ["301 (Linear)", "(None, 10)", 1_010, 1_010, 0]]
    assert found.total == 78_400 + 99 * 10_000 + 100 * 400 + 1_010
    assert summary(torch.nn.Sequential(*(torch.nn.Linear(10, 10) for _ in range(5))), (10,)).rows(collapse=True) \
        == [["0 … 4 (Linear) ×5", "(None, 10)", 110, 110, 0]]
    assert len(found.rows()) == 302  # without collapse: every layer


def test_without_input_only_parameters() -> None:
    found = summary(mlp_bn())
    assert found.total == 79_810 and all(r.output_shape == "—" for r in found.layers) and found.input_shape == ""


def test_input_data_and_several_inputs() -> None:
    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(3, 2), torch.nn.Linear(5, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.a(x), self.b(y)

    found = summary(Pair(), [(3,), (5,)])
    assert [r.output_shape for r in found.layers] == ["(None, 2)", "(None, 2)"]
    given = summary(torch.nn.Linear(3, 4), input_data=torch.zeros(7, 3))
    assert given.layers[0].output_shape == "(None, 4)" and given.layers[0].name == "(model)"


def test_the_model_is_left_as_it_was() -> None:
    model = mlp_bn()
    model.train()
    model[4].eval()  # a mixed state must come back as it was, not as all-train
    with torch.no_grad():
        model[2].running_mean.fill_(0.5)
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    summary(model, (1, 28, 28))
    assert [m.training for m in model] == [True, True, True, True, False]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no running statistic or counter moved
    assert torch.equal(rng, torch.get_rng_state())  # the global generator was not drawn from
    assert all(not m._forward_hooks for m in model.modules())  # no hook left behind


def test_a_reused_module_counts_its_calls() -> None:
    act = torch.nn.ReLU()
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), act, torch.nn.Linear(3, 3), act)
    found = summary(model, (3,))
    assert [r.calls for r in found.layers] == [1, 2, 1]  # the shared ReLU appears once, called twice


@pytest.mark.parametrize(("call", "error", "message"), [
    pytest.param(lambda: summary("model"), TypeError, "torch.nn.Module", id="not-a-module"),  # type: ignore[arg-type]
    pytest.param(lambda: summary(torch.nn.LazyLinear(3), (4,)), ValueError, "lazy", id="lazy"),
    pytest.param(lambda: summary(mlp_bn(), (28, -1)), ValueError, "positive integers", id="negative-size"),
    pytest.param(lambda: summary(mlp_bn(), (1, 28, 27)), ValueError, r"failed on input of shape \(2, 1, 28, 27\)",
                 id="forward-fails"),
    pytest.param(lambda: summary(mlp_bn(), (784,), input_data=torch.zeros(2, 784)), ValueError, "not both",
                 id="both-inputs"),
    pytest.param(lambda: summary(mlp_bn(), (784,), batch_size=0), ValueError, "batch_size", id="batch-0"),
])
def test_bad_input_is_a_clear_error(call, error: type[Exception], message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        call()


def test_exported_from_the_package() -> None:
    assert bnlab.summary is summary and bnlab.tools.summary is summary
    assert isinstance(bnlab.summary(torch.nn.Linear(2, 2)), ModelSummary)
