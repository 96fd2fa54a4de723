"""``MEDSGRPOTrainer``: TRL's ``GRPOTrainer`` with MEDS reward shaping before the group-normalised advantages."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import torch

from meds_core.step.capture import FeatureCapture
from meds_core.step.config import MEDSConfig
from meds_core.step.keys import prompt_key
from meds_core.step.memory import ErrorMemory
from meds_core.step.rl_step import meds_step

from ._version import SUPPORTED_TRL, check_trl_version
from .batch import answer_rows, split_batch
from .checkpoints import MEMORY_FILE, last_complete_checkpoint, rotate_complete_checkpoints
from .features import forward_features
from .step_inputs import correctness

check_trl_version()

from accelerate.utils import gather, gather_object  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

logger = logging.getLogger(__name__)


class MEDSGRPOTrainer(GRPOTrainer):
    """A ``GRPOTrainer`` that applies MEDS to the correctness reward before TRL computes advantages.

    Args (besides ``GRPOTrainer``'s own):
        meds_config: :class:`MEDSConfig` (default ``MEDSConfig()``).
        prompt_key_column: dataset column holding a stable prompt id (kept across epochs). Without that column the
            key is a hash of the prompt text (one warning).
        correctness_reward: index or name of the reward function whose value decides correctness (default 0: the
            first). Its column is the one that gets shaped: wrong ``r - p``, correct (when targeted) ``r / (1+p)``.
        correct_threshold: a completion is correct when that reward is > this (default 0.0); ``None`` (NaN)
            rewards count as unknown and are never penalised.

    The shaping happens in ``_calculate_rewards`` on the rewards gathered over all processes, so TRL's own
    advantage code runs unchanged for every ``scale_rewards`` and ``multi_objective_aggregation`` setting.
    Features come from TRL's no-grad old-log-prob forward when TRL runs one before the rewards (vLLM importance
    sampling, ``steps_per_generation > gradient_accumulation_steps``, ``num_iterations > 1``); otherwise from one
    extra no-grad forward with ``logits_to_keep=1``. Every process gathers the features, keys and correctness, so
    all hold an identical memory (``trainer.meds_memory``), which is saved in every checkpoint as
    ``meds_memory.bin`` and restored by ``train(resume_from_checkpoint=...)``. Evaluation never touches the memory.
    Groups whose correctness has zero variance are not shaped (``mixed_groups_only``, on by default: TRL keeps such
    groups, unlike the reference's dynamic sampling). Metrics ``meds/*`` go through TRL's logging, among them
    ``meds/seconds``: MEDS's own wall time per generation batch (answers, layout check, capture arm/collect or the
    extra forward, gathers, memory update, shaping; not the hooks' row copies inside TRL's forward), also kept in
    ``trainer.meds_seconds``.

    Checkpoints are crash-safe (see :mod:`.checkpoints`): ``meds_memory.bin`` is written after TRL's own files and
    before old checkpoints are rotated, so a kill at any moment leaves a resumable complete checkpoint, and
    ``train(resume_from_checkpoint=True)`` resumes from the newest complete one.
    """

    def __init__(self, *args: Any, meds_config: MEDSConfig | None = None, prompt_key_column: str = "prompt_id",
                 correctness_reward: int | str = 0, correct_threshold: float = 0.0, **kwargs: Any) -> None:
        check_trl_version()
        if meds_config is None:
            meds_config = MEDSConfig()
        if not isinstance(meds_config, MEDSConfig):
            raise TypeError(f"meds_config must be a MEDSConfig, got {type(meds_config).__name__}; build one with "
                            "MEDSConfig(...) or MEDSConfig.from_dict(d).")
        super().__init__(*args, **kwargs)
        if self._is_vlm:
            raise NotImplementedError("MEDSGRPOTrainer supports text-only models: the features of a vision-language "
                                      "model would need its image inputs in the capture forward.")
        self.meds_config = meds_config
        self.meds_memory = ErrorMemory(meds_config)
        self.meds_correct_col = self._meds_reward_column(correctness_reward)
        self.meds_correct_threshold = float(correct_threshold)
        self.meds_prompt_key_column = prompt_key_column
        self.meds_capture = FeatureCapture(self.accelerator.unwrap_model(self.model), meds_config)
        self.meds_reused_forwards = 0
        self.meds_extra_forwards = 0
        self.meds_seconds: list[float] = []  # MEDS's own wall time per training generation batch
        self._meds_t = 0.0
        self._meds_expect_old_logps = False
        self._meds_pending: dict[str, Any] | None = None
        self._meds_warned_key = False
        columns = getattr(self.train_dataset, "column_names", None)
        if columns is not None and prompt_key_column not in columns:
            self._meds_warn_key()

    # -- configuration -------------------------------------------------------------------------------------------------

    def _meds_reward_column(self, which: int | str) -> int:
        names = list(self.reward_func_names)
        if isinstance(which, str):
            if which not in names:
                raise ValueError(f"correctness_reward={which!r} is not a reward function name; the names are {names}.")
            return names.index(which)
        if isinstance(which, bool) or not isinstance(which, (int, np.integer)) or not 0 <= which < len(names):
            raise ValueError(f"correctness_reward={which!r} must be a reward function name {names} or an index in "
                             f"0..{len(names) - 1}.")
        return int(which)

    def _meds_warn_key(self) -> None:
        if not self._meds_warned_key:
            self._meds_warned_key = True
            logger.warning("MEDS: the dataset has no %r column; keying each prompt's memory by a hash of its text. "
                           "Add a stable id column (prompt_key_column=...) if prompts can be rewritten (tools, "
                           "environments).", self.meds_prompt_key_column)

    def _meds_trl_runs_old_logps(self) -> bool:
        """TRL's own condition (trl 1.16) for the no-grad policy forward before the rewards."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or bool(
            self.use_vllm and self.vllm_importance_sampling_correction)

    # -- control hook --------------------------------------------------------------------------------------------------

    def meds_cluster_sizes(self, sizes: np.ndarray, correct: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
        """Cluster sizes the penalties are computed from (identity). Override for controls and ablations.

        Args: ``sizes`` int64 [N] (``StepResult.cluster_size`` of the gathered batch), ``correct`` int8 [N]
        (1, 0, -1 unknown), ``group_ids`` int64 [N]. Returns int64 [N].
        """
        return sizes

    # -- features ------------------------------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._meds_expect_old_logps = self.model.training and self._meds_trl_runs_old_logps()
        self._meds_pending = None
        self._meds_t = 0.0
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._meds_expect_old_logps = False
            self._meds_pending = None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           **kwargs):
        reuse = (self._meds_expect_old_logps and model is self.model and not torch.is_grad_enabled()
                 and all(v is None for v in kwargs.values() if not isinstance(v, bool)))
        if not reuse:
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              batch_size=batch_size, **kwargs)
        # The first no-grad policy forward of this generation batch: TRL's old log-probs. Run it chunk by chunk as
        # TRL does, with the capture armed for each chunk.
        self._meds_expect_old_logps = False
        t0 = time.perf_counter()
        B, T = input_ids.shape
        _, completions = split_batch(input_ids, attention_mask, logits_to_keep)
        rows, targets = answer_rows(self.processing_class, completions, T - logits_to_keep, T,
                                    self.meds_config.answer_marker)
        size = batch_size or B
        logps, entropies, aux, feats = [], [], [], []
        for s in range(0, B, size):
            e = min(s + size, B)
            local = np.where(rows[s:e] >= 0, rows[s:e] - s * T, -1)
            self.meds_capture.arm(local, targets[s:e])
            self._meds_t += time.perf_counter() - t0
            try:
                lp, ent, ax = super()._get_per_token_logps_and_entropies(
                    model, input_ids[s:e], attention_mask[s:e], logits_to_keep, batch_size=e - s, **kwargs)
                t0 = time.perf_counter()
                feats.append(self.meds_capture.collect())
            finally:
                self.meds_capture.disarm()
            logps.append(lp)
            entropies.append(ent)
            aux.append(ax)
        self._meds_pending = {"input_ids": input_ids.detach(), "attention_mask": attention_mask.detach(),
                              "completion_width": logits_to_keep, "features": torch.cat(feats)}
        self._meds_t += time.perf_counter() - t0
        return (torch.cat(logps), None if entropies[0] is None else torch.cat(entropies),
                None if aux[0] is None else torch.stack(aux).mean())

    def _meds_features(self, prompts: list[Any], completion_ids: list[list[int]]) -> tuple[torch.Tensor, np.ndarray]:
        """Local features float32 ``[B, F]`` (NaN rows: no answer) and the no-answer mask bool ``[B]``."""
        prompt_ids = self._tokenize_prompts(prompts)[0]
        pending, self._meds_pending = self._meds_pending, None
        if pending is not None:
            seen_prompts, seen_completions = split_batch(pending["input_ids"], pending["attention_mask"],
                                                         pending["completion_width"])
            if seen_completions == [list(c) for c in completion_ids] and seen_prompts == [list(p) for p in prompt_ids]:
                self.meds_reused_forwards += 1
                feats = pending["features"]
                return feats, ~torch.isfinite(feats).all(1).cpu().numpy()
            logger.warning("MEDS: TRL's old-log-prob forward saw a different batch than the one being scored; "
                           "running an extra forward for the features.")
        self.meds_extra_forwards += 1
        return forward_features(self.model, self.meds_capture, self.processing_class, prompt_ids, completion_ids,
                                self._tokenizer.pad_token_id, self.accelerator.device, self.accelerator.autocast())

    # -- shaping -------------------------------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if not self.model.training:  # evaluation never reads or writes the memory
            return rewards_per_func
        t0 = time.perf_counter()
        feats, no_answer = self._meds_features(prompts, completion_ids_list)
        col = self.meds_key_column_values(inputs, prompts)
        device = rewards_per_func.device
        all_feats = gather(feats.to(device).float()).cpu()
        all_no_answer = gather(torch.as_tensor(no_answer, device=device)).cpu().numpy().astype(bool)
        keys = gather_object(col)
        rewards = rewards_per_func[:, self.meds_correct_col]
        correct = correctness(rewards, self.meds_correct_threshold)
        group_ids = np.arange(len(correct), dtype=np.int64) // self.num_generations
        out = meds_step(self.meds_memory, keys, all_feats, correct, rewards.detach().cpu().double().numpy(),
                        group_ids=group_ids, no_answer=all_no_answer, sizes_hook=self.meds_cluster_sizes)
        rewards_per_func[:, self.meds_correct_col] = torch.as_tensor(out.shaped, dtype=rewards_per_func.dtype,
                                                                     device=device)
        for name, value in out.metrics.items():
            self._metrics["train"][name].append(value)
        self._metrics["train"]["meds/correct_frac"].append(float((correct == 1).mean()) if len(correct) else 0.0)
        self.meds_seconds.append(self._meds_t + time.perf_counter() - t0)
        self._metrics["train"]["meds/seconds"].append(self.meds_seconds[-1])
        return rewards_per_func

    def meds_key_column_values(self, inputs: list[dict[str, Any]], prompts: list[Any]) -> list[Any]:
        """Prompt key of each local completion: the ``prompt_key_column`` value, else a hash of the prompt."""
        column = self.meds_prompt_key_column
        if inputs and all(column in x for x in inputs):
            return [x[column] for x in inputs]
        self._meds_warn_key()
        return [prompt_key(p) for p in prompts]

    # -- checkpoints ---------------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint is True:  # Transformers would take the highest-numbered folder, complete or not
            found = last_complete_checkpoint(self.args.output_dir)
            if found is None:
                raise ValueError(f"resume_from_checkpoint=True: no complete checkpoint (a checkpoint-N folder with "
                                 f"trainer_state.json and {MEMORY_FILE}) in {self.args.output_dir!r}; pass the "
                                 "folder to resume from explicitly.")
            resume_from_checkpoint = found
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        # TRL's files first, with Transformers' rotation held back; then the memory (its presence marks the
        # checkpoint complete); then the rotation, which only counts complete checkpoints.
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            self.meds_memory.save(os.path.join(folder, MEMORY_FILE))
            rotate_complete_checkpoints(run_dir, limit, self.state.best_model_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, MEMORY_FILE)
        if os.path.exists(path):
            self.meds_memory = ErrorMemory.load(path, config=self.meds_config)
        else:
            logger.warning("MEDS: checkpoint %s has no %s (saved without MEDS, or killed while saving); MEDS "
                           "resumes with an empty memory.", checkpoint, MEMORY_FILE)


__all__ = ["MEDSGRPOTrainer", "MEMORY_FILE", "SUPPORTED_TRL"]
