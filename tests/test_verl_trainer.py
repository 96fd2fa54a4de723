"""Driver side of MEDSTrainerSync: shaping through veRL's real v1 ``_compute_advantage`` on a real TransferQueue
(Ray, CPU), and the memory's checkpoint save/restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("verl")
tq = pytest.importorskip("transfer_queue")
from hydra import compose, initialize_config_module  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from meds_core.adapters.verl.settings import TrainerSettings  # noqa: E402
from meds_core.adapters.verl.trainer import MEDSTrainerSync  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from tensordict.tensorclass import NonTensorData, NonTensorStack  # noqa: E402
from transfer_queue import KVBatchMeta  # noqa: E402

from meds_core import ErrorMemory  # noqa: E402
from meds_core.step_metrics import METRIC_NAMES  # noqa: E402

N = 6  # rollouts per prompt
A, B = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
RIGHT = np.array([0.0, 0.0, 1.0])


def _config(tmp_path, **extra):
    GlobalHydra.instance().clear()
    overrides = [f"actor_rollout_ref.rollout.n={N}", "meds.use_last_n_layers=3", "meds.backend=numba",
                 f"trainer.default_local_dir={tmp_path}", *[f"{k}={v}" for k, v in extra.items()]]
    with initialize_config_module(config_module="meds_core.adapters.verl.config", version_base=None):
        return compose(config_name="meds_trainer", overrides=overrides)


def _trainer(cfg):
    """MEDSTrainerSync without veRL's worker set-up (only the driver-side state _compute_advantage needs)."""
    from meds_core.adapters.verl.settings import check_verl_config

    t = object.__new__(MEDSTrainerSync)
    t.config = cfg
    t.meds_config = check_verl_config(cfg)
    t.meds_settings = TrainerSettings.from_node(cfg.meds_trainer)
    t.meds_memory = ErrorMemory(t.meds_config)
    t._meds_no_answer = {}
    return t


def _feats(kinds, rng):
    base = {"A": A, "B": B, "R": RIGHT}
    return np.stack([base[k] + rng.normal(0, 0.01, 3) for k in kinds]).astype(np.float32)


def _put_step(step: int, index: int, kinds: str, rng) -> KVBatchMeta:
    """One GRPO group of N rollouts: 'R' correct (+1), 'A'/'B' wrong (-1) near error modes A/B."""
    uid = f"u{step}x{index}"
    keys = [f"{uid}_{i}_0" for i in range(N)]
    lens = [3 + i for i in range(N)]
    score = [1.0 if k == "R" else -1.0 for k in kinds]
    nested = lambda ts: torch.nested.as_nested_tensor(ts, layout=torch.jagged)  # noqa: E731
    rm = [torch.zeros(n) for n in lens]
    for r, s in zip(rm, score):
        r[-1] = s
    td = TensorDict({"rm_scores": nested(rm), "response_mask": nested([torch.ones(n, dtype=torch.long) for n in lens]),
                     "index": torch.full((N,), index), "meds_features": torch.from_numpy(_feats(kinds, rng))},
                    batch_size=[N])
    td["uid"] = NonTensorStack(*[NonTensorData(uid) for _ in keys])
    td["extra_fields"] = NonTensorStack(*[NonTensorData({"reward_extra_info": {"acc": k == "R"}}) for k in kinds])
    tq.kv_batch_put(keys=keys, partition_id="train", fields=td)
    return KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train")


def _grpo(scores: np.ndarray) -> np.ndarray:
    """Independent GRPO advantage of one group: (r - mean) / (unbiased std + 1e-6)."""
    return (scores - scores.mean()) / (scores.std(ddof=1) + 1e-6)


@pytest.fixture(scope="module")
def transfer_queue():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    tq.init()
    yield
    tq.close()
    ray.shutdown()


def test_shaping_before_verl_grpo_advantages(transfer_queue, tmp_path):
    rng = np.random.default_rng(0)
    trainer = _trainer(_config(tmp_path))
    # step 1: empty memory -> plain GRPO; the memory stores wrong rows of modes A (x3) and B (x2)
    batch = _put_step(1, 7, "RAAABB", rng)
    metrics: dict = {}
    trainer._compute_advantage(batch, metrics)
    out = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=["advantages", "meds_penalty"])
    adv = np.array([float(a[-1]) for a in out["advantages"].unbind()])
    np.testing.assert_allclose(adv, _grpo(np.array([1, -1, -1, -1, -1, -1.0])), atol=1e-5)
    assert not out["meds_penalty"].any() and set(METRIC_NAMES) <= set(metrics)

    # step 2, same prompt: a repeat of A (3 stored), a repeat of B (2 stored) -> different penalties
    batch = _put_step(2, 7, "RRAABB", rng)
    metrics = {}
    trainer._compute_advantage(batch, metrics)
    out = tq.kv_batch_get(keys=batch.keys, partition_id="train",
                          select_fields=["advantages", "meds_penalty", "rm_scores", "meds_raw_rm_scores"])
    pen = out["meds_penalty"].double().numpy()
    expected_pen = np.array([0, 0, 0.1 * np.log(4), 0.1 * np.log(4), 0.1 * np.log(3), 0.1 * np.log(3)])
    np.testing.assert_allclose(pen, expected_pen, atol=1e-6)
    shaped = np.array([float(r.sum()) for r in out["rm_scores"].unbind()])
    raw = np.array([float(r.sum()) for r in out["meds_raw_rm_scores"].unbind()])
    np.testing.assert_allclose(shaped, raw - expected_pen, atol=1e-6)
    adv = np.array([float(a[-1]) for a in out["advantages"].unbind()])
    np.testing.assert_allclose(adv, _grpo(shaped), atol=1e-5)
    assert adv[2] < adv[4] < 0  # the older, bigger error mode is pushed down more
    assert metrics["meds/penalized_frac"] == pytest.approx(4 / 6) and metrics["meds/memory_rows"] == 12.0

    # an all-wrong group is not shaped (mixed_groups_only) though its rows are stored
    batch = _put_step(3, 7, "AAABBB", rng)
    trainer._compute_advantage(batch, {})
    out = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=["meds_penalty"])
    assert not out["meds_penalty"].any() and trainer.meds_memory.num_rows == 18


def test_memory_saved_with_checkpoint_and_restored(tmp_path, monkeypatch):
    """_save_checkpoint writes the memory into global_step_N before veRL's save; _load_checkpoint (resume auto)
    restores it, and the restored memory gives the same penalties as the original on the next step."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    rng = np.random.default_rng(1)
    saved_steps = []
    monkeypatch.setattr(PPOTrainer, "_save_checkpoint", lambda self: saved_steps.append(self.global_steps))
    monkeypatch.setattr(PPOTrainer, "_load_checkpoint", lambda self: setattr(self, "global_steps", saved_steps[-1]))
    cfg = _config(tmp_path)
    first = _trainer(cfg)
    keys = [5] * 6 + [9] * 6
    first.meds_memory.update(keys, _feats("RAAABB" * 2, rng), [1, 0, 0, 0, 0, 0] * 2)
    first.global_steps = 50
    first._save_checkpoint()
    assert saved_steps == [50] and (tmp_path / "global_step_50" / "meds_memory.bin").is_file()

    resumed = _trainer(cfg)
    resumed._load_checkpoint()
    assert resumed.global_steps == 50 and resumed.meds_memory.num_rows == 12
    nxt = _feats("RAABBA" * 2, rng)
    a = first.meds_memory.update(keys, nxt, [1, 0, 0, 0, 0, 0] * 2)
    b = resumed.meds_memory.update(keys, nxt, [1, 0, 0, 0, 0, 0] * 2)
    np.testing.assert_array_equal(a.cluster_size, b.cluster_size)
    assert a.cluster_size.max() > 0

    (tmp_path / "global_step_50" / "meds_memory.bin").unlink()  # e.g. a baseline checkpoint: empty memory, warned
    fresh = _trainer(cfg)
    fresh._load_checkpoint()
    assert fresh.meds_memory.num_rows == 0
