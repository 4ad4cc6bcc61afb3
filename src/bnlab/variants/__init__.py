"""Batch-norm variants written over the backend phases (:mod:`bnlab.kernels.base`): batch renormalization,
ghost batch norm and masked batch norm. Each is a :class:`~bnlab.variants.call.VariantCall`; the modules are in
:mod:`bnlab.nn` (``BatchRenorm*d``, ``GhostBatchNorm*d``, ``BatchNorm1d.forward(x, mask=)``)."""
