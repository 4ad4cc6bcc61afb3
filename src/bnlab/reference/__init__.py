"""The paper's algorithms in plain torch ops: readable, any float dtype, and a backend (``backend="reference"``).

- :mod:`bnlab.reference.algorithm1`: the training transform and three equivalent backward passes.
- :mod:`bnlab.reference.algorithm2`: population statistics and the folded inference transform.
- :mod:`bnlab.reference.darknet`: darknet's CPU batch-norm layer, ported function by function.
"""

from bnlab.reference import darknet
from bnlab.reference.algorithm1 import (
    ForwardResult,
    Gradients,
    accumulation_dtype,
    backward_compact,
    backward_darknet,
    backward_paper,
    forward_train,
    per_channel,
    reduction_dims,
    values_per_channel,
)
from bnlab.reference.algorithm2 import (
    InferenceAffine,
    PopulationStatistics,
    forward_inference,
    inference_affine,
    population_statistics,
)

__all__ = [
    "ForwardResult",
    "Gradients",
    "InferenceAffine",
    "PopulationStatistics",
    "accumulation_dtype",
    "backward_compact",
    "backward_darknet",
    "backward_paper",
    "darknet",
    "forward_inference",
    "forward_train",
    "inference_affine",
    "per_channel",
    "population_statistics",
    "reduction_dims",
    "values_per_channel",
]
