"""Drop-in batch-norm modules (subclasses of torch's) that run on a bnlab backend, their fused
BN+activation variants, their frozen form, and the per-layer statistics policy."""

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.batchnorm_act import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
from bnlab.nn.frozen import FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d, FrozenBatchNormBase
from bnlab.nn.policy import StatsPolicy, policy_override

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "BatchNormAct3d",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "FrozenBatchNormBase",
    "StatsPolicy",
    "policy_override",
]
