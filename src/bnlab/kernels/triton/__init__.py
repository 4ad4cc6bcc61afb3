"""The ``triton`` backend: batch norm (fused with a residual and an activation) as Triton kernels, for the GPU.

Where it runs: on CUDA when ``triton`` imports; on CPU tensors only under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how CI tests these kernels against the reference without a GPU. The kernels
(:mod:`.kernels`) are imported on first use, never here: importing triton before ``TRITON_INTERPRET=1`` is set would
fix its mode for the whole process. :mod:`.plan` chooses launch plans, :mod:`.backend` calls the kernels.
"""

from bnlab.kernels.triton.backend import TritonBackend, launching_on
from bnlab.kernels.triton.plan import INTERPRETER_PROGRAMS, Plan, gpu_programs, plan, programs_wanted

__all__ = ["INTERPRETER_PROGRAMS", "Plan", "TritonBackend", "gpu_programs", "launching_on", "plan",
           "programs_wanted"]
