"""How Keras, Flax and darknet define batch norm, as data beside PyTorch's (which bnlab keeps).

Every framework normalizes y = γ·(x − μ)/root + β with per-channel statistics and keeps running averages, but
they differ in ε and where it sits, the meaning of momentum, which batch variance normalizes (biased σ²_B or
unbiased s²) and which one is averaged, the running variance's start and the channel axis. Each
:class:`Convention` below records those choices as read from the frameworks' sources (Keras 3.15
``layers/normalization/batch_normalization.py`` and its torch backend; Flax 0.12 ``linen/normalization.py``;
pjreddie/darknet ``src/blas.c`` and ``src/batchnorm_layer.c``); docs/compat.md tabulates them. All four update
the running values as new = a·old + b·batch (:meth:`Convention.update_weights`); torch's ``momentum`` is b.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bnlab.reference import darknet

Variance = Literal["biased", "unbiased"]


@dataclass(frozen=True)
class Convention:
    """One framework's batch-norm rules.

    Attributes:
        name: "torch", "keras", "flax" or "darknet".
        eps: the default ε.
        eps_inside_root: True for x̂ = (x − μ)/√(σ² + ε); False for darknet's (x − μ)/(√σ² + ε).
        momentum: the default momentum, in the framework's own meaning (see ``momentum_weighs``).
        momentum_weighs: "batch" when momentum is the weight of the new batch (torch: new = (1 − m)·old + m·batch),
            "running" when it is the decay of the old value (Keras, Flax, darknet: new = m·old + (1 − m)·batch).
        momentum_configurable: False where the framework hard-codes the update (darknet's .99 and .01).
        variance_used: the batch variance that normalizes in training.
        variance_stored: the batch variance averaged into the running variance.
        running_var_init: the running variance before any batch (the running mean starts at 0 everywhere).
        channel_axis: the channel axis of the framework's default layout.
        fixed_update: (weight of the old value, weight of the batch) where hard-coded: darknet's float literals
            .99f and .01f, whose sum is not exactly 1.
    """

    name: str
    eps: float
    eps_inside_root: bool
    momentum: float
    momentum_weighs: Literal["batch", "running"]
    momentum_configurable: bool
    variance_used: Variance
    variance_stored: Variance
    running_var_init: float
    channel_axis: int
    fixed_update: tuple[float, float] | None = None

    def update_weights(self, momentum: float | None = None) -> tuple[float, float]:
        """(a, b) of the running update new = a·old + b·batch, for a momentum in this framework's meaning."""
        if self.fixed_update is not None:
            if momentum is not None and momentum != self.momentum:
                raise ValueError(f"{self.name} hard-codes its running update (decay {self.momentum}); "
                                 f"got momentum={momentum}")
            return self.fixed_update
        decay = self.decay(momentum)
        return decay, 1.0 - decay

    def decay(self, momentum: float | None = None) -> float:
        """The weight of the old running value, from a momentum in this framework's meaning (default: its own)."""
        m = self.momentum if momentum is None else momentum
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"{self.name} momentum must be in [0, 1], got {m}")
        return 1.0 - m if self.momentum_weighs == "batch" else m

    def to_torch_momentum(self, momentum: float | None = None) -> float:
        """torch's momentum (the weight of the batch) equal to this framework's ``momentum``: Keras 0.99 → 0.01."""
        return _decimal(1.0 - self.decay(momentum))

    def from_torch_momentum(self, torch_momentum: float) -> float:
        """This framework's momentum equal to torch's ``torch_momentum``: 0.1 → Keras's 0.9."""
        if not 0.0 <= torch_momentum <= 1.0:
            raise ValueError(f"torch momentum must be in [0, 1], got {torch_momentum}")
        return torch_momentum if self.momentum_weighs == "batch" else _decimal(1.0 - torch_momentum)


def _decimal(value: float) -> float:
    """1 − m rounded to 15 significant digits, so that converting back and forth gives 0.1, not 0.09999999999999998
    (a change of at most 1e-15 relative: momenta are decimal choices)."""
    return float(f"{value:.15g}")


TORCH = Convention(name="torch", eps=1e-5, eps_inside_root=True, momentum=0.1, momentum_weighs="batch",
                   momentum_configurable=True, variance_used="biased", variance_stored="unbiased",
                   running_var_init=1.0, channel_axis=1)
KERAS = Convention(name="keras", eps=1e-3, eps_inside_root=True, momentum=0.99, momentum_weighs="running",
                   momentum_configurable=True, variance_used="biased", variance_stored="biased",
                   running_var_init=1.0, channel_axis=-1)
FLAX = Convention(name="flax", eps=1e-5, eps_inside_root=True, momentum=0.99, momentum_weighs="running",
                  momentum_configurable=True, variance_used="biased", variance_stored="biased",
                  running_var_init=1.0, channel_axis=-1)
# The constants are the port's, read from darknet's C (float literals): one place for each.
DARKNET = Convention(name="darknet", eps=darknet.NORMALIZE_EPS, eps_inside_root=False,
                     momentum=darknet.ROLLING_DECAY, momentum_weighs="running", momentum_configurable=False,
                     variance_used="unbiased", variance_stored="unbiased", running_var_init=0.0, channel_axis=1,
                     fixed_update=(darknet.ROLLING_DECAY, darknet.ROLLING_WEIGHT))

CONVENTIONS = {c.name: c for c in (TORCH, KERAS, FLAX, DARKNET)}


def get_convention(convention: str | Convention) -> Convention:
    """The Convention of that name ("torch", "keras", "flax", "darknet"), or the Convention given."""
    if isinstance(convention, Convention):
        return convention
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of {sorted(CONVENTIONS)}")
    return CONVENTIONS[convention]
