"""MEDSGRPOTrainer and MEDSPenaltyReward inside real TRL GRPOTrainer runs on a tiny random Qwen2 (CPU)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("trl")
torch = pytest.importorskip("torch")

import trl_toy as T  # noqa: E402
from trl_recording import CONFIG, expected_penalty, grpo_advantages, length_reward, make  # noqa: E402

from meds_core import MEDSConfig  # noqa: E402
from meds_core.adapters.trl import MEDSGRPOTrainer, MEDSPenaltyReward, check_trl_version  # noqa: E402

# -- features ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [CONFIG, MEDSConfig(use_last_n_layers=2, use_layer_diff=True)])
def test_extra_forward_features_equal_output_hidden_states(tmp_path, config):
    tr = make(tmp_path, config=config, max_steps=3)
    tr.train()
    assert tr.meds_extra_forwards == 3 and tr.meds_reused_forwards == 0
    for r in tr.rec:
        np.testing.assert_array_equal(np.isnan(r["features"]), np.isnan(r["oracle"]))
        np.testing.assert_allclose(r["features"], r["oracle"], rtol=1e-4, atol=1e-4)
    assert sum(np.isfinite(r["features"]).all(1).sum() for r in tr.rec) > 0


def test_reuses_trl_old_logprob_forward_when_trl_runs_one(tmp_path):
    # steps_per_generation > gradient_accumulation_steps: TRL runs its chunked no-grad forward before the rewards
    tr = make(tmp_path, per_device_train_batch_size=4, steps_per_generation=2, max_steps=4)
    tr.train()
    assert tr.meds_reused_forwards == 2 and tr.meds_extra_forwards == 0
    for r in tr.rec:
        np.testing.assert_allclose(r["features"], r["oracle"], rtol=1e-4, atol=1e-4)


def test_features_with_peft_and_gradient_checkpointing(tmp_path):
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    tr = make(tmp_path, peft_config=lora, gradient_checkpointing=True, max_steps=2)
    tr.train()
    assert len(tr.rec) == 2
    for r in tr.rec:
        np.testing.assert_allclose(r["features"], r["oracle"], rtol=1e-4, atol=1e-4)


def test_reference_pass_with_adapter_disabled_is_never_captured(tmp_path):
    # PEFT + beta > 0 and no old-log-prob pass: TRL's first no-grad policy-model call is the reference pass with the
    # adapter disabled; the features must come from the adapted policy (extra forward), never from that pass
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM",
                           init_lora_weights=False)
    tr = make(tmp_path, peft_config=lora, beta=0.1, max_steps=2)
    tr.train()
    assert tr.meds_reused_forwards == 0 and tr.meds_extra_forwards == 2
    for r in tr.rec:
        np.testing.assert_allclose(r["features"], r["oracle"], rtol=1e-4, atol=1e-4)


def test_a_different_batch_seen_by_trl_is_not_reused(tmp_path, caplog):
    tr = make(tmp_path, max_steps=1)
    tok = tr.processing_class
    prompts = ["3 + 4 =", "5 + 6 ="]
    completions = [tok(f"{T.MARKER} 7 }} <eos>")["input_ids"], tok(f"{T.MARKER} 12 }} <eos>")["input_ids"]]
    other = [completions[0], tok(f"{T.MARKER} 11 }} <eos>")["input_ids"]]  # one token differs
    from meds_core.adapters.trl.batch import padded_batch

    prompt_ids = tr._tokenize_prompts(prompts)[0]
    tr._meds_rollout = {"prompt_ids": prompt_ids, "completion_ids": completions, "tool_mask": None}
    ids, mask, P = padded_batch(prompt_ids, other, tok.pad_token_id)
    tr._meds_expect_old_logps = True
    with torch.no_grad():
        tr._get_per_token_logps_and_entropies(tr.model, ids, mask, ids.shape[1] - P, batch_size=2)
    assert tr._meds_pending == {"matched": False} and not tr.meds_capture.armed
    with caplog.at_level(logging.WARNING, logger="meds_core.adapters.trl"):
        feats, no_answer = MEDSGRPOTrainer._meds_features(tr, prompts, completions)
    assert tr.meds_extra_forwards == 1 and tr.meds_reused_forwards == 0
    assert any("saw a different batch" in r.getMessage() for r in caplog.records)
    assert not no_answer.any() and bool(torch.isfinite(feats).all()) and bool((feats != 0).any())


# -- shaping and advantages --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale, aggregation", [("group", "sum_then_normalize"), ("none", "sum_then_normalize"),
                                                ("batch", "normalize_then_sum")])
def test_advantages_are_grpo_of_the_shaped_rewards(tmp_path, scale, aggregation):
    tr = make(tmp_path, reward_funcs=[T.accuracy, length_reward], scale_rewards=scale,
              multi_objective_aggregation=aggregation, max_steps=6)
    tr.train()
    G = tr.num_generations
    shaped_somewhere = False
    for r in tr.rec:
        raw, rpf = r["raw"], r["rewards_per_func"]
        correct, sizes, groups = r["correct"], r["sizes"], r["group_ids"]
        mixed = np.array([(correct[groups == g] == 1).any() and (correct[groups == g] == 0).any() for g in groups])
        pen = np.array([expected_penalty(s) if c == 0 and m else 0.0 for s, c, m in zip(sizes, correct, mixed)])
        np.testing.assert_allclose(rpf[:, 0], raw - pen, atol=1e-6)
        shaped_somewhere |= bool((pen > 0).any())
        adv = grpo_advantages(rpf.astype(np.float64), np.ones(2), G, scale, aggregation)
        np.testing.assert_allclose(r["advantages"], adv, rtol=1e-4, atol=1e-4)
    assert shaped_somewhere, "no penalty reached the advantages in 6 steps"


def test_memory_grows_and_metrics_are_logged(tmp_path):
    tr = make(tmp_path, max_steps=6)
    tr.train()
    rows = [h["meds/memory_rows"] for h in tr.state.log_history if "meds/memory_rows" in h]
    assert len(rows) == 6 and rows == sorted(rows) and rows[-1] == tr.meds_memory.num_rows > 0
    logged = [h for h in tr.state.log_history if "meds/penalty_mean" in h]
    for name in ("meds/penalty_mean", "meds/penalized_frac", "meds/clusters_mean", "meds/memory_rows",
                 "meds/no_answer_frac", "meds/cluster_seconds"):
        assert all(name in h for h in logged), name
    assert max(h["meds/penalty_mean"] for h in logged) > 0
    assert tr.meds_memory.step == 6
    assert len(tr.meds_seconds) == 6 and all(s > 0 for s in tr.meds_seconds)
    np.testing.assert_allclose([h["meds/seconds"] for h in logged], tr.meds_seconds)


def test_mixed_groups_only_gates_uniform_groups(tmp_path):
    tr = make(tmp_path, max_steps=6)
    tr.train()
    uniform = 0
    for r in tr.rec:
        for g in np.unique(r["group_ids"]):
            m = r["group_ids"] == g
            if len(set(r["correct"][m].tolist())) == 1:  # all right or all wrong: TRL keeps it, MEDS leaves it alone
                uniform += 1
                np.testing.assert_array_equal(r["rewards_per_func"][m, 0], r["raw"][m])
    assert uniform > 0, "no all-right or all-wrong group in 6 steps: nothing was checked"


def test_completion_without_answer_gets_no_penalty(tmp_path):
    tok = T.toy_tokenizer()
    model = T.warm_model(tok, no_answer_frac=0.5)
    tr = make(tmp_path, model=model, max_steps=6)
    tr.train()
    marker = T.VOCAB.index(T.MARKER)
    missing = 0
    for r in tr.rec:
        for b, c in enumerate(r["completion_ids"]):
            if marker not in c[:-1] or c[-1] == marker:  # no marker, or nothing after the last one
                missing += 1
                assert r["no_answer"][b] and np.isnan(r["features"][b]).all()
                assert r["rewards_per_func"][b, 0] == r["raw"][b]
    assert missing > 0
    assert max(h["meds/no_answer_frac"] for h in tr.state.log_history if "meds/no_answer_frac" in h) > 0


# -- evaluation, keys, checkpoints ---------------------------------------------------------------------------------


def test_evaluation_never_touches_the_memory(tmp_path):
    tr = make(tmp_path, eval_dataset=T.toy_dataset(4, seed=1), eval_strategy="steps", eval_steps=2,
              per_device_eval_batch_size=8, max_steps=4)
    tr.train()
    assert any("eval_loss" in h or "eval_reward" in h for h in tr.state.log_history)
    assert tr.meds_memory.step == 4  # one update per training generation batch, none for the 2 evaluations
    before = (tr.meds_memory.step, tr.meds_memory.num_rows, tr.meds_memory.keys())
    tr.evaluate()
    assert (tr.meds_memory.step, tr.meds_memory.num_rows, tr.meds_memory.keys()) == before


def test_prompt_key_falls_back_to_a_text_hash_with_one_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="meds_core.adapters.trl"):
        tr = make(tmp_path, dataset=T.toy_dataset(with_id=False), max_steps=2)
        tr.train()
    assert sum("no 'prompt_id' column" in r.getMessage() for r in caplog.records) == 1
    keys = {k for k, _ in tr.meds_memory.keys()}
    assert all(isinstance(k, str) and len(k) == 32 for k in keys)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="correctness_reward='acc' is not a reward function name"):
        make(tmp_path, correctness_reward="acc")
    with pytest.raises(ValueError, match="correctness_reward=3"):
        make(tmp_path, correctness_reward=3)
    with pytest.raises(TypeError, match="meds_config must be a MEDSConfig"):
        make(tmp_path, config={"penalty_coef": 0.5})
    with pytest.raises(RuntimeError, match=r"trl 1\.15\.2 is installed.*supports trl>=1\.16,<1\.17"):
        check_trl_version("1.15.2")
    with pytest.raises(RuntimeError, match="trl 2.0.0 is installed"):
        check_trl_version("2.0.0")


def test_resume_applies_the_same_penalties_as_the_uninterrupted_run(tmp_path):
    full = make(tmp_path / "a", max_steps=6, save_strategy="steps", save_steps=3)
    full.train()
    ckpt = tmp_path / "a" / "out" / "checkpoint-3"
    assert (ckpt / "meds_memory.bin").exists()
    resumed = make(tmp_path / "b", max_steps=6, save_strategy="steps", save_steps=3)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert len(resumed.rec) == 3
    for a, b in zip(full.rec[3:], resumed.rec):
        assert a["completion_ids"] == b["completion_ids"]
        np.testing.assert_array_equal(a["sizes"], b["sizes"])
        np.testing.assert_array_equal(a["rewards_per_func"], b["rewards_per_func"])
    sa, sb = full.meds_memory.state_dict(), resumed.meds_memory.state_dict()
    assert sa["keys"] == sb["keys"] and sa["step"] == sb["step"]
    for x, y in zip(sa["rows"], sb["rows"]):
        np.testing.assert_array_equal(x, y)


def test_resume_from_a_checkpoint_without_memory_warns(tmp_path, caplog):
    from trl import GRPOTrainer

    plain = make(tmp_path / "a", cls=GRPOTrainer, max_steps=2, save_strategy="steps", save_steps=2)
    plain.train()
    tr = make(tmp_path / "b", max_steps=3)
    with caplog.at_level(logging.WARNING, logger="meds_core.adapters.trl"):
        tr.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-2"))
    assert any("has no meds_memory.bin" in r.getMessage() for r in caplog.records)
    assert tr.meds_memory.step == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_hold_identical_memories_and_apply_identical_penalties(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "trl_two_process.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           script, str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert int(a["world"]) == int(b["world"]) == 2
    for k in a.files:
        if "local_features" in k or k.endswith("_keys") and k.startswith("s"):
            continue
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # memory, labels and shaped rewards: identical
    # each rank scored different prompts, and both ranks' features went into every rank's memory
    assert set(a["s0_keys"]).isdisjoint(b["s0_keys"])
    rows = a["mem_rows"]
    for r in (a, b):
        local = r["s0_local_features"]
        local = local[np.isfinite(local).all(1)]
        unit = local / np.linalg.norm(local, axis=1, keepdims=True)
        stored = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        assert all(np.isclose(stored, u, atol=1e-5).all(1).any() for u in unit)


# -- reward-function fallback --------------------------------------------------------------------------------------


def test_penalty_reward_on_a_stock_trainer_matches_the_trainer(tmp_path):
    from trl import GRPOTrainer

    # two prompts, so each one's memory grows every step and penalties are applied
    ref = make(tmp_path / "a", max_steps=4, save_strategy="steps", save_steps=4, dataset=T.toy_dataset(2))
    ref.train()
    meds = MEDSPenaltyReward(T.accuracy, CONFIG)
    stock = make(tmp_path / "b", cls=GRPOTrainer, reward_funcs=[T.accuracy, meds], dataset=T.toy_dataset(2),
                 callbacks=[meds.checkpoint_callback()], max_steps=4, save_strategy="steps", save_steps=4)
    meds.bind(stock)
    stock.train()
    sa, sb = ref.meds_memory.state_dict(), meds.memory.state_dict()
    assert sa["keys"] == sb["keys"] and sa["step"] == sb["step"] == 4
    for x, y in zip(sa["rows"], sb["rows"]):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    pen_a = [h["meds/penalty_mean"] for h in ref.state.log_history if "meds/penalty_mean" in h]
    pen_b = [h["meds/penalty_mean"] for h in stock.state.log_history if "meds/penalty_mean" in h]
    np.testing.assert_allclose(pen_a, pen_b, atol=1e-9)
    # What each path logs at the steps where penalties were applied (README's metrics table):
    penalised_a = [h for h in ref.state.log_history if h.get("meds/penalty_mean", 0) > 0]
    penalised_b = [h for h in stock.state.log_history if h.get("meds/penalty_mean", 0) > 0]
    assert penalised_a and len(penalised_a) == len(penalised_b)
    for h in penalised_a:  # the trainer: TRL's reward metrics are the raw ones
        assert h["rewards/accuracy/mean"] == pytest.approx(h["meds/raw_reward_mean"])
        assert h["reward"] == pytest.approx(h["meds/raw_reward_mean"])
        assert h["meds/shaped_reward_mean"] < h["meds/raw_reward_mean"]
    for h in penalised_b:  # the reward fallback: the penalty is its own column, and TRL's total is the shaped reward
        assert h["rewards/accuracy/mean"] == pytest.approx(h["meds/raw_reward_mean"])
        assert h["rewards/meds_penalty/mean"] == pytest.approx(h["meds/shaped_reward_mean"] - h["meds/raw_reward_mean"])
        assert h["reward"] == pytest.approx(h["meds/shaped_reward_mean"])
    fresh = MEDSPenaltyReward(T.accuracy, CONFIG)
    fresh.load(str(tmp_path / "b" / "out" / "checkpoint-4"))
    assert fresh.memory.num_rows == meds.memory.num_rows


def test_penalty_reward_must_be_bound():
    with pytest.raises(RuntimeError, match=r"call meds\.bind\(trainer\)"):
        MEDSPenaltyReward(T.accuracy)(prompts=["1 + 2 ="], completions=["x"], completion_ids=[[1]])


# -- crash-safe checkpoints --------------------------------------------------------------------------------------------


def test_a_kill_at_any_point_of_the_save_leaves_a_resumable_run_with_the_uninterrupted_memory(tmp_path):
    """One real GRPOTrainer run per kill point, each resuming (resume_from_checkpoint=True) from the previous
    kill and killing itself (os._exit) at the next point, in the order of the save sequence; then one resume that
    finishes. save_total_limit=1, so a rotation before the memory is written would leave nothing to resume."""
    import json

    from meds_core import ErrorMemory
    from meds_core.adapters.trl import last_complete_checkpoint

    script = os.path.join(os.path.dirname(__file__), "trl_kill_during_save.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    points = ("model", "optimizer", "rng", "trainer_state", "memory_partial", "memory_tmp", "memory", "end")
    max_steps = 5

    def run(out, point, resume):
        proc = subprocess.run([sys.executable, script, str(out), point, str(int(resume)), str(max_steps)], env=env,
                              capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stderr[-3000:]

    ref = tmp_path / "uninterrupted"
    ref.mkdir()
    rc, err = run(ref, "none", False)
    assert rc == 0, err
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    expected_resume = []
    for i, point in enumerate(points):
        rc, err = run(crashed, point, resume=i > 0)
        assert rc == 86, f"kill point {point!r} was not reached: rc={rc}\n{err}"
        log = [json.loads(line) for line in (crashed / "log.jsonl").read_text().splitlines()]
        # the kill was at the save of step start+1 (step 2 for the first run)
        start = int(log[-1]["resumed_from"].rsplit("-", 1)[1]) if i else 1
        killed_at = start + 1
        complete_at = killed_at if point in ("memory", "end") else start
        found = last_complete_checkpoint(crashed / "out")
        assert found is not None and found.endswith(f"checkpoint-{complete_at}"), (point, found)
        expected_resume.append(complete_at)
        folders = sorted(p.name for p in (crashed / "out").iterdir() if p.name.startswith("checkpoint-"))
        if complete_at < killed_at:  # the incomplete folder is there, and Transformers alone would pick it
            assert f"checkpoint-{killed_at}" in folders
        assert f"checkpoint-{complete_at}" in folders
    rc, err = run(crashed, "none", resume=True)
    assert rc == 0, err
    log = [json.loads(line) for line in (crashed / "log.jsonl").read_text().splitlines()]
    resumes = [r for r in log if r.get("resume")]
    assert [int(r["resumed_from"].rsplit("-", 1)[1]) for r in resumes] == expected_resume
    assert any(r["transformers_pick"] != r["resumed_from"] for r in resumes)  # the guard mattered
    assert log[-1] == {"finished": True, "memory_step": max_steps}
    a, b = ErrorMemory.load(ref / "final.bin").state_dict(), ErrorMemory.load(crashed / "final.bin").state_dict()
    assert a["keys"] == b["keys"] and a["step"] == b["step"] == max_steps
    for name in ("groups", "lengths", "rows", "labels"):
        np.testing.assert_array_equal(a[name], b[name])
    leftovers = [p for p in (crashed / "out").rglob(".meds_memory.*.tmp")]
    assert leftovers == []  # the killed saves' temp files were removed by the next save into that folder
    assert sorted(p.name for p in (crashed / "out").iterdir() if p.name.startswith("checkpoint-")) == \
        [f"checkpoint-{max_steps}"]  # save_total_limit=1, counted over complete checkpoints


def test_resume_true_refuses_when_no_checkpoint_is_complete(tmp_path):
    tr = make(tmp_path, max_steps=1)
    (tmp_path / "out" / "checkpoint-3").mkdir(parents=True)
    (tmp_path / "out" / "checkpoint-3" / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match="no complete checkpoint .*meds_memory.bin"):
        tr.train(resume_from_checkpoint=True)


# -- what a TRL resume does and does not reproduce ---------------------------------------------------------------------


def _same_state(a, b):
    return a["keys"] == b["keys"] and a["step"] == b["step"] and all(
        np.array_equal(a[n], b[n]) for n in ("groups", "lengths", "rows", "labels"))


def _checkpoint_memory(out, step):
    from meds_core import ErrorMemory

    return ErrorMemory.load(out / f"checkpoint-{step}" / "meds_memory.bin").state_dict()


def test_resume_after_the_first_epoch_continues_the_memory_but_trl_replays_another_prompt_order(tmp_path):
    from meds_core import ErrorMemory

    full = make(tmp_path / "a", max_steps=8, save_strategy="steps", save_steps=1)  # 4 steps per epoch
    full.train()
    for k in range(1, 9):  # every checkpoint holds exactly the memory the run had after step k
        assert _same_state(_checkpoint_memory(tmp_path / "a" / "out", k), full.rec[k - 1]["memory"])
    resumed = make(tmp_path / "b", max_steps=8, save_strategy="steps", save_steps=1)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-5"))
    assert len(resumed.rec) == 3 and resumed.meds_memory.step == full.meds_memory.step == 8
    # TRL's sampler does not restore the second epoch's permutation: the resumed epoch replays the first one's.
    assert [r["keys"] for r in resumed.rec] == [r["keys"] for r in full.rec[1:4]]
    assert [r["keys"] for r in resumed.rec] != [r["keys"] for r in full.rec[5:8]]
    # MEDS itself is exact: the resumed memory is the checkpoint's, updated with the batches TRL gave it.
    replay = ErrorMemory.load(tmp_path / "a" / "out" / "checkpoint-5" / "meds_memory.bin", config=CONFIG)
    for r in resumed.rec:
        np.testing.assert_array_equal(replay.update(r["keys"], r["features"], r["correct"]).cluster_size, r["sizes"])
    assert _same_state(replay.state_dict(), resumed.meds_memory.state_dict())


def test_resume_inside_a_generation_batch_regenerates_it_and_updates_the_memory_once_more(tmp_path):
    kw = dict(max_steps=6, save_strategy="steps", save_steps=1, steps_per_generation=2)
    full = make(tmp_path / "a", **kw)
    full.train()
    assert len(full.rec) == 3  # one generation batch (one memory update) per 2 optimizer steps
    for k in range(1, 7):  # checkpoint-k holds the memory after the generation batch that step k trained on
        assert _same_state(_checkpoint_memory(tmp_path / "a" / "out", k), full.rec[(k - 1) // 2]["memory"])
    on_boundary = make(tmp_path / "b", **kw)
    on_boundary.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-2"))
    assert [r["keys"] for r in on_boundary.rec] == [r["keys"] for r in full.rec[1:]]
    for a, b in zip(full.rec[1:], on_boundary.rec):
        np.testing.assert_array_equal(a["sizes"], b["sizes"])
    assert _same_state(on_boundary.meds_memory.state_dict(), full.meds_memory.state_dict())
    inside = make(tmp_path / "c", **kw)
    inside.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-3"))
    # TRL does not save the second half of generation batch 2: it generates batch 2 again for step 4, and MEDS
    # records that new batch as one more update.
    assert [r["keys"] for r in inside.rec] == [r["keys"] for r in full.rec[1:]]
    assert inside.meds_memory.step == full.meds_memory.step + 1
