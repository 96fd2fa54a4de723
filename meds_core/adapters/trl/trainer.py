"""``MEDSGRPOTrainer``: TRL's ``GRPOTrainer`` with MEDS reward shaping before the group-normalised advantages."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from meds_core.step.config import MEDSConfig

from ._version import SUPPORTED_TRL, check_trl_version
from .batch import answer_rows, masked_rows, model_written_answers
from .checkpoints import MEMORY_FILE, last_complete_checkpoint, rotate_complete_checkpoints
from .features import forward_features
from .meds_state import MEDSState

check_trl_version()

from trl import GRPOTrainer  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402

logger = logging.getLogger(__name__)

# TRL's logged reward statistics that MEDS keeps raw (what the user's reward functions returned)
RAW_METRICS = ("reward", "reward_std", "frac_reward_zero_std")


def _refuse_vision_language(model: Any, processing_class: Any) -> None:
    """Refuse a vision-language setup before TRL loads anything (TRL treats a processor as a VLM)."""
    from transformers import ProcessorMixin

    vision = isinstance(processing_class, ProcessorMixin)
    if not vision and not isinstance(model, str):
        config = getattr(model, "config", None)
        vision = getattr(config, "vision_config", None) is not None and processing_class is None
    if vision:
        raise NotImplementedError("MEDSGRPOTrainer supports text-only models: the features of a vision-language "
                                  "model would need its image inputs in the capture forward. Pass a text model and "
                                  "its tokenizer as processing_class.")


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
    advantage code runs unchanged for every ``scale_rewards`` and ``multi_objective_aggregation`` setting. TRL's
    logged reward statistics (``rewards/<name>/mean|std``, ``reward``, ``reward_std``, ``frac_reward_zero_std`` and
    the completions table's reward columns) are then restored to the raw rewards, so they read as in a run without
    MEDS; the shaped values are logged as ``meds/shaped_reward_mean`` (the correctness column) beside
    ``meds/raw_reward_mean`` and ``meds/penalty_mean``.

    Features come from TRL's no-grad old-log-prob forward when TRL runs one before the rewards (vLLM importance
    sampling, ``steps_per_generation > gradient_accumulation_steps``, ``num_iterations > 1``) and it holds exactly the
    rollout's tokens; otherwise from one extra no-grad forward with ``logits_to_keep=1``. Rows TRL masked out of
    attention (``mask_truncated_completions``) get their features from an extra forward over those rows only. The
    tokens are the rollout's own (``prompt_ids`` of a ``rollout_func`` included), and with tools, environments or an
    ``env_mask`` the answer is read only from model-written tokens. Every process gathers the features, keys and
    correctness, so all hold an identical memory (``trainer.meds_memory``), which is saved in every checkpoint as
    ``meds_memory.bin`` and restored by ``train(resume_from_checkpoint=...)``. Evaluation never touches the memory.
    Groups whose correctness has zero variance are not shaped (``mixed_groups_only``, on by default: TRL keeps such
    groups, unlike the reference's dynamic sampling). ``meds/seconds``: MEDS's own wall time per generation batch
    (answers, layout check, capture arm/collect or the extra forward, gathers, memory update, shaping, restoring the
    raw metrics; not the hooks' row copies inside TRL's forward), also kept in ``trainer.meds_seconds``.

    Refused at construction: a vision-language model or processor (NotImplementedError).

    Checkpoints are crash-safe (see :mod:`.checkpoints`): ``meds_memory.bin`` is written after TRL's own files and
    before old checkpoints are rotated, so a kill at any moment leaves a resumable complete checkpoint, and
    ``train(resume_from_checkpoint=True)`` resumes from the newest complete one.
    """

    def __init__(self, *args: Any, meds_config: MEDSConfig | None = None, prompt_key_column: str = "prompt_id",
                 correctness_reward: int | str = 0, correct_threshold: float = 0.0, **kwargs: Any) -> None:
        check_trl_version()
        state = MEDSState(meds_config, prompt_key_column, correct_threshold)  # validates meds_config first
        _refuse_vision_language(kwargs.get("model", args[0] if args else None),
                                kwargs.get("processing_class", args[5] if len(args) > 5 else None))
        super().__init__(*args, **kwargs)
        if self._is_vlm:  # a processor TRL loaded itself (processing_class=None)
            raise NotImplementedError("MEDSGRPOTrainer supports text-only models: the features of a vision-language "
                                      "model would need its image inputs in the capture forward.")
        self.meds_state = state
        self.meds_config = state.config
        self.meds_correct_col = self._meds_reward_column(correctness_reward)
        self.meds_correct_threshold = state.correct_threshold
        self.meds_prompt_key_column = prompt_key_column
        self.meds_capture = state.attach(self.accelerator.unwrap_model(self.model))
        self.meds_reused_forwards = 0
        self.meds_extra_forwards = 0
        self.meds_masked_row_forwards = 0  # forwards over the rows TRL masked out of its old-log-prob forward
        self.meds_seconds: list[float] = []  # MEDS's own wall time per training generation batch
        self._meds_t = 0.0
        self._meds_expect_old_logps = False
        self._meds_rollout: dict[str, Any] | None = None
        self._meds_pending: dict[str, Any] | None = None
        self._meds_raw: torch.Tensor | None = None
        columns = getattr(self.train_dataset, "column_names", None)
        if columns is not None and prompt_key_column not in columns:
            state.warn_missing_key_column()

    @property
    def meds_memory(self):
        """The :class:`~meds_core.ErrorMemory` (identical on every process)."""
        return self.meds_state.memory

    @meds_memory.setter
    def meds_memory(self, memory) -> None:
        self.meds_state.memory = memory

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

    # -- the rollout and its features ----------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._meds_expect_old_logps = self.model.training and self._meds_trl_runs_old_logps()
        self._meds_pending = self._meds_rollout = self._meds_raw = None
        self._meds_t = 0.0
        try:
            out = super()._generate_and_score_completions(inputs)
            if self._meds_raw is not None:
                t0 = time.perf_counter()
                self._meds_restore_raw_metrics(self._meds_raw)
                self.meds_seconds[-1] += time.perf_counter() - t0
                self._metrics["train"]["meds/seconds"][-1] = self.meds_seconds[-1]
            return out
        finally:
            self._meds_expect_old_logps = False
            self._meds_pending = self._meds_rollout = self._meds_raw = None

    def _generate(self, prompts: list):
        out = super()._generate(prompts)
        # The tokens TRL trains on: a rollout_func's own prompt_ids, completions with tool turns, and the mask of
        # model-written tokens (tool_mask, or a rollout_func's env_mask).
        self._meds_rollout = {"prompt_ids": out[0], "completion_ids": out[1], "tool_mask": out[2]}
        return out

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           **kwargs):
        reuse = (self._meds_expect_old_logps and model is self.model and not torch.is_grad_enabled()
                 and all(v is None for v in kwargs.values() if not isinstance(v, bool)))
        if not reuse:
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              batch_size=batch_size, **kwargs)
        # The first no-grad policy forward of this generation batch: TRL's old log-probs. When it holds exactly the
        # rollout's tokens, run it chunk by chunk as TRL does, with the capture armed for each chunk.
        self._meds_expect_old_logps = False
        t0 = time.perf_counter()
        rollout = self._meds_rollout
        masked = None if rollout is None else masked_rows(input_ids, attention_mask, logits_to_keep,
                                                          rollout["prompt_ids"], rollout["completion_ids"])
        if masked is None:
            self._meds_pending = {"matched": False}
            self._meds_t += time.perf_counter() - t0
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              batch_size=batch_size, **kwargs)
        B, T = input_ids.shape
        rows, targets = answer_rows(self.processing_class, rollout["completion_ids"], T - logits_to_keep, T,
                                    self.meds_config.answer_marker, rollout["tool_mask"])
        rows[masked], targets[masked] = -1, -1  # TRL's forward does not see these completions
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
        self._meds_pending = {"matched": True, "features": torch.cat(feats), "masked": masked}
        self._meds_t += time.perf_counter() - t0
        return (torch.cat(logps), None if entropies[0] is None else torch.cat(entropies),
                None if aux[0] is None else torch.stack(aux).mean())

    def _meds_features(self, prompts: list[Any], completion_ids: list[list[int]]) -> tuple[torch.Tensor, np.ndarray]:
        """Local features float32 ``[B, F]`` (NaN rows: no answer) and the no-answer mask bool ``[B]``."""
        rollout = self._meds_rollout
        if rollout is None or (rollout["completion_ids"] is not completion_ids
                               and [list(c) for c in rollout["completion_ids"]] != [list(c) for c in completion_ids]):
            raise RuntimeError("MEDS: the completions being scored are not the ones _generate returned; this TRL "
                               f"version's GRPOTrainer is not supported (supported: trl{SUPPORTED_TRL}).")
        prompt_ids, tool_mask = rollout["prompt_ids"], rollout["tool_mask"]
        pending, self._meds_pending = self._meds_pending, None
        args = (self.processing_class, self._tokenizer.pad_token_id, self.accelerator.device,
                self.accelerator.autocast())
        if pending is not None and pending["matched"]:
            self.meds_reused_forwards += 1
            feats = pending["features"]
            redo = np.flatnonzero(pending["masked"])
            if len(redo):
                starts, _ = model_written_answers(self.processing_class, [completion_ids[i] for i in redo],
                                                  self.meds_config.answer_marker,
                                                  None if tool_mask is None else [tool_mask[i] for i in redo])
                redo = redo[starts >= 0]
            if len(redo):
                self.meds_masked_row_forwards += 1
                sub, _ = forward_features(self.model, self.meds_capture, args[0], [prompt_ids[i] for i in redo],
                                          [completion_ids[i] for i in redo], *args[1:],
                                          model_mask=None if tool_mask is None else [tool_mask[i] for i in redo])
                feats = feats.clone()
                feats[torch.as_tensor(redo)] = sub.to(feats.device)
            return feats, ~torch.isfinite(feats).all(1).cpu().numpy()
        if pending is not None:
            logger.warning("MEDS: TRL's old-log-prob forward saw a different batch than the one being scored; "
                           "running an extra forward for the features.")
        self.meds_extra_forwards += 1
        return forward_features(self.model, self.meds_capture, args[0], prompt_ids, completion_ids, *args[1:],
                                model_mask=tool_mask)

    # -- shaping -------------------------------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if not self.model.training:  # evaluation never reads or writes the memory
            return rewards_per_func
        t0 = time.perf_counter()
        feats, no_answer = self._meds_features(prompts, completion_ids_list)
        keys = self.meds_key_column_values(inputs, prompts)
        rewards = rewards_per_func[:, self.meds_correct_col]
        out = self.meds_state.step(feats, no_answer, keys, rewards, self.num_generations, rewards_per_func.device,
                                   sizes_hook=self.meds_cluster_sizes)
        self._meds_raw = rewards_per_func.detach().clone()
        shaped = rewards_per_func.clone()
        shaped[:, self.meds_correct_col] = torch.as_tensor(out.shaped, dtype=shaped.dtype, device=shaped.device)
        for name, value in out.metrics.items():
            self._metrics["train"][name].append(value)
        correct = self.meds_state.last_correct
        self._metrics["train"]["meds/correct_frac"].append(float((correct == 1).mean()) if len(correct) else 0.0)
        self.meds_seconds.append(self._meds_t + time.perf_counter() - t0)
        self._metrics["train"]["meds/seconds"].append(self.meds_seconds[-1])
        return shaped

    def _meds_restore_raw_metrics(self, raw: torch.Tensor) -> None:
        """Put the raw rewards back into the reward statistics TRL just logged from the shaped ones.

        ``raw`` float [N, n_funcs]: the gathered rewards before shaping. The statistics are TRL's documented ones:
        each column's NaN-aware mean and std; the weighted sum of the columns (NaN when every column is NaN) with its
        mean and std; and the fraction of completions whose reward std (per group, or over the batch under
        ``scale_rewards="batch"`` / ``normalize_then_sum``) is zero.
        """
        metrics = self._metrics["train"]
        w = self.reward_weights.to(raw.device).unsqueeze(0)
        for i, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"][-1] = torch.nanmean(raw[:, i]).item()
            metrics[f"rewards/{name}/std"][-1] = nanstd(raw[:, i]).item()
        unscorable = torch.isnan(raw).all(dim=1)
        total = (raw * w).nansum(dim=1)
        total[unscorable] = torch.nan
        metrics["reward"][-1] = torch.nanmean(total).item()
        metrics["reward_std"][-1] = nanstd(total).item()
        G = self.num_generations
        if self.multi_objective_aggregation == "sum_then_normalize":
            if self.scale_rewards == "batch":
                std = nanstd(total).expand_as(total)
            else:
                std = nanstd(total.view(-1, G), dim=1).repeat_interleave(G)
        else:  # normalize_then_sum: each column normalised per group, weighted, summed; std over the batch
            g = raw.view(-1, G, raw.shape[1])
            z = (g - torch.nanmean(g, dim=1, keepdim=True)) / (nanstd(g, dim=1, keepdim=True) + 1e-4)
            s = (z.view(-1, raw.shape[1]) * w).nansum(dim=1)
            s[unscorable] = torch.nan
            std = nanstd(s).expand_as(s)
        metrics["frac_reward_zero_std"][-1] = torch.isclose(std, torch.zeros_like(std)).float().mean().item()
        n = raw.shape[0]
        for i, name in enumerate(self.reward_func_names):  # the completions table (log_completions)
            column = self._logs["rewards"][name]
            k = min(n, len(column))
            for j in range(k):
                column[len(column) - k + j] = raw[n - k + j, i].item()

    def meds_key_column_values(self, inputs: list[dict[str, Any]], prompts: list[Any]) -> list[Any]:
        """Prompt key of each local completion: the ``prompt_key_column`` value, else a hash of the prompt."""
        column = self.meds_prompt_key_column
        values = [x[column] for x in inputs] if inputs and all(column in x for x in inputs) else None
        return self.meds_state.keys(values, prompts)

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
            self.meds_state.save(run_dir, self.state.global_step)
            rotate_complete_checkpoints(run_dir, limit, self.state.best_model_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and not self.meds_state.load(checkpoint):
            logger.warning("MEDS: checkpoint %s has no %s (saved without MEDS, or killed while saving); MEDS "
                           "resumes with an empty memory.", checkpoint, MEMORY_FILE)


__all__ = ["MEDSGRPOTrainer", "MEMORY_FILE", "RAW_METRICS", "SUPPORTED_TRL"]
