"""``MEDSPenaltyReward``: MEDS as a plain reward function for a stock ``GRPOTrainer``.

Trade-offs against :class:`~meds_core.adapters.trl.MEDSGRPOTrainer` (prefer the trainer when you can):

- always one extra no-grad forward per generation batch (the trainer reuses TRL's old-log-prob forward when TRL
  runs one);
- the correctness reward is computed twice (once by TRL as its own column, once here to decide correctness);
- TRL logs the penalty as its own reward column, ``rewards/meds_penalty/mean`` (``shaped - raw``, so ``-p`` for
  penalised wrong completions, 0 otherwise). The correctness column ``rewards/<name>/*`` stays raw, but TRL's
  ``reward``, ``reward_std`` and ``frac_reward_zero_std`` describe the sum of all columns, i.e. the shaped reward;
  a reward function cannot change what TRL logs (the trainer restores them);
- the memory is not saved with TRL checkpoints by itself: add :meth:`checkpoint_callback` to the trainer's
  callbacks and call :meth:`load` with the checkpoint folder before resuming.

Refused (at construction or :meth:`bind`, with the reason): an async correctness function, and trainers whose
setting would make the column something other than MEDS: ``multi_objective_aggregation="normalize_then_sum"``
(the penalty column would be normalised on its own), a reward weight other than 1 on this column, and tools,
environments or a ``rollout_func`` (a reward function sees neither the rollout's own prompt tokens nor which tokens
the model wrote; use :class:`~meds_core.adapters.trl.MEDSGRPOTrainer`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from meds_core.step.config import MEDSConfig

from ._version import check_trl_version
from .checkpoints import MEMORY_FILE
from .features import forward_features
from .meds_state import MEDSState


class MEDSPenaltyReward:
    """A reward function returning ``shaped - raw`` of the correctness reward (``-p`` for penalised wrong answers).

    Usage::

        meds = MEDSPenaltyReward(accuracy, MEDSConfig(...))
        trainer = GRPOTrainer(..., reward_funcs=[accuracy, meds], callbacks=[meds.checkpoint_callback()])
        meds.bind(trainer)

    Args:
        correctness_func: the reward function that decides correctness (TRL's reward-function signature, not async).
        meds_config: :class:`MEDSConfig` (default ``MEDSConfig()``).
        prompt_key_column: dataset column with a stable prompt id (else a hash of the prompt text, one warning).
        correct_threshold: correct when ``correctness_func``'s value is > this; ``None`` values are unknown.
    """

    __name__ = "meds_penalty"  # TRL names a reward column after the function

    def __init__(self, correctness_func: Callable[..., list[float | None]], meds_config: MEDSConfig | None = None,
                 prompt_key_column: str = "prompt_id", correct_threshold: float = 0.0) -> None:
        if not callable(correctness_func):
            raise TypeError(f"correctness_func must be a reward function, got {type(correctness_func).__name__}.")
        if inspect.iscoroutinefunction(correctness_func) or inspect.iscoroutinefunction(
                type(correctness_func).__call__):
            raise TypeError("correctness_func is async; MEDSPenaltyReward calls it synchronously. Pass a plain "
                            "function, or use MEDSGRPOTrainer, which reads TRL's own (async) reward column.")
        self.state = MEDSState(meds_config, prompt_key_column, correct_threshold)
        self.config = self.state.config
        self.correctness_func = correctness_func
        self.prompt_key_column = prompt_key_column
        self.correct_threshold = self.state.correct_threshold
        self.trainer: Any = None
        self.capture = None

    @property
    def memory(self):
        """The :class:`~meds_core.ErrorMemory` (identical on every process)."""
        return self.state.memory

    @memory.setter
    def memory(self, memory) -> None:
        self.state.memory = memory

    def bind(self, trainer: Any) -> MEDSPenaltyReward:
        """Attach to the ``GRPOTrainer`` whose ``reward_funcs`` hold this object (after constructing it).

        Raises:
            ValueError: this object is not among the trainer's reward functions, or the trainer's setting would make
                its column something other than MEDS (see the module docstring).
        """
        check_trl_version()
        funcs = list(getattr(trainer, "reward_funcs", []))
        if self not in funcs:
            raise ValueError("bind(trainer): this MEDSPenaltyReward is not in trainer.reward_funcs; pass it in "
                             "GRPOTrainer(reward_funcs=[..., meds]) first.")
        if getattr(trainer, "multi_objective_aggregation", "sum_then_normalize") != "sum_then_normalize":
            raise ValueError("MEDSPenaltyReward needs multi_objective_aggregation='sum_then_normalize': under "
                             f"{trainer.multi_objective_aggregation!r} TRL normalises the penalty column on its own, "
                             "which is not MEDS. Use MEDSGRPOTrainer, which shapes the correctness column itself.")
        weight = float(trainer.reward_weights[funcs.index(self)])
        if weight != 1.0:
            raise ValueError(f"MEDSPenaltyReward's reward weight is {weight}; it must be 1.0 so the penalty is "
                             "subtracted from the correctness reward as is (set reward_weights accordingly).")
        if getattr(trainer, "tools", None) or getattr(trainer, "environment_factories", None) or \
                getattr(trainer, "rollout_func", None) is not None:
            raise ValueError("MEDSPenaltyReward does not support tools, environment_factory or rollout_func: a "
                             "reward function sees neither the rollout's own prompt tokens nor which tokens the "
                             "model wrote. Use MEDSGRPOTrainer.")
        if getattr(trainer, "_is_vlm", False):
            raise ValueError("MEDSPenaltyReward supports text-only models: the features of a vision-language model "
                             "would need its image inputs in the capture forward.")
        self.trainer = trainer
        self.capture = self.state.attach(trainer.accelerator.unwrap_model(trainer.model))
        return self

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                 **kwargs: Any) -> list[float]:
        t = self.trainer
        if t is None:
            raise RuntimeError("MEDSPenaltyReward is not bound: call meds.bind(trainer) after GRPOTrainer(...).")
        if not t.model.training:  # evaluation never reads or writes the memory
            return [0.0] * len(prompts)
        from accelerate.utils import gather

        raw = self.correctness_func(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        raw = torch.tensor([np.nan if r is None else float(r) for r in raw], dtype=torch.float64)
        prompt_ids = t._tokenize_prompts(prompts)[0]
        device = t.accelerator.device
        feats, no_answer = forward_features(t.model, self.capture, t.processing_class, prompt_ids, completion_ids,
                                            t._tokenizer.pad_token_id, device, t.accelerator.autocast())
        all_raw = gather(raw.to(device)).cpu().numpy()
        keys = self.state.keys(kwargs.get(self.prompt_key_column), prompts)
        out = self.state.step(feats, no_answer, keys, all_raw, t.num_generations, device)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            for name, value in out.metrics.items():
                log_metric(name, value)
        delta = np.nan_to_num(out.shaped - all_raw, nan=0.0)
        start = t.accelerator.process_index * len(prompts)
        return delta[start:start + len(prompts)].tolist()

    # -- checkpoints ---------------------------------------------------------------------------------------------------

    def load(self, checkpoint_dir: str) -> None:
        """Restore the memory saved by :meth:`checkpoint_callback` in ``checkpoint_dir``."""
        if not self.state.load(checkpoint_dir):
            raise FileNotFoundError(f"{checkpoint_dir}/{MEMORY_FILE} does not exist: that checkpoint was saved "
                                    "without MEDSPenaltyReward.checkpoint_callback() in the trainer's callbacks.")

    def checkpoint_callback(self) -> Any:
        """A ``TrainerCallback`` that writes the memory into every checkpoint folder (``meds_memory.bin``)."""
        from transformers import TrainerCallback

        state = self.state

        class _SaveMemory(TrainerCallback):
            def on_save(self, args, trainer_state, control, **kwargs):
                if args.should_save:
                    state.save(args.output_dir, trainer_state.global_step)

        return _SaveMemory()
