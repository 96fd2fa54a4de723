"""One MEDS step between the rewards and the GRPO advantages, shared by the framework adapters (TRL, veRL).

:func:`meds_step` updates the memory, computes each rollout's penalty and shaped reward, and the ``meds/*`` metrics,
so every adapter applies exactly the same step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from meds_core.step.memory import ErrorMemory, StepResult
from meds_core.step.shaping import shape
from meds_core.step.step_stats import step_metrics

__all__ = ["ShapedStep", "SizesHook", "meds_step"]

SizesHook = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class ShapedStep:
    """``shaped`` float64 [B] rewards, ``penalty`` float64 [B], the memory's ``step`` and the ``meds/*`` metrics."""

    shaped: np.ndarray
    penalty: np.ndarray
    step: StepResult
    metrics: dict[str, float]


def meds_step(memory: ErrorMemory, keys: Sequence[Any], features: Any, correct: np.ndarray, rewards: np.ndarray, *,
              group_ids: Any, no_answer: np.ndarray, metric_rows: np.ndarray | None = None,
              sizes_hook: SizesHook | None = None) -> ShapedStep:
    """Update ``memory`` with the batch and shape ``rewards`` from the cluster sizes.

    Args:
        keys: B stable prompt keys; features: float [B, F] (NaN rows are not stored); correct: int8 [B] (1, 0,
            -1 unknown); rewards: float [B] outcome rewards; group_ids: [B] GRPO group of each rollout;
            no_answer: bool [B].
        metric_rows: bool [B], the rows the metrics describe (default all; e.g. not a framework's padding samples).
        sizes_hook: ``(sizes, correct, group_ids) -> sizes`` may replace the cluster sizes used for the penalties
            (controls, ablations); the memory is updated the same way either way.
    """
    step = memory.update(keys, features, correct)
    sizes = step.cluster_size
    if sizes_hook is not None:
        sizes = np.asarray(sizes_hook(sizes.copy(), correct.copy(), np.asarray(group_ids).copy()), dtype=np.int64)
        if sizes.shape != step.cluster_size.shape:
            raise ValueError(f"the cluster-size hook returned shape {sizes.shape}; expected {step.cluster_size.shape}.")
    raw = np.asarray(rewards, dtype=np.float64)
    shaped, pen = shape(raw, sizes, correct, memory.config.shaping_params(), group_ids=np.asarray(group_ids))
    if metric_rows is None:
        m = np.ones(len(raw), bool)
        metrics = step_metrics(memory, step, keys, pen, no_answer)
    else:
        m = np.asarray(metric_rows, bool)
        sub = StepResult(step.cluster_size[m], step.label[m], step.group[m], step.valid[m], step.stats)
        metrics = step_metrics(memory, sub, [k for k, keep in zip(keys, m) if keep], pen[m], np.asarray(no_answer)[m])
    metrics["meds/raw_reward_mean"] = float(raw[m].mean()) if m.any() else 0.0
    metrics["meds/shaped_reward_mean"] = float(shaped[m].mean()) if m.any() else 0.0
    return ShapedStep(shaped=shaped, penalty=pen, step=step, metrics=metrics)
