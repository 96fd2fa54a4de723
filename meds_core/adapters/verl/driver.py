"""Driver-side MEDS step on veRL data, free of TransferQueue I/O (the trainer only moves fields in and out).

Inputs are what the v1 trainer reads from TransferQueue: nested (jagged) ``responses`` / ``rm_scores`` [n, j],
``meds_features`` [n, F], the prompt-id field, ``uid`` (GRPO group) and ``extra_fields`` (dicts holding
``reward_extra_info``), plus the ``is_padding`` tags of synthetic samples.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from meds_core.step.answer import locate_answers
from meds_core.step.keys import prompt_key
from meds_core.step.memory import ErrorMemory
from meds_core.step.rl_step import ShapedStep, meds_step

from .positions import answer_from_end

__all__ = ["ShapedStep", "answer_fields", "correctness", "dense_rows", "outcome_of", "prompt_keys", "shape_step",
           "with_outcome"]


def _unwrap(x: Any) -> Any:
    """NonTensorData / NonTensorStack item -> the Python object."""
    return getattr(x, "data", x)


def answer_fields(tokenizer: Any, responses: Sequence[torch.Tensor], marker: str,
                  is_padding: Sequence[bool] | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """``from_end`` [n] int64 for the workers (see :mod:`.positions`) and ``no_answer`` [n] bool.

    ``responses``: n 1-D int tensors (``nested.unbind()``). Synthetic padding samples get 0 and count as answered
    (they are not rollouts)."""
    ids = [r.tolist() for r in responses]
    pad = np.zeros(len(ids), bool) if is_padding is None else np.asarray(is_padding, bool)
    starts, _ = locate_answers(tokenizer, [[] if p else x for x, p in zip(ids, pad)], marker)
    lens = torch.tensor([len(x) for x in ids], dtype=torch.long)
    from_end = answer_from_end(lens, torch.from_numpy(starts))
    return from_end, (starts < 0) & ~pad


def prompt_keys(values: Any, uids: Sequence[str], field: str, known: Any = None) -> list[str | int]:
    """Stable memory keys from the prompt-id field (ints/strs kept; anything else, e.g. chat messages, hashed with
    :func:`meds_core.step.keys.prompt_key`, which ``known``, the memory, lets keep keys of older files).
    ValueError when one id covers every prompt of a multi-prompt step, the
    sign of a dataset without ``extra_info.index`` (veRL then fills 0)."""
    vals = values.tolist() if hasattr(values, "tolist") else [_unwrap(v) for v in values]
    keys: list[str | int] = []
    for v in vals:
        v = _unwrap(v)
        if isinstance(v, (list, tuple)) and len(v) == 1 and isinstance(v[0], (int, str)):
            v = v[0]
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            v = prompt_key(v, known)
        keys.append(v)
    real = [(k, u) for k, u in zip(keys, uids) if not str(u).startswith("pad")]
    if len({u for _, u in real}) > 1 and len({k for k, _ in real}) == 1:
        raise ValueError(f"every prompt of this step has the same {field!r} ({real[0][0]!r}), so MEDS would pool all "
                         f"prompts into one memory. Give each dataset row a stable extra_info.index (prepare_data.py "
                         f"does) or set meds_trainer.prompt_key=raw_prompt to hash the prompt text.")
    return keys


def outcome_of(rm_scores: torch.Tensor) -> torch.Tensor:
    """Scalar outcome [n] float64 of nested per-token scores [n, j] (their sum: veRL puts it on the last token)."""
    return torch.stack([r.double().sum() for r in rm_scores.unbind()]) if rm_scores.size(0) else torch.zeros(0)


def with_outcome(rm_scores: torch.Tensor, outcome: torch.Tensor) -> torch.Tensor:
    """Nested [n, j] scores whose sums become ``outcome`` [n]: the difference is added on each last token."""
    rows = [r.clone() for r in rm_scores.unbind()]
    for r, new in zip(rows, outcome.tolist()):
        if r.numel():
            r[-1] += new - float(r.double().sum())
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def dense_rows(features: torch.Tensor, width: int) -> torch.Tensor:
    """Features from TransferQueue (nested [n, j=F] or dense [n, F]) -> float32 [n, width]; NaN rows where a sample
    has no features (e.g. a padding sample)."""
    if features.is_nested:
        rows = features.unbind()
        out = torch.full((len(rows), width), float("nan"), dtype=torch.float32)
        for i, r in enumerate(rows):
            if r.numel() == width:
                out[i] = r.float()
        return out
    if features.shape[-1] != width:
        raise ValueError(f"meds_features has {features.shape[-1]} columns; expected use_last_n_layers={width}.")
    return features.float()


def correctness(extra_fields: Sequence[Any], outcome: torch.Tensor, key: str, is_padding: Sequence[bool]) \
        -> np.ndarray:
    """int8 [n]: 1 correct / 0 wrong from ``reward_extra_info[key]`` (the reward's ``acc``), ``outcome > 0`` where the
    reward did not report it (one warning), -1 for padding samples."""
    out = np.empty(len(is_padding), np.int8)
    missing = 0
    for i, (ef, pad) in enumerate(zip(extra_fields, is_padding)):
        if pad:
            out[i] = -1
            continue
        ef = _unwrap(ef)
        info = ef.get("reward_extra_info", {}) if isinstance(ef, dict) else {}
        if key in info and info[key] is not None:
            out[i] = 1 if float(_unwrap(info[key])) > 0 else 0
        else:
            missing += 1
            out[i] = 1 if float(outcome[i]) > 0 else 0
    if missing:
        warnings.warn(f"{missing} rollouts have no reward_extra_info[{key!r}]; MEDS took correctness = (score > 0) for "
                      "them. Use a reward that reports it (math_dapo does) or set meds_trainer.correct_key.",
                      stacklevel=2)
    return out


def shape_step(memory: ErrorMemory, keys: Sequence[Any], features: torch.Tensor,
               outcome: torch.Tensor, correct: np.ndarray, group_ids: Sequence[str], no_answer: np.ndarray,
               is_padding: np.ndarray) -> ShapedStep:
    """:func:`meds_core.step.rl_step.meds_step` on veRL rows: every real featurised rollout updates the memory, then the
    scalar outcome is shaped (``ShapedStep.shaped``).

    ``features`` [n, F] float32 (NaN: none), ``outcome`` [n] float, ``correct`` [n] int8 (-1 unknown/padding),
    ``group_ids`` [n] GRPO group (veRL's uid), ``no_answer`` / ``is_padding`` [n] bool. Padding samples are neither
    stored nor shaped; metrics are over real samples."""
    pad = np.asarray(is_padding, bool)
    feats = features.clone()
    feats[torch.from_numpy(pad)] = float("nan")
    return meds_step(memory, keys, feats, correct, outcome.double().numpy(), group_ids=np.asarray(group_ids),
                     no_answer=no_answer, metric_rows=~pad)
