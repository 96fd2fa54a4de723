"""Metrics of the sampled completions of one GRPO run (numpy only).

A run's sample log holds one entry per sampled completion: the training step, the GRPO group (step, slot), the
prompt id, the answer string and whether it was wrong (not fully correct). Answers are compared as strings, so
"repeating an error" means producing the same wrong answer for the same prompt again.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np


def repeated_wrong_answer_rate(steps: Sequence[int], prompt_ids: Sequence[int], answers: Sequence[str],
                        wrong: Sequence[bool], from_step: int = 0) -> float:
    """Share of wrong samples (at steps >= ``from_step``) whose answer was already produced WRONGLY for the same
    prompt at an EARLIER step (any earlier step, also before ``from_step``). NaN without wrong samples counted.

    Parameters: four aligned sequences of length n (step int, prompt id int, answer str, wrong bool).
    """
    seen: dict[int, set[str]] = defaultdict(set)
    order = np.argsort(np.asarray(steps), kind="stable")
    steps_a = np.asarray(steps)
    repeats = counted = 0
    i = 0
    while i < len(order):  # one step at a time: samples of the same step do not count as earlier
        j = i
        while j < len(order) and steps_a[order[j]] == steps_a[order[i]]:
            j += 1
        batch = [k for k in order[i:j] if wrong[k]]
        if steps_a[order[i]] >= from_step:
            counted += len(batch)
            repeats += sum(answers[k] in seen[prompt_ids[k]] for k in batch)
        for k in batch:
            seen[prompt_ids[k]].add(answers[k])
        i = j
    return repeats / counted if counted else float("nan")


def top_wrong_share(prompt_ids: Sequence[int], answers: Sequence[str], wrong: Sequence[bool]) -> float:
    """Mean over prompts (with at least one wrong sample) of: count of the prompt's most frequent wrong answer /
    its wrong samples. NaN without wrong samples."""
    per_prompt: dict[int, Counter] = defaultdict(Counter)
    for p, a, w in zip(prompt_ids, answers, wrong):
        if w:
            per_prompt[p][a] += 1
    shares = [max(c.values()) / sum(c.values()) for c in per_prompt.values()]
    return float(np.mean(shares)) if shares else float("nan")


def distinct_wrong(prompt_ids: Sequence[int], answers: Sequence[str], wrong: Sequence[bool]) -> float:
    """Mean over prompts (with at least one wrong sample) of the number of distinct wrong answers."""
    per_prompt: dict[int, set[str]] = defaultdict(set)
    for p, a, w in zip(prompt_ids, answers, wrong):
        if w:
            per_prompt[p].add(a)
    return float(np.mean([len(s) for s in per_prompt.values()])) if per_prompt else float("nan")


def group_entropy(group_ids: Sequence[object], answers: Sequence[str]) -> float:
    """Mean over GRPO groups of the empirical entropy (nats) of the answers within the group."""
    per_group: dict[object, Counter] = defaultdict(Counter)
    for g, a in zip(group_ids, answers):
        per_group[g][a] += 1
    ent = []
    for c in per_group.values():
        p = np.asarray(list(c.values()), dtype=np.float64)
        p /= p.sum()
        ent.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(ent)) if ent else float("nan")


def entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of ``p`` (shape (..., V), non-negative, rows summing to 1); 0·log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    safe = np.where(p > 0, p, 1.0)
    return -(p * np.log(safe)).sum(-1)
