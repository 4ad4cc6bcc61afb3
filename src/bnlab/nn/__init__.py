"""Drop-in batch-norm modules (subclasses of torch's) that run on a bnlab backend."""

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]
