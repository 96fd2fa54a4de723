"""TRL's (prompt | completion) token layout, and where each completion's answer is read in it.

TRL pads prompts on the left and completions on the right and concatenates them: ``input_ids [B, P + C]``. The
MEDS feature of completion ``b`` reads the hidden state just before its answer token, at column ``P + k_b - 1``
(``k_b``: index of the answer's first token in the completion, from :func:`meds_core.locate_answers`).

With tools, environments or a ``rollout_func``'s ``env_mask``, a completion interleaves model-written tokens
(mask 1) with tokens written by tools (mask 0). The answer is then searched only in the model-written runs
(:func:`model_written_answers`), so a feature never reads an answer the model did not write.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from meds_core.step.answer import locate_answers


def padded_batch(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_id: int,
                 device: torch.device | str = "cpu", widths: tuple[int, int] | None = None) \
        -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left-padded prompts then right-padded completions, as TRL builds them.

    Args:
        widths: ``(P, C)`` to pad to (e.g. the widths of a batch TRL built with ``pad_to_multiple_of``); default the
            longest prompt and completion.

    Returns:
        input_ids int64 ``[B, P + C]``, attention_mask int64 ``[B, P + C]`` and the prompt width ``P``.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions; expected one each.")
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token id; set tokenizer.pad_token (TRL uses eos when unset).")
    B = len(prompt_ids)
    P = max((len(p) for p in prompt_ids), default=0)
    C = max((len(c) for c in completion_ids), default=0)
    if widths is not None:
        if widths[0] < P or widths[1] < C:
            raise ValueError(f"widths {widths} are narrower than the longest prompt ({P}) or completion ({C}).")
        P, C = int(widths[0]), int(widths[1])
    ids = torch.full((B, P + C), int(pad_id), dtype=torch.long)
    mask = torch.zeros((B, P + C), dtype=torch.long)
    for b, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        if len(p):
            ids[b, P - len(p):P] = torch.as_tensor(list(p), dtype=torch.long)
            mask[b, P - len(p):P] = 1
        if len(c):
            ids[b, P:P + len(c)] = torch.as_tensor(list(c), dtype=torch.long)
            mask[b, P:P + len(c)] = 1
    return ids.to(device), mask.to(device), P


def masked_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_width: int,
                prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]) -> np.ndarray | None:
    """Check that a padded ``[B, P + C]`` batch TRL built holds exactly these prompts and completions.

    A row may have its whole completion masked out of attention (TRL's ``mask_truncated_completions`` does that to
    truncated completions); its tokens must still be the completion's.

    Returns:
        None when any row's tokens or mask differ; else bool ``[B]``, True for the rows whose completion is masked
        (a forward over them does not compute what the model computes for the completion).
    """
    ids = input_ids.detach().cpu()
    mask = attention_mask.detach().cpu()
    B, T = ids.shape
    C = int(completion_width)
    P = T - C
    if len(prompt_ids) != B or len(completion_ids) != B or any(len(p) > P for p in prompt_ids) or \
            any(len(c) > C for c in completion_ids):
        return None
    want_ids, want_mask, _ = padded_batch(prompt_ids, completion_ids, 0, widths=(P, C))
    tokens_ok = ((want_ids == ids) | (want_mask == 0)).all(1)
    prompt_ok = (want_mask[:, :P] == mask[:, :P]).all(1)
    same = (want_mask[:, P:] == mask[:, P:]).all(1)
    zeroed = (mask[:, P:] == 0).all(1)
    if not bool((tokens_ok & prompt_ok & (same | zeroed)).all()):
        return None
    return (zeroed & ~same).numpy()


def model_written_answers(tokenizer, completion_ids: Sequence[Sequence[int]], marker: str,
                          model_mask: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`meds_core.locate_answers`, restricted to the tokens the model wrote.

    Args:
        model_mask: per completion, 1 for a model-written token and 0 for a token a tool or environment wrote
            (TRL's ``tool_mask``, or a ``rollout_func``'s ``env_mask``); None: every token is the model's.

    Returns:
        starts int64 ``[B]`` (index of the answer's first token in the completion) and targets int64 ``[B]``; -1
        without an answer. With a mask, the answer is the last one found inside one run of model-written tokens
        (a marker and the text after it both written by the model).
    """
    if model_mask is None:
        return locate_answers(tokenizer, completion_ids, marker)
    if len(model_mask) != len(completion_ids):
        raise ValueError(f"{len(model_mask)} tool masks for {len(completion_ids)} completions; expected one each.")
    segments, owner = [], []
    for b, (c, m) in enumerate(zip(completion_ids, model_mask)):
        c, m = list(c), list(m)
        if len(m) != len(c):
            raise ValueError(f"completion {b}: tool mask of length {len(m)} for {len(c)} tokens.")
        i = 0
        while i < len(c):
            if not m[i]:
                i += 1
                continue
            j = i
            while j < len(c) and m[j]:
                j += 1
            segments.append(c[i:j])
            owner.append((b, i))
            i = j
    starts = np.full(len(completion_ids), -1, np.int64)
    targets = np.full(len(completion_ids), -1, np.int64)
    if segments:
        s, t = locate_answers(tokenizer, segments, marker)
        for (b, offset), k, tok in zip(owner, s, t):  # runs in order: a later run's answer replaces an earlier one
            if k >= 0:
                starts[b], targets[b] = offset + k, tok
    return starts, targets


def answer_rows(tokenizer, completion_ids: Sequence[Sequence[int]], prompt_width: int, seq_len: int, marker: str,
                model_mask: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Capture rows and answer tokens of a padded ``[B, seq_len]`` batch (see :meth:`FeatureCapture.arm`).

    Args:
        model_mask: see :func:`model_written_answers`.

    Returns:
        rows int64 ``[B]`` (``b * seq_len + P + k_b - 1``) and targets int64 ``[B]`` (the answer token ids);
        both -1 for completions without an answer.
    """
    starts, targets = model_written_answers(tokenizer, completion_ids, marker, model_mask)
    b = np.arange(len(starts), dtype=np.int64)
    has = (starts >= 0) & (prompt_width + starts >= 1)
    rows = np.where(has, b * seq_len + prompt_width + starts - 1, -1)
    return rows.astype(np.int64), np.where(has, targets, -1).astype(np.int64)
