"""Drop-in batch-norm modules (subclasses of torch's) that run on a bnlab backend."""

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.batchnorm_act import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormAct1d", "BatchNormAct2d", "BatchNormAct3d"]
