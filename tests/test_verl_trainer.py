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
from tensordict import TensorDict  # noqa: E402
from tensordict.tensorclass import NonTensorData, NonTensorStack  # noqa: E402
from transfer_queue import KVBatchMeta  # noqa: E402

from meds_core import ErrorMemory  # noqa: E402
from meds_core.adapters.verl.settings import TrainerSettings  # noqa: E402
from meds_core.adapters.verl.trainer import MEDSTrainerSync  # noqa: E402
from meds_core.step.step_stats import METRIC_NAMES  # noqa: E402

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

    started = not ray.is_initialized()
    if started:  # TransferQueue's controller and storage actors need logical CPUs beyond this box's 2 cores
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    tq.init()
    yield
    tq.close()
    if started:
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
                          select_fields=["advantages", "meds_penalty", "rm_scores", "meds_raw_rm_scores",
                                         "token_level_rewards"])
    pen = out["meds_penalty"].double().numpy()
    expected_pen = np.array([0, 0, 0.1 * np.log(4), 0.1 * np.log(4), 0.1 * np.log(3), 0.1 * np.log(3)])
    np.testing.assert_allclose(pen, expected_pen, atol=1e-6)
    # after the advantages: rm_scores hold the reward's raw scores again (veRL's critic/score/* stay raw), the
    # shaped ones that trained the policy are token_level_rewards (critic/rewards/*)
    shaped = np.array([float(r.sum()) for r in out["token_level_rewards"].unbind()])
    raw = np.array([float(r.sum()) for r in out["meds_raw_rm_scores"].unbind()])
    np.testing.assert_allclose([float(r.sum()) for r in out["rm_scores"].unbind()], raw, atol=0)
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


def test_old_log_prob_pass_returns_features_through_transfer_queue(transfer_queue, tmp_path, monkeypatch):
    """Driver -> worker -> driver on real TransferQueue: the trainer locates answers and writes meds_from_end, veRL's
    tqbridge hands the flagged batch to MEDSActorRolloutRefWorker.compute_log_prob, whose actor runs veRL's real
    engine forward with the capture; the features come back in TransferQueue and equal the oracle."""
    from types import SimpleNamespace

    from verl.utils import tensordict_utils as tu
    from verl_engine_harness import (
        char_tokenizer,
        init_gloo,
        make_engine,
        oracle_features,
        patch_cpu_devices,
        tiny_qwen2,
    )

    from meds_core.adapters.verl.engine_capture import FEATURES, FLAG, install_capture
    from meds_core.adapters.verl.worker import MEDSActorRolloutRefWorker

    init_gloo()
    patch_cpu_devices(monkeypatch)
    trainer = _trainer(_config(tmp_path, **{"actor_rollout_ref.rollout.calculate_log_probs": False}))
    trainer.tokenizer = tok = char_tokenizer()
    model = tiny_qwen2()
    engine = make_engine(model)
    install_capture(engine, trainer.meds_config)

    def infer_batch(data):  # what veRL's TrainingWorker.infer_batch does around the engine, minus FSDP modes
        tu.assign_non_tensor(data, use_remove_padding=True, use_dynamic_bsz=True, max_token_len_per_gpu=64)
        out = engine.forward_backward_batch(data, loss_function=None, forward_only=True)
        return tu.get_tensordict(tensor_dict=out["model_output"], non_tensor_dict={"metrics": {}})

    worker = object.__new__(MEDSActorRolloutRefWorker)  # veRL's decorated compute_log_prob, tqbridge included
    worker.actor, worker.enable_routing_replay = SimpleNamespace(infer_batch=infer_batch), False
    worker._Worker__collect_dp_rank = {"actor": True}
    trainer.actor_rollout_wg = SimpleNamespace(compute_log_prob=worker.compute_log_prob)

    responses = ["so x = \\boxed{4}", "thus \\boxed{12}.", "no idea", "maybe \\boxed{7} or", "ok \\boxed{4}",
                 "h \\boxed{5}"]
    prompt = torch.tensor(tok.encode("what is 2+2?").ids)
    resp = [torch.tensor(tok.encode(r).ids) for r in responses]
    ids = [torch.cat([prompt, r]) for r in resp]
    nested = lambda ts: torch.nested.as_nested_tensor(ts, layout=torch.jagged)  # noqa: E731
    ones = nested([torch.ones(len(r), dtype=torch.long) for r in resp])
    keys = [f"uQ_{i}_0" for i in range(N)]
    td = TensorDict({"prompts": nested([prompt] * N), "responses": nested(resp), "input_ids": nested(ids),
                     "position_ids": nested([torch.arange(len(x)) for x in ids]), "response_mask": ones,
                     "loss_mask": ones, "rm_scores": nested([torch.zeros(len(r)) for r in resp]),
                     "index": torch.full((N,), 3)}, batch_size=[N])
    td["uid"] = NonTensorStack(*[NonTensorData("uQ") for _ in keys])
    td["extra_fields"] = NonTensorStack(*[NonTensorData({"reward_extra_info": {"acc": i == 0}}) for i in range(N)])
    tq.kv_batch_put(keys=keys, partition_id="train", fields=td)
    batch = KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train", extra_info={"temperature": 1.0})

    metrics: dict = {}
    out = trainer._compute_old_log_prob(batch, metrics)
    assert FLAG not in batch.extra_info and FLAG not in out.extra_info and "actor/entropy" in metrics
    data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["meds_from_end", FEATURES])
    from_end = [0 if "\\boxed{" not in r else len(r) - (r.rfind("\\boxed{") + len("\\boxed{")) for r in responses]
    assert data["meds_from_end"].tolist() == from_end
    got = torch.stack(list(data[FEATURES].unbind())).double()
    torch.testing.assert_close(got, oracle_features(model, ids, from_end, trainer.meds_config), equal_nan=True,
                               rtol=1e-4, atol=1e-4)
    metrics = {}
    trainer._compute_advantage(batch, metrics)
    assert metrics["meds/no_answer_frac"] == pytest.approx(1 / 6) and trainer.meds_memory.num_rows == 5


def test_correctness_without_acc_warns_once_and_uses_the_score_sign():
    """veRL 0.9's reward managers fill reward_extra_info['acc'] with the score for a bare-float reward; a reward
    manager that reports no acc at all gets one warning, and correctness = (score > 0) for those rows."""
    from meds_core.adapters.verl.driver import correctness

    extra = [{"reward_extra_info": {"acc": True}}, {"reward_extra_info": {}}, {}, {"reward_extra_info": {}}]
    outcome = torch.tensor([-1.0, 1.0, 0.0, 0.5])
    with pytest.warns(UserWarning, match=r"2 rollouts have no reward_extra_info\['acc'\]") as record:
        out = correctness(extra, outcome, "acc", [False, False, False, True])
    assert len(record) == 1
    np.testing.assert_array_equal(out, [1, 1, 0, -1])  # acc wins over the score; padding is -1


def test_real_init_and_resource_pool_put_the_meds_worker_in_every_actor_role(tmp_path):
    """veRL's own ``PPOTrainer.__init__`` and ``_init_resource_pool_mgr`` run (no ``object.__new__``)."""
    from verl.trainer.ppo.utils import Role

    from meds_core.adapters.verl.worker import MEDSActorRolloutRefWorker

    cfg = _config(tmp_path, **{"meds.penalty_coef": 0.3, "meds_trainer.correct_key": "score_ok"})
    trainer = MEDSTrainerSync(cfg)
    assert trainer.config is cfg and trainer.trainer_mode == "sync" and trainer.replay_buffer is not None  # veRL's
    assert trainer.meds_config.penalty_coef == 0.3 and trainer.meds_settings.correct_key == "score_ok"
    assert trainer.meds_memory.config == trainer.meds_config and trainer.meds_memory.num_rows == 0
    assert trainer._meds_no_answer == {}
    trainer._init_resource_pool_mgr()
    actor_roles = [r for r in (Role.ActorRollout, Role.ActorRolloutRef, Role.Actor) if r in trainer.role_worker_mapping]
    assert actor_roles and all(r in trainer.mapping for r in actor_roles)
    for role in actor_roles:
        assert trainer.role_worker_mapping[role].__ray_actor_class__ is MEDSActorRolloutRefWorker, role
    with pytest.raises(ValueError, match=r"use_last_n_layers=0"):
        MEDSTrainerSync(_config(tmp_path, **{"meds.use_last_n_layers": 0}))
