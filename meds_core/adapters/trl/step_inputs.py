"""Inputs of a MEDS step on a TRL batch: correctness from a reward column (prompt keys without an id column come
from :func:`meds_core.step.keys.prompt_key`).

Shared by :class:`~meds_core.adapters.trl.MEDSGRPOTrainer` and :class:`~meds_core.adapters.trl.MEDSPenaltyReward`,
which then run :func:`~meds_core.step.rl_step.meds_step` on the gathered batch (the same inputs on every process,
so every process holds an identical memory).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def correctness(values: Any, threshold: float) -> np.ndarray:
    """int8 [N]: 1 where the reward is > ``threshold``, 0 where it is not, -1 where it is NaN (unscored)."""
    v = np.asarray(values.detach().cpu().double() if hasattr(values, "detach") else values, dtype=np.float64)
    return np.where(np.isnan(v), -1, v > threshold).astype(np.int8)
