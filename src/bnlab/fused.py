"""``bnlab.fused``: where :func:`batch_norm_act` was first published; it now lives in :mod:`bnlab.functional`.

Kept so that ``bnlab.fused.batch_norm_act`` (documented public API) keeps working; new code should import
``bnlab.functional.batch_norm_act``.
"""

from bnlab._checks import SAVE_MODES, check_act_args
from bnlab.functional import batch_norm_act

__all__ = ["SAVE_MODES", "batch_norm_act", "check_act_args"]
