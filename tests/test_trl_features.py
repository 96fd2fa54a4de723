"""TRL conventions and the TRL features users combine with MEDS, each in a real GRPOTrainer run (tiny Qwen2, CPU).

- TRL's own reward metrics stay raw with MEDSGRPOTrainer (stock GRPOTrainer at learning rate 0 is the oracle).
- Features come from the tokens TRL trains on: a rollout_func's own prompt_ids, model-written tokens only (env_mask),
  truncated completions masked by mask_truncated_completions.
- Every loss_type, num_iterations > 1, conversational prompts, async rewards and reward models work; a
  vision-language processor and the reward fallback's unsupported settings are refused with the reason.

docs/trl_features.md lists which test shows which feature.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("trl")
torch = pytest.importorskip("torch")

import trl_toy as T  # noqa: E402
from trl_recording import CONFIG, grpo_advantages, length_reward, make  # noqa: E402

from meds_core import MEDSConfig  # noqa: E402
from meds_core.adapters.trl import MEDSGRPOTrainer, MEDSPenaltyReward  # noqa: E402

FRAMEWORK = ("rewards/accuracy/mean", "rewards/accuracy/std", "rewards/length_reward/mean",
             "rewards/length_reward/std", "reward", "reward_std", "frac_reward_zero_std")


def _step_logs(trainer):
    return [h for h in trainer.state.log_history if "reward" in h]


def _assert_features_match_oracle(trainer):
    assert trainer.rec, "no generation batch was recorded"
    for r in trainer.rec:
        np.testing.assert_array_equal(np.isnan(r["features"]).all(1), np.isnan(r["oracle"]).all(1))
        np.testing.assert_allclose(r["features"], r["oracle"], rtol=1e-4, atol=1e-4)
    assert sum(np.isfinite(r["features"]).all(1).sum() for r in trainer.rec) > 0, "no completion had an answer"


# -- TRL's reward metrics stay raw -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale, aggregation, mixed_only", [("group", "sum_then_normalize", False),
                                                            ("batch", "normalize_then_sum", True)])
def test_framework_reward_metrics_equal_stock_trl_while_the_advantages_are_shaped(tmp_path, scale, aggregation,
                                                                                  mixed_only):
    from trl import GRPOTrainer

    # learning_rate=0: both runs generate the same completions at every step, so stock TRL's logs are the oracle
    # (two prompts, so each one's memory grows every step and clusters form)
    kw = dict(reward_funcs=[T.accuracy, length_reward], scale_rewards=scale, multi_objective_aggregation=aggregation,
              learning_rate=0.0, max_steps=4, dataset=T.toy_dataset(2))
    config = MEDSConfig(use_last_n_layers=3, penalty_coef=0.5, mixed_groups_only=mixed_only)
    stock = make(tmp_path / "stock", cls=GRPOTrainer, **kw)
    stock.train()
    meds = make(tmp_path / "meds", config=config, **kw)
    meds.train()
    a, b = _step_logs(stock), _step_logs(meds)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert x["completions/mean_length"] == y["completions/mean_length"]  # the same rollouts
        for name in FRAMEWORK:
            assert y[name] == pytest.approx(x[name], abs=1e-6), name
    penalised = [h for h in b if h["meds/penalty_mean"] > 0]
    assert penalised, "no penalty in 4 steps: nothing was checked"
    for h in penalised:
        assert h["rewards/accuracy/mean"] == pytest.approx(h["meds/raw_reward_mean"])
        assert h["meds/shaped_reward_mean"] < h["meds/raw_reward_mean"]
    G = meds.num_generations
    shaped = 0
    for r in meds.rec:  # the shaping still feeds the advantages
        shaped += int((r["rewards_per_func"][:, 0] != r["raw"]).sum())
        adv = grpo_advantages(r["rewards_per_func"].astype(np.float64), np.ones(2), G, scale, aggregation)
        np.testing.assert_allclose(r["advantages"], adv, rtol=1e-4, atol=1e-4)
    assert shaped > 0
    # the completions table holds the raw rewards too
    np.testing.assert_array_equal(list(meds._logs["rewards"]["accuracy"]), meds.rec[-1]["raw"])


# -- features from the tokens TRL trains on ----------------------------------------------------------------------------


def test_mask_truncated_completions_reuses_trls_forward_and_reads_truncated_rows_whole(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="meds_core.adapters.trl"):
        tr = make(tmp_path, per_device_train_batch_size=4, steps_per_generation=2, mask_truncated_completions=True,
                  max_completion_length=4, max_steps=4)
        tr.train()
    eos = T.VOCAB.index("<eos>")
    ends = [c[-1] == eos for r in tr.rec for c in r["completion_ids"]]
    assert not all(ends) and any(ends), "need both truncated and finished completions"
    assert tr.meds_reused_forwards == 2 and tr.meds_extra_forwards == 0
    assert not any("saw a different batch" in r.getMessage() for r in caplog.records)
    assert tr.meds_masked_row_forwards > 0  # truncated rows with an answer: features from an unmasked forward
    _assert_features_match_oracle(tr)


def test_model_written_answers_skip_tool_written_markers():
    from meds_core.adapters.trl.batch import model_written_answers

    tok = T.toy_tokenizer()
    ids = tok(f"{T.MARKER} 7 }} so {T.MARKER} 9 }} <eos>")["input_ids"]  # model: [0, 3), tool: [3, 8)
    mask = [1, 1, 1, 0, 0, 0, 0, 0]
    starts, targets = model_written_answers(tok, [ids, ids, ids], T.MARKER, [mask, [1] * 8, [0] * 8])
    assert starts.tolist() == [1, 5, -1] and targets.tolist() == [T.VOCAB.index("7"), T.VOCAB.index("9"), -1]
    # a marker the model wrote whose answer a tool wrote is no answer of the model's
    starts, _ = model_written_answers(tok, [ids], T.MARKER, [[1, 0, 0, 0, 0, 0, 0, 0]])
    assert starts.tolist() == [-1]


PREFIX = "so"  # a token the rollout puts in front of each prompt: re-tokenising the prompt text would miss it
ENV_TURN = f"so {T.MARKER} 9 }} <eos>"  # written by the environment after the model's turn, answer marker included


def env_rollout(prompts, trainer):
    """A rollout_func: the model answers, then an environment appends a turn of its own (env_mask 0)."""
    tok = trainer.processing_class
    model = trainer.accelerator.unwrap_model(trainer.model)
    env = tok(ENV_TURN)["input_ids"]
    eos = tok.eos_token_id
    prompt_ids, completion_ids, masks = [], [], []
    for p in prompts:
        ids = tok(f"{PREFIX} {p}")["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=4, do_sample=True, pad_token_id=tok.pad_token_id, eos_token_id=eos)
        own = out[0, len(ids):].tolist()
        own = own[:own.index(eos)] if eos in own else own
        prompt_ids.append(ids)
        completion_ids.append(own + env)
        masks.append([1] * len(own) + [0] * len(env))
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None, "env_mask": masks}


@pytest.mark.parametrize("steps_per_generation", [1, 2])
def test_rollout_func_features_use_its_prompt_ids_and_only_model_written_tokens(tmp_path, steps_per_generation):
    tr = make(tmp_path, rollout_func=env_rollout, per_device_train_batch_size=8 // steps_per_generation,
              steps_per_generation=steps_per_generation, max_steps=2 * steps_per_generation)
    tr.train()
    assert len(tr.rec) == 2
    if steps_per_generation == 2:  # TRL's old-log-prob forward holds the rollout's own tokens: reused
        assert tr.meds_reused_forwards == 2 and tr.meds_extra_forwards == 0
    else:
        assert tr.meds_extra_forwards == 2
    prefix = T.VOCAB.index(PREFIX)
    model_answers = 0
    for r in tr.rec:
        assert all(p[0] == prefix for p in r["prompt_ids"])
        assert all(m[-1] == 0 for m in r["tool_mask"])  # every completion ends with the environment's marker
        model_answers += int(np.isfinite(r["features"]).all(1).sum())
    assert model_answers > 0
    _assert_features_match_oracle(tr)  # the oracle reads the last marker the model itself wrote


def test_a_vision_language_processor_is_refused_before_trl_loads_anything(tmp_path):
    from transformers import CLIPImageProcessor, LlavaProcessor

    tok = T.toy_tokenizer()
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok, image_token="<pad>")
    model = T.toy_model(seed=1)
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    with pytest.raises(NotImplementedError, match="text-only models"):
        MEDSGRPOTrainer(model=model, reward_funcs=[T.accuracy], args=T.grpo_args(str(tmp_path)),
                        train_dataset=T.toy_dataset(), processing_class=processor, meds_config=CONFIG)
    # TRL's __init__ begins with set_seed(args.seed): the global RNG is untouched, so it never started
    assert torch.equal(torch.get_rng_state(), rng)


# -- TRL features combined with MEDS -----------------------------------------------------------------------------------


def test_num_iterations_two_reuses_trls_forward_and_updates_the_memory_once_per_generation(tmp_path):
    tr = make(tmp_path, num_iterations=2, max_steps=4)
    tr.train()
    assert len(tr.rec) == 2 and tr.meds_memory.step == 2
    assert tr.meds_reused_forwards == 2 and tr.meds_extra_forwards == 0
    _assert_features_match_oracle(tr)


LOSS_TYPES = ["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"]


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_type_trains_on_the_shaped_advantages(tmp_path, loss_type):
    extra = {"importance_sampling_level": "sequence"} if loss_type == "luspo" else {}
    tr = make(tmp_path, loss_type=loss_type, max_steps=2, **extra)
    tr.train()
    assert len(tr.rec) == 2
    for r in tr.rec:
        adv = grpo_advantages(r["rewards_per_func"].astype(np.float64), np.ones(1), tr.num_generations, "group",
                              "sum_then_normalize")
        np.testing.assert_allclose(r["advantages"], adv, rtol=1e-4, atol=1e-4)
    losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    assert len(losses) == 2 and np.isfinite(losses).all()


def chat_tokenizer():
    tok = T.toy_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tok


async def async_accuracy(completions, answer, **kwargs):
    return T.accuracy(completions, answer)


def test_conversational_prompts_and_an_async_correctness_reward(tmp_path):
    # two prompts, so each one's memory grows every step and clusters form
    ds = T.toy_dataset(2).map(lambda x: {"prompt": [{"role": "user", "content": x["prompt"]}]})
    tr = make(tmp_path, tok=chat_tokenizer(), dataset=ds, reward_funcs=[async_accuracy], max_steps=4)
    tr.train()
    assert isinstance(tr.rec[0]["keys"][0], str) and len(tr.rec) == 4
    shaped = 0
    for r in tr.rec:
        shaped += int((r["rewards_per_func"][:, 0] != r["raw"]).sum())
        np.testing.assert_array_equal(r["rewards_per_func"][:, 0] <= r["raw"], True)
    assert shaped > 0
    _assert_features_match_oracle(tr)


def test_a_reward_model_column_beside_the_correctness_reward(tmp_path):
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    torch.manual_seed(1)
    rm = Qwen2ForSequenceClassification(Qwen2Config(
        vocab_size=len(T.VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_labels=1, pad_token_id=0))
    rm.config._name_or_path = "tiny-rm"
    tok = T.toy_tokenizer()
    tr = make(tmp_path, tok=tok, reward_funcs=[T.accuracy, rm], reward_processing_classes=[None, tok], max_steps=3)
    tr.train()
    assert tr.reward_func_names == ["accuracy", "tiny-rm"]
    logs = _step_logs(tr)
    for r, h in zip(tr.rec, logs):
        scores = r["rewards_per_func"][:, 1]
        assert np.isfinite(scores).all() and scores.std() > 0  # the reward model scored, and was not shaped:
        assert h["rewards/tiny-rm/mean"] == pytest.approx(float(scores.mean()), abs=1e-6)
        assert h["rewards/accuracy/mean"] == pytest.approx(float(r["raw"].mean()), abs=1e-6)
        adv = grpo_advantages(r["rewards_per_func"].astype(np.float64), np.ones(2), tr.num_generations, "group",
                              "sum_then_normalize")
        np.testing.assert_allclose(r["advantages"], adv, rtol=1e-4, atol=1e-4)


# -- the reward-function fallback: what it refuses ---------------------------------------------------------------------


def test_penalty_reward_refuses_settings_where_it_would_not_be_meds(tmp_path):
    from trl import GRPOTrainer

    with pytest.raises(TypeError, match="correctness_func is async"):
        MEDSPenaltyReward(async_accuracy)
    meds = MEDSPenaltyReward(T.accuracy, CONFIG)
    tr = make(tmp_path / "a", cls=GRPOTrainer, reward_funcs=[T.accuracy, meds],
              multi_objective_aggregation="normalize_then_sum")
    with pytest.raises(ValueError, match="needs multi_objective_aggregation='sum_then_normalize'"):
        meds.bind(tr)
    tr = make(tmp_path / "b", cls=GRPOTrainer, reward_funcs=[T.accuracy, meds], reward_weights=[1.0, 0.5])
    with pytest.raises(ValueError, match="reward weight is 0.5"):
        meds.bind(tr)
    tr = make(tmp_path / "c", cls=GRPOTrainer, reward_funcs=[T.accuracy, meds], rollout_func=env_rollout)
    with pytest.raises(ValueError, match="does not support tools, environment_factory or rollout_func"):
        meds.bind(tr)
    assert meds.trainer is None


# -- tool-calling environments -----------------------------------------------------------------------------------------


def byte_chat_tokenizer():
    """A byte-level tokenizer (256 byte tokens, no merges) with Qwen3's chat template, as TRL's tool loop needs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import qwen3_chat_template

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = qwen3_chat_template
    return fast


class LookupEnv:
    """An environment with one tool whose result holds an answer marker, and a reward of its own (1, 0, 1, ...)."""

    calls = 0

    def reset(self, **kwargs):
        return None

    def look(self) -> str:
        """Look the answer up.

        Returns:
            The answer, boxed.
        """
        return f"{T.MARKER}9}}"

    def get_reward(self) -> float:
        LookupEnv.calls += 1
        return float(LookupEnv.calls % 2)


FIRST_TURN = f'{T.MARKER}7}}<tool_call>\n{{"name": "look", "arguments": {{}}}}\n</tool_call><|im_end|>'


def first_turn_rollout(prompts, trainer):
    """The model's first turn, fixed: an answer of its own, then a tool call (TRL's tool loop takes it from there)."""
    ids = trainer.processing_class(FIRST_TURN)["input_ids"]
    return {"prompt_ids": trainer._tokenize_prompts(prompts)[0], "completion_ids": [list(ids) for _ in prompts],
            "logprobs": None}


def test_environment_tools_owned_reward_and_tool_masks(tmp_path):
    """environment_factory with a tool and get_reward, TRL's multi-turn tool loop and tool_mask: the answer comes
    from the model-written turn, never from the tool's result; the environment's reward is the correctness column,
    logged raw under its own name."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl_recording import Recording

    tok = byte_chat_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=4096, tie_word_embeddings=False))

    class Bytes(Recording):
        marker_ids = tok(T.MARKER)["input_ids"]

    ds = T.toy_dataset().map(lambda x: {"prompt": [{"role": "user", "content": x["prompt"]}]})
    tr = make(tmp_path, cls=Bytes, tok=tok, model=model, dataset=ds, reward_funcs=[], environment_factory=LookupEnv,
              rollout_func=first_turn_rollout, correctness_reward="LookupEnv", max_completion_length=200,
              max_steps=2)
    tr.train()
    marker = tok(T.MARKER)["input_ids"]
    for r in tr.rec:
        for c, m in zip(r["completion_ids"], r["tool_mask"]):
            assert 0 in m  # the tool's result is inside the completion, masked
            tool_part = [t for t, keep in zip(c, m) if not keep]
            assert any(tool_part[i:i + len(marker)] == marker for i in range(len(tool_part)))
        assert np.isfinite(r["features"]).all()  # every completion's own answer (7) was read
    _assert_features_match_oracle(tr)
    logs = _step_logs(tr)
    assert tr.reward_func_names == ["LookupEnv"]
    for r, h in zip(tr.rec, logs):
        assert h["rewards/LookupEnv/mean"] == pytest.approx(float(np.mean(r["raw_per_func"][:, 0])))
    assert tr.meds_memory.step == 2 and tr.meds_memory.num_rows > 0
