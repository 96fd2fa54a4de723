"""Exact evaluation: the probability of every possible well-formed completion, from next-token distributions.

A well-formed completion is ``\\boxed{ N } <eos>`` with N in 0..99 (4 tokens, each answer one token), so under
sampling at temperature 1 with no top-k/top-p

    P(completion N | prompt) = P(\\boxed{ | prompt) · P(N | prompt \\boxed{) · P(} | ... N) · P(<eos> | ... N })

and P(correct) = P(completion c), with no sampling noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meds_core.demo.run_metrics import entropy
from meds_core.demo.task import MARKER, prompt_text


def completion_probs(model: Any, tokenizer: Any, pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Exact probabilities of the 100 well-formed completions of each prompt, and the answer-token distribution.

    Parameters
    ----------
    model : causal LM (HF), any mode; evaluated under ``torch.no_grad`` in eval mode, mode restored after.
    tokenizer : the task tokenizer (:func:`meds_core.demo.task.build_tokenizer`).
    pairs : list of P (a, b) pairs.

    Returns
    -------
    full : ndarray of shape (P, 100), float64
        ``full[i, n]`` = probability that prompt i's completion is exactly ``\\boxed{ n } <eos>``.
    answer : ndarray of shape (P, V), float64
        Next-token distribution after ``prompt \\boxed{`` (rows sum to 1; V = vocabulary size).
    """
    import torch

    number_ids = torch.tensor(tokenizer.convert_tokens_to_ids([str(n) for n in range(100)]))
    marker_id, close_id, eos_id = tokenizer.convert_tokens_to_ids([MARKER, "}", tokenizer.eos_token])
    prompts = torch.tensor([tokenizer(prompt_text(a, b))["input_ids"] for a, b in pairs])  # [P, plen]
    n_prompt, plen = prompts.shape
    seqs = torch.cat([prompts.repeat_interleave(100, 0), torch.full((n_prompt * 100, 1), marker_id),
                      number_ids.repeat(n_prompt)[:, None], torch.full((n_prompt * 100, 1), close_id)], dim=1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=seqs).logits[:, plen - 1:].double(), -1)  # [P*100, 4, V]
    finally:
        model.train(was_training)
    lp_marker = logp[:, 0, marker_id]
    lp_answer = logp[:, 1].gather(-1, number_ids.repeat(n_prompt)[:, None]).squeeze(-1)
    lp_close = logp[:, 2, close_id]
    lp_eos = logp[:, 3, eos_id]
    full = (lp_marker + lp_answer + lp_close + lp_eos).exp().view(n_prompt, 100).numpy()
    answer = logp[::100, 1].exp().numpy()
    return full, answer


def exact_metrics(full: np.ndarray, answer: np.ndarray, number_ids: np.ndarray, correct: np.ndarray) -> dict:
    """Noise-free metrics of one evaluation (means over prompts).

    Parameters
    ----------
    full : (P, 100) float64, from :func:`completion_probs`.
    answer : (P, V) float64, from :func:`completion_probs`.
    number_ids : (100,) int, token id of each number 0..99.
    correct : (P,) int, the correct answer of each prompt.

    Returns
    -------
    dict with ``acc`` (mean P(correct completion)), ``entropy`` (mean entropy in nats of the answer-token
    distribution), ``top_wrong`` (mean share of the wrong answer mass taken by the most likely wrong answer) and
    ``acc_per_prompt`` (list of P floats).
    """
    rows = np.arange(len(correct))
    acc = full[rows, correct]
    ent = entropy(np.clip(answer, 0.0, None))
    q = answer[:, number_ids].copy()
    q[rows, correct] = 0.0
    top_wrong = q.max(1) / np.maximum(q.sum(1), 1e-300)
    return {"acc": float(acc.mean()), "entropy": float(ent.mean()), "top_wrong": float(top_wrong.mean()),
            "acc_per_prompt": acc.tolist()}
