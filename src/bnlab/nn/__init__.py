"""Drop-in batch-norm modules (subclasses of torch's) that run on a bnlab backend, their fused
BN+activation variants, their frozen form, lazy forms that infer the number of features, the per-layer
statistics policy, SyncBatchNorm (statistics over every process of a torch.distributed group), and the family:
batch renorm (``BatchRenorm*d``) and ghost batch norm (``GhostBatchNorm*d``)."""

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.batchnorm_act import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
from bnlab.nn.frozen import FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d, FrozenBatchNormBase
from bnlab.nn.ghost import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d
from bnlab.nn.lazy import LazyBatchNorm1d, LazyBatchNorm2d, LazyBatchNorm3d
from bnlab.nn.policy import StatsPolicy, policy_override
from bnlab.nn.renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, renorm_schedule
from bnlab.nn.sync import SyncBatchNorm, SyncBatchNormAct, SyncBatchNormError

# Imported for its effect: torch's fusion, quantization and SyncBatchNorm tools learn bnlab's layers.
from bnlab.nn import torch_integration  # noqa: F401  # isort: skip

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "BatchNormAct3d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "FrozenBatchNormBase",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "StatsPolicy",
    "SyncBatchNorm",
    "SyncBatchNormAct",
    "SyncBatchNormError",
    "policy_override",
    "renorm_schedule",
]
