"""Entry point: ``python -m meds_core.adapters.verl.main_meds [hydra overrides]``.

Composes ``config/meds_trainer.yaml`` (veRL's ``ppo_trainer`` + the ``meds:`` block), checks it for MEDS and with
veRL's ``validate_config`` before Ray starts, then runs veRL's ``run_ppo`` with :class:`MEDSTaskRunner`, which is
veRL's v1 task runner building :class:`~meds_core.adapters.verl.trainer.MEDSTrainerSync` instead of the trainer
registered for ``trainer.v1.trainer_mode``.
"""

from __future__ import annotations

from ._compat import require_verl

require_verl()

import hydra  # noqa: E402
import ray  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl.trainer.main_ppo import TaskRunnerV1, run_ppo  # noqa: E402
from verl.trainer.ppo.utils import need_critic, need_reference_policy  # noqa: E402
from verl.utils.config import validate_config  # noqa: E402
from verl.utils.device import auto_set_device  # noqa: E402

from .settings import TrainerSettings, check_prompt_ids, check_verl_config  # noqa: E402

__all__ = ["MEDSTaskRunner", "main", "prepare_config"]


class MEDSTaskRunner(TaskRunnerV1.__ray_actor_class__):
    """veRL's v1 task runner (agent-loop manager and all) with the MEDS trainer."""

    def run(self, config):
        import transfer_queue as tq
        from verl.utils.logging_utils import configure_verl_logging

        from .trainer import MEDSTrainerSync

        configure_verl_logging()
        config.transfer_queue.enable = True
        OmegaConf.resolve(config)
        self.config = config
        tq.init(config.transfer_queue)
        succeeded = False
        try:
            self.trainer = MEDSTrainerSync(config=config)
            self.trainer.init()
            self.init_agent_loop_manager()
            self.trainer.fit(self.agent_loop_manager)
            succeeded = True
        finally:
            try:
                tracking = getattr(self.trainer, "logger", None)
                if tracking is not None:
                    tracking.finish(exit_code=0 if succeeded else 1)
            finally:
                tq.close()


def prepare_config(config) -> None:
    """Start-up checks: MEDS's (:func:`check_verl_config`, :func:`check_prompt_ids` on the training files) then
    veRL's ``validate_config``. Raises on any problem."""
    auto_set_device(config)
    check_verl_config(config)
    check_prompt_ids(config.data.train_files, TrainerSettings.from_node(config.get("meds_trainer", None)).prompt_key)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))


@hydra.main(config_path="config", config_name="meds_trainer", version_base=None)
def main(config) -> None:
    prepare_config(config)
    run_ppo(config, task_runner_class=ray.remote(MEDSTaskRunner))


if __name__ == "__main__":
    main()
