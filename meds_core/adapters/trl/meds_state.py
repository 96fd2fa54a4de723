"""The MEDS state of one TRL run, shared by both TRL paths (:class:`MEDSGRPOTrainer` and :class:`MEDSPenaltyReward`).

One place for: the memory and its checkpoint file (:data:`MEMORY_FILE`, written by :meth:`MEDSState.save`, read by
:meth:`MEDSState.load`), the feature capture, the prompt keys (a dataset id column, else a hash of the prompt text,
with one warning), and the gathered step (features, no-answer flags and keys gathered over all processes, then
:func:`meds_core.step.rl_step.meds_step`, so every process holds an identical memory).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from meds_core.step.capture import FeatureCapture
from meds_core.step.config import MEDSConfig
from meds_core.step.keys import prompt_key
from meds_core.step.memory import ErrorMemory
from meds_core.step.rl_step import ShapedStep, SizesHook, meds_step

from .checkpoints import MEMORY_FILE
from .step_inputs import correctness

__all__ = ["MEDSState", "MEMORY_FILE"]

logger = logging.getLogger(__name__)

_CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


class MEDSState:
    """Memory, capture, keys, step and checkpoint file of one MEDS run inside TRL.

    Parameters
    ----------
    config : MEDSConfig
    prompt_key_column : str
        Dataset column holding a stable prompt id.
    correct_threshold : float
        A completion is correct when its correctness reward is > this; NaN (``None``) rewards are unknown.
    """

    def __init__(self, config: MEDSConfig | None, prompt_key_column: str, correct_threshold: float) -> None:
        config = MEDSConfig() if config is None else config
        if not isinstance(config, MEDSConfig):
            raise TypeError(f"meds_config must be a MEDSConfig, got {type(config).__name__}; build one with "
                            "MEDSConfig(...) or MEDSConfig.from_dict(d).")
        self.config = config
        self.memory = ErrorMemory(config)
        self.prompt_key_column = prompt_key_column
        self.correct_threshold = float(correct_threshold)
        self.capture: FeatureCapture | None = None
        self.last_correct = np.zeros(0, np.int8)  # correctness (1, 0, -1 unknown) of the last step's batch
        self._warned_key = False

    def attach(self, model: torch.nn.Module) -> FeatureCapture:
        """(Re)place the feature-capture hooks on ``model`` (the unwrapped policy)."""
        if self.capture is not None:
            self.capture.remove()
        self.capture = FeatureCapture(model, self.config)
        return self.capture

    # -- keys ----------------------------------------------------------------------------------------------------------

    def warn_missing_key_column(self) -> None:
        """Log, once per run, that prompts are keyed by a hash of their text."""
        if not self._warned_key:
            self._warned_key = True
            logger.warning("MEDS: the dataset has no %r column; keying each prompt's memory by a hash of its text. "
                           "Add a stable id column (prompt_key_column=...) if prompts can be rewritten (tools, "
                           "environments).", self.prompt_key_column)

    def keys(self, column_values: Sequence[Any] | None, prompts: Sequence[Any]) -> list[Any]:
        """Prompt key of each local completion: the id column's values, else a hash of each prompt."""
        if column_values is not None:
            return list(column_values)
        self.warn_missing_key_column()
        return [prompt_key(p) for p in prompts]

    # -- the gathered step ---------------------------------------------------------------------------------------------

    def step(self, features: torch.Tensor, no_answer: np.ndarray, keys: Sequence[Any], rewards: Any,
             num_generations: int, device: torch.device | str, sizes_hook: SizesHook | None = None) -> ShapedStep:
        """Gather the local batch over all processes and run one MEDS step on it.

        Parameters
        ----------
        features : torch.Tensor, float32 [B_local, F]
            NaN rows: no answer.
        no_answer : ndarray of shape (B_local,), bool
        keys : B_local prompt keys.
        rewards : float [N] correctness rewards of the whole (already gathered) batch, N = B_local * processes.
        num_generations : int
            Completions per prompt (contiguous groups of that size).

        Returns
        -------
        ShapedStep over the N gathered completions.
        """
        from accelerate.utils import gather, gather_object

        all_feats = gather(features.to(device).float()).cpu()
        all_no_answer = gather(torch.as_tensor(np.asarray(no_answer, bool), device=device)).cpu().numpy().astype(bool)
        all_keys = gather_object(list(keys))
        raw = np.asarray(rewards.detach().cpu().double() if hasattr(rewards, "detach") else rewards, np.float64)
        correct = self.last_correct = correctness(raw, self.correct_threshold)
        group_ids = np.arange(len(correct), dtype=np.int64) // int(num_generations)
        return meds_step(self.memory, all_keys, all_feats, correct, raw, group_ids=group_ids, no_answer=all_no_answer,
                         sizes_hook=sizes_hook)

    # -- checkpoints ---------------------------------------------------------------------------------------------------

    def save(self, run_dir: str | os.PathLike, global_step: int) -> str:
        """Write the memory into ``run_dir/checkpoint-<global_step>/`` (atomically); return the file's path."""
        folder = os.path.join(os.fspath(run_dir), f"{_CHECKPOINT_PREFIX}-{int(global_step)}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, MEMORY_FILE)
        self.memory.save(path)
        return path

    def load(self, checkpoint_dir: str | os.PathLike) -> bool:
        """Restore the memory saved in ``checkpoint_dir``; False (memory untouched) when the folder has none."""
        path = os.path.join(os.fspath(checkpoint_dir), MEMORY_FILE)
        if not os.path.exists(path):
            return False
        self.memory = ErrorMemory.load(path, config=self.config)
        return True
