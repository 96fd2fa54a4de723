"""Per-step MEDS metrics shared by the framework adapters (veRL, TRL), so both log the same names and meanings.

Names (each a float; the adapters log them as they are):

``meds/penalty_mean``     mean penalty over the rows MEDS may penalise this step: stored rows (finite feature, known
                          correctness) whose correctness group is targeted by ``cluster_penalty_target`` (wrong rows
                          for the default ``"wrong"``); 0 when there are none or the target is ``"none"``.
``meds/penalized_frac``   fraction of ALL rows of the batch whose penalty is > 0.
``meds/clusters_mean``    mean number of distinct clusters (labels >= 0, noise excluded) per memory touched this step,
                          read from the memory after the step's re-clustering; 0 when no memory was touched.
``meds/memory_rows``      rows stored over all memories after the step (``StepResult.stats["rows_stored"]``).
``meds/evicted_prompts`` prompts evicted whole by the ``max_total_rows`` budget at this step
                          (``StepResult.stats["evicted_prompts"]``).
``meds/no_answer_frac``   fraction of rows with no answer marker (no feature, never penalised).
``meds/cluster_seconds``  seconds spent in the step's clustering call (``StepResult.stats["cluster_seconds"]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from meds_core.step._arrays import to_numpy
from meds_core.step.memory import ErrorMemory, StepResult

__all__ = ["METRIC_NAMES", "step_metrics"]

METRIC_NAMES = ("meds/penalty_mean", "meds/penalized_frac", "meds/clusters_mean", "meds/memory_rows",
                "meds/evicted_prompts", "meds/no_answer_frac", "meds/cluster_seconds")

_TARGET_GROUPS = {"wrong": (0,), "right": (1,), "both": (0, 1), "none": ()}


def _vector(x: Any, name: str, n: int) -> np.ndarray:
    v = to_numpy(x, name)
    if v.shape != (n,):
        raise ValueError(f"{name} has shape {v.shape}; expected ({n},), one value per row of the step.")
    return v


def step_metrics(memory: ErrorMemory, step: StepResult, keys: Sequence[Any], penalties: Any,
                 no_answer: Any) -> dict[str, float]:
    """The ``meds/*`` metrics of one RL step (see the module docstring for each definition).

    Parameters
    ----------
    memory : ErrorMemory
        The memory right after ``step = memory.update(keys, ...)``; its config gives the penalty target.
    step : StepResult
        What that update returned (arrays of length B).
    keys : sequence of str or int, length B
        The prompt keys passed to that update.
    penalties : array-like of shape (B,), float
        Penalty applied to each row (``meds_core.penalties(...)``; 0 where not penalised).
    no_answer : array-like of shape (B,), bool
        True where the response had no answer marker (so no feature).

    Returns
    -------
    dict mapping each name of ``METRIC_NAMES`` to a float.
    """
    n = len(step.valid)
    keys = keys.tolist() if hasattr(keys, "tolist") else list(keys)  # numpy array or tensor of ids
    if len(keys) != n:
        raise ValueError(f"keys has length {len(keys)}; expected {n}, the length of the StepResult.")
    pen = _vector(penalties, "penalties", n).astype(np.float64)
    miss = _vector(no_answer, "no_answer", n).astype(bool)
    targeted = step.valid & np.isin(step.group, _TARGET_GROUPS[memory.config.cluster_penalty_target])
    touched = dict.fromkeys((keys[i], int(step.group[i])) for i in np.flatnonzero(step.valid))
    clusters = [np.unique(lab[lab >= 0]).size for lab in (memory.labels(k, g) for k, g in touched)]
    return {
        "meds/penalty_mean": float(pen[targeted].mean()) if targeted.any() else 0.0,
        "meds/penalized_frac": float((pen > 0).mean()) if n else 0.0,
        "meds/clusters_mean": float(np.mean(clusters)) if clusters else 0.0,
        "meds/memory_rows": float(step.stats.get("rows_stored", memory.num_rows)),
        "meds/evicted_prompts": float(step.stats.get("evicted_prompts", 0)),
        "meds/no_answer_frac": float(miss.mean()) if n else 0.0,
        "meds/cluster_seconds": float(step.stats.get("cluster_seconds", 0.0)),
    }
