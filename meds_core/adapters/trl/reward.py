"""``MEDSPenaltyReward``: MEDS as a plain reward function for a stock ``GRPOTrainer``.

Trade-offs against :class:`~meds_core.adapters.trl.MEDSGRPOTrainer` (prefer the trainer when you can):

- always one extra no-grad forward per generation batch (the trainer reuses TRL's old-log-prob forward when TRL
  runs one);
- the correctness reward is computed twice (once by TRL as its own column, once here to decide correctness);
- exact MEDS only under ``multi_objective_aggregation="sum_then_normalize"`` (the default) with weight 1: the column
  holds ``shaped - raw`` (``-p`` for penalised wrong completions), which TRL adds to the correctness column before
  normalising. Under ``"normalize_then_sum"`` the penalty column is normalised on its own;
- the memory is not saved with TRL checkpoints by itself: add :meth:`checkpoint_callback` to the trainer's
  callbacks and call :meth:`load` with the checkpoint folder before resuming.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from meds_core.step.capture import FeatureCapture
from meds_core.step.config import MEDSConfig
from meds_core.step.keys import prompt_key
from meds_core.step.memory import ErrorMemory
from meds_core.step.rl_step import meds_step

from ._version import check_trl_version
from .checkpoints import MEMORY_FILE
from .features import forward_features
from .step_inputs import correctness

logger = logging.getLogger(__name__)


class MEDSPenaltyReward:
    """A reward function returning ``shaped - raw`` of the correctness reward (``-p`` for penalised wrong answers).

    Usage::

        meds = MEDSPenaltyReward(accuracy, MEDSConfig(...))
        trainer = GRPOTrainer(..., reward_funcs=[accuracy, meds], callbacks=[meds.checkpoint_callback()])
        meds.bind(trainer)

    Args:
        correctness_func: the reward function that decides correctness (TRL's reward-function signature).
        meds_config: :class:`MEDSConfig` (default ``MEDSConfig()``).
        prompt_key_column: dataset column with a stable prompt id (else a hash of the prompt text, one warning).
        correct_threshold: correct when ``correctness_func``'s value is > this; ``None`` values are unknown.
    """

    __name__ = "meds_penalty"  # TRL names a reward column after the function

    def __init__(self, correctness_func: Callable[..., list[float | None]], meds_config: MEDSConfig | None = None,
                 prompt_key_column: str = "prompt_id", correct_threshold: float = 0.0) -> None:
        if not callable(correctness_func):
            raise TypeError(f"correctness_func must be a reward function, got {type(correctness_func).__name__}.")
        self.config = meds_config if meds_config is not None else MEDSConfig()
        if not isinstance(self.config, MEDSConfig):
            raise TypeError(f"meds_config must be a MEDSConfig, got {type(self.config).__name__}.")
        self.correctness_func = correctness_func
        self.prompt_key_column = prompt_key_column
        self.correct_threshold = float(correct_threshold)
        self.memory = ErrorMemory(self.config)
        self.trainer: Any = None
        self.capture: FeatureCapture | None = None
        self._warned_key = False

    def bind(self, trainer: Any) -> MEDSPenaltyReward:
        """Attach to the ``GRPOTrainer`` whose ``reward_funcs`` hold this object (after constructing it)."""
        check_trl_version()
        if self not in list(getattr(trainer, "reward_funcs", [])):
            raise ValueError("bind(trainer): this MEDSPenaltyReward is not in trainer.reward_funcs; pass it in "
                             "GRPOTrainer(reward_funcs=[..., meds]) first.")
        self.trainer = trainer
        if self.capture is not None:
            self.capture.remove()
        self.capture = FeatureCapture(trainer.accelerator.unwrap_model(trainer.model), self.config)
        return self

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                 **kwargs: Any) -> list[float]:
        t = self.trainer
        if t is None:
            raise RuntimeError("MEDSPenaltyReward is not bound: call meds.bind(trainer) after GRPOTrainer(...).")
        if not t.model.training:  # evaluation never reads or writes the memory
            return [0.0] * len(prompts)
        from accelerate.utils import gather, gather_object

        raw = self.correctness_func(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        raw = torch.tensor([np.nan if r is None else float(r) for r in raw], dtype=torch.float64)
        prompt_ids = t._tokenize_prompts(prompts)[0]
        feats, no_answer = forward_features(t.model, self.capture, t.processing_class, prompt_ids, completion_ids,
                                            t._tokenizer.pad_token_id, t.accelerator.device, t.accelerator.autocast())
        device = t.accelerator.device
        all_raw = gather(raw.to(device)).cpu().numpy()
        all_feats = gather(feats.to(device).float()).cpu()
        all_no_answer = gather(torch.as_tensor(no_answer, device=device)).cpu().numpy().astype(bool)
        keys = gather_object(self._keys(prompts, kwargs))
        correct = correctness(all_raw, self.correct_threshold)
        group_ids = np.arange(len(all_raw), dtype=np.int64) // t.num_generations
        out = meds_step(self.memory, keys, all_feats, correct, all_raw, group_ids=group_ids, no_answer=all_no_answer)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            for name, value in out.metrics.items():
                log_metric(name, value)
        delta = np.nan_to_num(out.shaped - all_raw, nan=0.0)
        start = t.accelerator.process_index * len(prompts)
        return delta[start:start + len(prompts)].tolist()

    def _keys(self, prompts: list[Any], kwargs: dict[str, Any]) -> list[Any]:
        column = kwargs.get(self.prompt_key_column)
        if column is not None:
            return list(column)
        if not self._warned_key:
            self._warned_key = True
            logger.warning("MEDS: the dataset has no %r column; keying each prompt's memory by a hash of its text.",
                           self.prompt_key_column)
        return [prompt_key(p) for p in prompts]

    # -- checkpoints ---------------------------------------------------------------------------------------------------

    def load(self, checkpoint_dir: str) -> None:
        """Restore the memory saved by :meth:`checkpoint_callback` in ``checkpoint_dir``."""
        path = os.path.join(checkpoint_dir, MEMORY_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist: that checkpoint was saved without "
                                    "MEDSPenaltyReward.checkpoint_callback() in the trainer's callbacks.")
        self.memory = ErrorMemory.load(path, config=self.config)

    def checkpoint_callback(self) -> Any:
        """A ``TrainerCallback`` that writes the memory into every checkpoint folder (``meds_memory.bin``)."""
        from transformers import TrainerCallback
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        reward = self

        class _SaveMemory(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if args.should_save:
                    folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
                    os.makedirs(folder, exist_ok=True)
                    reward.memory.save(os.path.join(folder, MEMORY_FILE))

        return _SaveMemory()
