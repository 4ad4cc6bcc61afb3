"""Other frameworks' batch norm: their conventions as data, what they compute (float64), and converters.

- :mod:`bnlab.compat.conventions`: :class:`Convention` and ``TORCH``, ``KERAS``, ``FLAX``, ``DARKNET``: ε and where
  it sits, the momentum's meaning, which variance normalizes and which is stored, the running variance's start;
- :mod:`bnlab.compat.steps`: :func:`train_step_reference` and :func:`infer_reference`, each framework's forward and
  running update in float64, tested against Keras 3 and Flax themselves;
- :mod:`bnlab.compat.keras_layer`, :mod:`bnlab.compat.flax_variables` and :mod:`bnlab.compat.darknet_layer`: a
  Keras ``BatchNormalization`` layer, a Flax ``nn.BatchNorm``'s variables or darknet's layer to a bnlab module
  (:class:`Ported`: the module, following the source's ``convention``, the layout, notes) and back.

docs/compat.md walks through a port and gives the module-level ``convention=`` setting's matrix.
"""

from bnlab.compat.conventions import CONVENTIONS, DARKNET, FLAX, KERAS, TORCH, Convention, get_convention
from bnlab.compat.darknet_layer import from_darknet, to_darknet
from bnlab.compat.flax_variables import flax_config, flax_variables, from_flax, to_flax
from bnlab.compat.keras_layer import from_keras, keras_config, keras_weights, to_keras
from bnlab.compat.modules import Ported
from bnlab.compat.steps import BatchNormState, TrainStep, infer_reference, initial_state, train_step_reference

__all__ = [
    "CONVENTIONS",
    "DARKNET",
    "FLAX",
    "KERAS",
    "TORCH",
    "BatchNormState",
    "Convention",
    "Ported",
    "TrainStep",
    "flax_config",
    "flax_variables",
    "from_darknet",
    "from_flax",
    "from_keras",
    "get_convention",
    "infer_reference",
    "initial_state",
    "keras_config",
    "keras_weights",
    "to_darknet",
    "to_flax",
    "to_keras",
    "train_step_reference",
]
