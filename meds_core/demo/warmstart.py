"""Warm start: a brief teacher-forced SFT that gives every prompt several systematic error modes of unequal frequency.

Per prompt (a, b), c = a + b, the target answer distribution is a mixture (research note ``meds_effect_toy.md``):
the correct c with a small probability p_c, three of the four systematic errors {a·b, c + 1, c - 1, 10a + b} with
Dirichlet weights sorted largest first (so the error clusters have different sizes), and 4 % uniform noise over
0..99. The SFT fits that distribution with a soft-target cross-entropy at the answer token (the expected loss of
sampled targets, without their noise) and a hard one on the format tokens ``\\boxed{``, ``}`` and ``<eos>``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from meds_core.demo.task import MARKER, Task, completion_text, prompt_text

NOISE = 0.04


def error_modes(a: int, b: int) -> list[int]:
    """The four systematic wrong answers of a + b: [a·b, a + b + 1, a + b - 1, 10a + b] (all in 0..99)."""
    c = a + b
    return [a * b, c + 1, c - 1, 10 * a + b]


def answer_mixtures(task: Task, p_correct: tuple[float, float] = (0.02, 0.08), seed: int = 0) -> np.ndarray:
    """Target answer distribution of every prompt of ``task.pairs``.

    Returns
    -------
    ndarray of shape (len(task.pairs), 100), float64
        Row i is the distribution over answers 0..99 of pair i; rows sum to 1.
    """
    lo, hi = p_correct
    if not 0.0 <= lo <= hi <= 1.0 - NOISE:
        raise ValueError(f"p_correct={p_correct} must satisfy 0 <= low <= high <= {1 - NOISE} (the rest after the "
                         f"{NOISE:.0%} noise); e.g. (0.02, 0.08)")
    rng = np.random.default_rng(seed)
    out = np.zeros((len(task.pairs), 100))
    for i, (a, b) in enumerate(task.pairs):
        p_c = rng.uniform(lo, hi)
        modes = [error_modes(a, b)[j] for j in rng.choice(4, size=3, replace=False)]
        weights = np.sort(rng.dirichlet(np.ones(3)))[::-1]
        out[i] += NOISE / 100
        out[i, a + b] += p_c
        for m, w in zip(modes, weights):
            out[i, m] += (1.0 - NOISE - p_c) * w
    return out


def warm_start(model: Any, tokenizer: Any, task: Task, mixtures: np.ndarray, steps: int = 300, lr: float = 3e-3,
               samples_per_prompt: int = 4, seed: int = 0, prompts: list[str] | None = None) -> dict[str, float]:
    """Fit ``model`` in place to ``mixtures`` (shape (len(task.pairs), 100)) by teacher-forced SFT; returns timings.

    Each step feeds every prompt ``samples_per_prompt`` times as ``a + b = \\boxed{ N } <eos>`` with N drawn from
    its mixture; the loss is the soft cross-entropy of the whole mixture at the answer token plus the hard
    cross-entropy of ``\\boxed{``, ``}`` and ``<eos>``. Seeded (numpy and a private torch generator).
    ``prompts`` (one text per pair of ``task.pairs``, all of one token length) replaces ``"a + b ="`` when the
    policy will see the task inside a longer prompt (the veRL CPU run's instruction line).
    """
    import torch

    if mixtures.shape != (len(task.pairs), 100):
        raise ValueError(f"mixtures has shape {mixtures.shape}; expected ({len(task.pairs)}, 100), one row per "
                         "pair of task.pairs (see answer_mixtures)")
    t0 = time.perf_counter()
    number_ids = torch.tensor(tokenizer.convert_tokens_to_ids([str(n) for n in range(100)]))
    marker_id, close_id, eos_id = tokenizer.convert_tokens_to_ids([MARKER, "}", tokenizer.eos_token])
    texts = [prompt_text(a, b) for a, b in task.pairs] if prompts is None else list(prompts)
    if len(texts) != len(task.pairs):
        raise ValueError(f"prompts has {len(texts)} texts; expected {len(task.pairs)}, one per pair of task.pairs")
    prompts = torch.tensor([tokenizer(t)["input_ids"] for t in texts])  # [P, prompt length]
    n_prompt, plen = prompts.shape
    target = torch.zeros(n_prompt, len(tokenizer))
    target[:, number_ids] = torch.as_tensor(mixtures, dtype=torch.float32)
    target = target.repeat_interleave(samples_per_prompt, 0)  # [R, V]
    base = prompts.repeat_interleave(samples_per_prompt, 0)
    rows = len(base)
    gen = torch.Generator().manual_seed(seed)
    probs = torch.as_tensor(mixtures, dtype=torch.float32).repeat_interleave(samples_per_prompt, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        answers = number_ids[torch.multinomial(probs, 1, generator=gen).squeeze(1)]
        seqs = torch.cat([base, torch.full((rows, 1), marker_id), answers[:, None], torch.full((rows, 1), close_id),
                          torch.full((rows, 1), eos_id)], dim=1)  # [R, plen + 4]
        logp = torch.log_softmax(model(input_ids=seqs).logits[:, plen - 1:-1].float(), -1)  # predicts seqs[:, plen:]
        soft = -(target * logp[:, 1]).sum(-1)
        hard = -logp[:, [0, 2, 3]].gather(-1, seqs[:, [plen, plen + 2, plen + 3]].unsqueeze(-1)).squeeze(-1).sum(-1)
        loss = (soft + hard).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return {"seconds": time.perf_counter() - t0, "final_loss": float(loss.detach())}


def completion_ids(tokenizer: Any, n: int) -> list[int]:
    """Token ids of ``\\boxed{ n } <eos>``."""
    return tokenizer(completion_text(n))["input_ids"] + [tokenizer.eos_token_id]
