"""The shipped hydra config composes from the installed veRL, the run scripts' overrides pass MEDS's and veRL's
start-up checks, and bad MEDS settings fail at start-up; the worker subclass keeps veRL's registered methods."""

from __future__ import annotations

import os
import subprocess
from importlib import resources
from pathlib import Path

import pytest

pytest.importorskip("verl")
from hydra import compose, initialize_config_module  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from meds_core import MEDSConfig  # noqa: E402
from meds_core.adapters.verl.settings import check_verl_config  # noqa: E402

SCRIPTS = Path(__file__).resolve().parents[1] / "adapters" / "verl"
ENV = {"DRY_RUN": "1", "MODEL_PATH": "/models/Qwen2.5-Math-7B", "TRAIN_FILE": "/data/train.parquet",
       "TEST_FILE": "/data/aime24.parquet", "CKPTS_DIR": "/ckpts"}


def _compose(module: str, name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=module, version_base=None):
        return compose(config_name=name, overrides=overrides)


def _script_overrides(script: str, module: str) -> list[str]:
    out = subprocess.run(["bash", str(SCRIPTS / script)], env={**os.environ, **ENV}, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[:3] == ["python3", "-m", module]
    return out[3:]


def test_yaml_is_package_data():
    assert resources.files("meds_core.adapters.verl.config").joinpath("meds_trainer.yaml").is_file()


def test_run_meds_overrides_pass_startup_checks():
    from meds_core.adapters.verl.main_meds import prepare_config

    cfg = _compose("meds_core.adapters.verl.config", "meds_trainer",
                   _script_overrides("run_meds.sh", "meds_core.adapters.verl.main_meds"))
    prepare_config(cfg)  # MEDS checks + veRL's validate_config
    assert check_verl_config(cfg) == MEDSConfig(use_last_n_layers=14, cluster_method="hdbscan", penalty_coef=0.1)
    assert cfg.actor_rollout_ref.meds.use_last_n_layers == 14  # mirrored for the workers
    assert (cfg.data.train_batch_size, cfg.actor_rollout_ref.rollout.n, cfg.actor_rollout_ref.actor.clip_ratio_high,
            cfg.algorithm.filter_groups.metric, cfg.trainer.n_gpus_per_node) == (512, 16, 0.28, "acc", 8)


def test_run_dapo_is_the_same_recipe_without_meds():
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    meds = _script_overrides("run_meds.sh", "meds_core.adapters.verl.main_meds")
    dapo = _script_overrides("run_dapo.sh", "verl.trainer.main_ppo")
    differs = lambda a, b: sorted(set(a) - set(b))  # noqa: E731
    assert all(o.startswith(("meds.", "trainer.experiment_name")) for o in differs(meds, dapo))
    assert differs(dapo, meds) == ["trainer.experiment_name=qwen2.5-math-7b-dapo"]
    cfg = _compose("verl.trainer.config", "ppo_trainer", dapo)
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


@pytest.mark.parametrize("override, match", [
    ("meds.cluster_method=kmeans", "cluster_method='kmeans' is not valid"),
    ("+meds.clustr_method=hdbscan", "unknown MEDS config key"),
    ("meds.use_last_n_layers=0", "use_last_n_layers=0"),
    ("actor_rollout_ref.model.use_fused_kernels=True", "use_fused_kernels=False"),
    ("algorithm.rollout_correction.bypass_mode=True", "bypass_mode=False"),
    ("trainer.v1.trainer_mode=colocate_async", "trainer_mode=sync"),
    ("+meds_trainer.prompt=index", "unknown meds_trainer key"),
    ("~actor_rollout_ref.meds", "must mirror meds"),
    ("actor_rollout_ref.meds={penalty_coef:0.5}", "must mirror meds"),
])
def test_bad_settings_fail_at_startup(override, match):
    cfg = _compose("meds_core.adapters.verl.config", "meds_trainer", [override])
    with pytest.raises(ValueError, match=match):
        check_verl_config(cfg)


def test_worker_subclass_keeps_registered_methods():
    """veRL binds worker-group methods by scanning for its MAGIC_ATTR; an override must keep it."""
    from verl.single_controller.base.decorator import MAGIC_ATTR
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from meds_core.adapters.verl.worker import MEDSActorRolloutRefWorker

    def registered(cls):
        return {n for n in dir(cls) if hasattr(getattr(cls, n, None), MAGIC_ATTR)}

    base = registered(ActorRolloutRefWorker)
    assert {"init_model", "compute_log_prob", "update_actor", "save_checkpoint"} <= base
    assert registered(MEDSActorRolloutRefWorker) == base
    assert MEDSActorRolloutRefWorker.init_model is not ActorRolloutRefWorker.init_model

    class Plain(ActorRolloutRefWorker):  # the failure mode the re-decoration prevents
        def init_model(self):
            return super().init_model()

    assert registered(Plain) == base - {"init_model"}
