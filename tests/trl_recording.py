"""Real GRPOTrainer runs on the toy task that record what MEDS saw and produced, with an independent feature oracle.

Shared by the TRL test modules (``make`` builds a trainer; ``Recording`` keeps one record per generation batch).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import trl_toy as T

from meds_core import MEDSConfig
from meds_core.adapters.trl import MEDSGRPOTrainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIG = MEDSConfig(use_last_n_layers=3, penalty_coef=0.5)


def _runs(mask):
    """[lo, hi) of each maximal run of ones."""
    out, lo = [], None
    for i, v in enumerate(list(mask) + [0]):
        if v and lo is None:
            lo = i
        elif not v and lo is not None:
            out.append((lo, i))
            lo = None
    return out


def oracle_features(model, prompt_ids, completion_ids, config: MEDSConfig, masks=None, marker_ids=None) -> np.ndarray:
    """Independent features: each sample alone (no padding), output_hidden_states, marker found by token id.

    ``masks``: per completion, 1 for model-written tokens; the marker and the answer token must both be model-written.
    ``marker_ids``: the marker's token ids (default: the toy vocabulary's single marker token).
    """
    marker_ids = [T.VOCAB.index(T.MARKER)] if marker_ids is None else list(marker_ids)
    n_m = len(marker_ids)
    L = model.config.num_hidden_layers
    W = model.get_output_embeddings().weight.detach().float()
    out = np.full((len(prompt_ids), config.use_last_n_layers), np.nan)
    was = model.training
    model.eval()
    for b, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        m = [1] * len(c) if masks is None else list(masks[b])
        k = None
        for lo, hi in _runs(m):  # in each run of model-written tokens, the LAST marker counts if something follows it
            last = [i for i in range(lo, hi - n_m + 1) if c[i:i + n_m] == marker_ids]
            if last and last[-1] + n_m < hi:
                k = last[-1] + n_m
        if k is None:
            continue
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([list(p) + list(c)]), output_hidden_states=True).hidden_states
        q = len(p) + k - 1
        n = config.layers_needed
        vals = np.array([float(hs[i][0, q].float() @ W[c[k]]) for i in range(L - n + 1, L + 1)])
        out[b] = np.diff(vals) if config.use_layer_diff else vals
    model.train(was)
    return out


class Recording(MEDSGRPOTrainer):
    """Records, per generation batch, what MEDS saw and produced (plus an oracle computed with the same weights)."""

    marker_ids: list[int] | None = None  # the oracle's marker tokens (None: the toy vocabulary's)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rec: list[dict] = []

    def _meds_features(self, prompts, completion_ids):
        feats, no_answer = super()._meds_features(prompts, completion_ids)
        prompt_ids = self._meds_rollout["prompt_ids"]  # the tokens TRL generated from
        masks = self._meds_rollout["tool_mask"]
        model = self.accelerator.unwrap_model(self.model)
        self.rec.append({"completion_ids": [list(c) for c in completion_ids], "features": feats.cpu().numpy(),
                         "oracle": oracle_features(model, prompt_ids, completion_ids, self.meds_config, masks,
                                                   self.marker_ids),
                         "no_answer": no_answer, "prompt_ids": [list(p) for p in prompt_ids],
                         "tool_mask": masks})
        return feats, no_answer

    def meds_cluster_sizes(self, sizes, correct, group_ids):
        self.rec[-1].update(sizes=sizes.copy(), correct=correct.copy(), group_ids=group_ids.copy())
        return super().meds_cluster_sizes(sizes, correct, group_ids)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        out = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.model.training:
            self.rec[-1]["rewards_per_func"] = out.detach().cpu().numpy().copy()
            self.rec[-1]["raw_per_func"] = self._meds_raw.cpu().numpy().copy()  # before shaping
            self.rec[-1]["raw"] = np.array(T.accuracy(completions, [x["answer"] for x in inputs]))
            self.rec[-1]["keys"] = [x.get("prompt_id") for x in inputs]
            self.rec[-1]["memory"] = self.meds_memory.state_dict()
        return out

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.rec[-1]["advantages"] = out["advantages"].detach().cpu().numpy().copy()
        return out


def make(tmp_path, cls=Recording, config=CONFIG, dataset=None, model=None, tok=None, **args):
    tok = T.toy_tokenizer() if tok is None else tok
    if model is None:
        model = T.warm_model(tok)
    extra = {k: args.pop(k) for k in ("reward_funcs", "callbacks", "eval_dataset", "rollout_func",
                                      "reward_processing_classes", "tools", "environment_factory") if k in args}
    meds = {k: args.pop(k) for k in ("prompt_key_column", "correctness_reward", "peft_config") if k in args}
    kw = dict(model=model, args=T.grpo_args(str(tmp_path / "out"), **args),
              train_dataset=dataset if dataset is not None else T.toy_dataset(), processing_class=tok, **extra)
    kw.setdefault("reward_funcs", [T.accuracy])
    if cls is not None and issubclass(cls, MEDSGRPOTrainer):
        kw.update(meds_config=config, **meds)
    else:
        kw.update({k: v for k, v in meds.items() if k == "peft_config"})
    return cls(**kw)


def expected_penalty(size, coef=CONFIG.penalty_coef, cap=CONFIG.penalty_cap):
    return coef * min(math.log(size + 1.0), cap)


def grpo_advantages(rewards_per_func, weights, G, scale, aggregation):
    """GRPO advantages recomputed from (shaped) rewards, written from TRL's documented formulas."""
    if aggregation == "sum_then_normalize":
        r = (rewards_per_func * weights).sum(1).reshape(-1, G)
        adv = r - r.mean(1, keepdims=True)
        std = r.std(1, ddof=1, keepdims=True) if scale == "group" else np.full_like(r, r.std(ddof=1))
        return (adv if scale == "none" else adv / (std + 1e-4)).ravel()
    g = rewards_per_func.reshape(-1, G, rewards_per_func.shape[1])
    z = ((g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-4)).reshape(-1, g.shape[2])
    s = (z * weights).sum(1)
    return (s - s.mean()) / (s.std(ddof=1) + 1e-4)


def length_reward(completions, **kwargs):
    return [-0.01 * len(c) for c in completions]
