"""``MEDSTrainerSync``: veRL 0.9's v1 ``PPOTrainerSync`` with MEDS between rewards and GRPO advantages.

Per training step (``PPOTrainer._step_once``), only three methods are extended, each calling veRL's own:

* ``_compute_old_log_prob``: locate the answers (tail-window search on ``responses``), write ``meds_from_end``
  into TransferQueue, flag the batch ``meds_capture`` for the actor's old-log-prob forward (the worker returns
  ``meds_features``), and drop the flag again so the ref / update passes never capture;
* ``_compute_advantage``: with the rewards (``rm_scores`` from the reward loop) in place, update the
  :class:`ErrorMemory` on the dataset's stable prompt id and shape the outcome with correctness from the reward's
  ``acc``; write the shaped ``rm_scores`` (the raw ones kept as ``meds_raw_rm_scores``), log ``meds/*``, run
  veRL's GRPO advantage computation, then put the raw ``rm_scores`` back and the shaped ones in
  ``token_level_rewards``, so veRL's ``critic/score/*`` stay raw and ``critic/rewards/*`` show the shaped values;
* ``_save_checkpoint`` / ``_load_checkpoint``: the memory lives in every ``global_step_*`` folder and is restored
  with ``trainer.resume_mode=auto`` (or ``resume_path``).

``trainer.v1.trainer_mode`` stays ``sync`` (veRL compares that name in several places); ``main_meds`` selects this
class instead of ``get_trainer_cls``.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from ._compat import require_verl

require_verl()

import ray  # noqa: E402
import transfer_queue as tq  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from verl.trainer.ppo.utils import Role  # noqa: E402
from verl.trainer.ppo.v1 import PPOTrainerSync  # noqa: E402

from meds_core import MemoryFileError  # noqa: E402
from meds_core.step.memory import ErrorMemory  # noqa: E402

from .driver import (  # noqa: E402
    answer_fields,
    correctness,
    dense_rows,
    outcome_of,
    prompt_keys,
    shape_step,
    with_outcome,
)
from .engine_capture import FEATURES, FLAG, FROM_END  # noqa: E402
from .settings import TrainerSettings, check_verl_config  # noqa: E402

__all__ = ["MEDSTrainerSync"]

logger = logging.getLogger(__name__)
RAW_SCORES = "meds_raw_rm_scores"
PENALTY = "meds_penalty"


def _is_padding(batch) -> np.ndarray:
    return np.array([bool(t.get("is_padding", False)) for t in batch.tags], dtype=bool)


class MEDSTrainerSync(PPOTrainerSync):
    """v1 sync PPO/GRPO trainer with MEDS reward shaping; the actor workers are ``MEDSActorRolloutRefWorker``."""

    def __init__(self, config):
        self.meds_config = check_verl_config(config)
        self.meds_settings = TrainerSettings.from_node(config.get("meds_trainer", None))
        self.meds_memory = ErrorMemory(self.meds_config)
        self._meds_no_answer: dict[str, bool] = {}
        super().__init__(config)

    # -------------------------------------------------------------------------------------------- workers
    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        from .worker import MEDSActorRolloutRefWorker

        for role in (Role.ActorRollout, Role.ActorRolloutRef, Role.Actor):
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(MEDSActorRolloutRefWorker)

    # -------------------------------------------------------------------------------------------- one step
    def _compute_old_log_prob(self, batch, metrics):
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["responses"])
        pad = _is_padding(batch)
        from_end, no_answer = answer_fields(self.tokenizer, data["responses"].unbind(), self.meds_config.answer_marker,
                                            pad)
        self._meds_no_answer = dict(zip(batch.keys, no_answer.tolist()))
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                        fields=TensorDict({FROM_END: from_end}, batch_size=len(batch.keys)))
        if batch.fields is not None:  # the workers fetch only the listed fields
            batch.fields = list(dict.fromkeys([*batch.fields, FROM_END]))
        batch.extra_info[FLAG] = True
        try:
            out = super()._compute_old_log_prob(batch, metrics)
        finally:
            batch.extra_info.pop(FLAG, None)
        if getattr(out, "extra_info", None):
            out.extra_info.pop(FLAG, None)
        return out

    def _compute_advantage(self, batch, metrics):
        raw, shaped = self._apply_meds(batch, metrics)
        out = super()._compute_advantage(batch, metrics)
        self._restore_raw_scores(batch, raw, shaped)
        return out

    def _restore_raw_scores(self, batch, raw, shaped) -> None:
        """After the advantages are computed from the shaped scores, put the reward's raw ``rm_scores`` back and
        keep the shaped ones as ``token_level_rewards``: veRL's ``critic/score/*`` then report what the reward
        returned and ``critic/rewards/*`` what trained the policy (as with a KL penalty in the reward). With
        ``algorithm.use_kl_in_reward`` veRL has written ``token_level_rewards`` itself (shaped minus KL).

        ``raw`` / ``shaped``: the nested [n, j] scores :meth:`_apply_meds` read and wrote."""
        fields = {"rm_scores": raw}
        if not self.config.algorithm.use_kl_in_reward:
            fields["token_level_rewards"] = shaped
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                        fields=TensorDict(fields, batch_size=len(batch.keys)))

    def _apply_meds(self, batch, metrics: dict):
        """Memory update + outcome shaping on TransferQueue data, before veRL's advantages read ``rm_scores``.
        Returns the raw and the shaped nested [n, j] scores."""
        key_field = self.meds_settings.prompt_key
        fields = ["rm_scores", FEATURES, key_field, "uid", "extra_fields"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        pad = _is_padding(batch)
        uids = [str(getattr(u, "data", u)) for u in data["uid"]]
        keys = prompt_keys(data[key_field], uids, key_field, known=self.meds_memory)
        outcome = outcome_of(data["rm_scores"])
        extra = list(data["extra_fields"])
        correct = correctness(extra, outcome, self.meds_settings.correct_key, pad)
        features = dense_rows(data[FEATURES], self.meds_config.use_last_n_layers)
        no_answer = np.array([self._meds_no_answer.get(k, False) for k in batch.keys], dtype=bool)
        shaped = shape_step(self.meds_memory, keys, features, outcome, correct, uids, no_answer, pad)
        shaped_scores = with_outcome(data["rm_scores"], torch.from_numpy(shaped.shaped))
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict({
            "rm_scores": shaped_scores,
            RAW_SCORES: data["rm_scores"],
            PENALTY: torch.from_numpy(shaped.penalty).float(),
        }, batch_size=len(batch.keys)))
        metrics.update(shaped.metrics)
        return data["rm_scores"], shaped_scores

    # -------------------------------------------------------------------------------------------- checkpoints
    def _memory_path(self, step_folder: str) -> str:
        return os.path.join(step_folder, self.meds_settings.memory_file)

    def _save_checkpoint(self):
        folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
        os.makedirs(folder, exist_ok=True)
        self.meds_memory.save(self._memory_path(folder))  # before veRL marks the step as the latest checkpoint
        return super()._save_checkpoint()

    def _load_checkpoint(self):
        result = super()._load_checkpoint()
        if self.global_steps > 0:
            self._restore_memory(self._resumed_folder())
        return result

    def _resumed_folder(self) -> str:
        trainer = self.config.trainer
        root = trainer.default_local_dir if trainer.resume_mode == "auto" else os.path.dirname(trainer.resume_from_path)
        if not os.path.isabs(root):
            root = os.path.join(os.getcwd(), root)
        return os.path.join(root, f"global_step_{self.global_steps}")

    def _restore_memory(self, folder: str) -> None:
        path = self._memory_path(folder)
        if not os.path.exists(path):
            logger.warning("MEDS: checkpoint %s has no %s (saved without MEDS?); starting with an empty memory.",
                           folder, self.meds_settings.memory_file)
            return
        try:
            self.meds_memory = ErrorMemory.load(path, config=self.meds_config)
        except MemoryFileError as exc:
            raise MemoryFileError(
                f"MEDS cannot resume from {path}: {exc} Resume with the meds.* settings the checkpoint was trained "
                f"with, or delete {self.meds_settings.memory_file} from {folder} to resume with an empty memory "
                "(a warning says so).") from exc
        logger.info("MEDS: restored %r from %s", self.meds_memory, path)
