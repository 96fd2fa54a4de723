"""One MEDS step on a gathered TRL batch: correctness, memory update, shaped rewards, ``meds/*`` metrics.

Shared by :class:`~meds_core.adapters.trl.MEDSGRPOTrainer` and :class:`~meds_core.adapters.trl.MEDSPenaltyReward`.
Every process calls it with the same gathered inputs, so every process holds an identical memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from meds_core.keys import stable_prompt_key
from meds_core.memory import ErrorMemory, StepResult
from meds_core.shaping import penalties, shape_rewards
from meds_core.step_metrics import step_metrics

SizesHook = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class ShapedStep:
    """``shaped`` float64 [N] rewards, ``penalty`` float64 [N], the memory's ``step`` and the ``meds/*`` metrics."""

    shaped: np.ndarray
    penalty: np.ndarray
    step: StepResult
    metrics: dict[str, float]


def correctness(values: Any, threshold: float) -> np.ndarray:
    """int8 [N]: 1 where the reward is > ``threshold``, 0 where it is not, -1 where it is NaN (unscored)."""
    v = np.asarray(values.detach().cpu().double() if hasattr(values, "detach") else values, dtype=np.float64)
    return np.where(np.isnan(v), -1, v > threshold).astype(np.int8)


def prompt_text_key(prompt: Any) -> str:
    """Stable key of a prompt without an id column: the text (chat prompts: their JSON) hashed."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str)
    return stable_prompt_key(text)


def shape_step(memory: ErrorMemory, keys: Sequence[Any], features: Any, correct: np.ndarray, rewards: np.ndarray,
               group_ids: np.ndarray, no_answer: np.ndarray, sizes_hook: SizesHook | None = None) -> ShapedStep:
    """Update ``memory`` with the batch and shape ``rewards`` (float [N]) from the cluster sizes.

    ``sizes_hook(sizes, correct, group_ids)`` may replace the cluster sizes used for the penalties (controls and
    ablations); the memory itself is updated the same way either way.
    """
    step = memory.update(keys, features, correct)
    sizes = step.cluster_size
    if sizes_hook is not None:
        sizes = np.asarray(sizes_hook(sizes.copy(), correct.copy(), group_ids.copy()), dtype=np.int64)
        if sizes.shape != step.cluster_size.shape:
            raise ValueError(f"meds_cluster_sizes returned shape {sizes.shape}; expected {step.cluster_size.shape}.")
    kw = memory.config.shaping_kwargs()
    pen = penalties(sizes, correct, group_ids=group_ids, **kw)
    shaped = shape_rewards(rewards, sizes, correct, group_ids=group_ids, **kw)
    return ShapedStep(shaped=shaped, penalty=pen, step=step,
                      metrics=step_metrics(memory, step, keys, pen, no_answer))
