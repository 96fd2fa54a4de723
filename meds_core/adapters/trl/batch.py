"""TRL's (prompt | completion) token layout, and where each completion's answer is read in it.

TRL pads prompts on the left and completions on the right and concatenates them: ``input_ids [B, P + C]``. The
MEDS feature of completion ``b`` reads the hidden state just before its answer token, at column ``P + k_b - 1``
(``k_b``: index of the answer's first token in the completion, from :func:`meds_core.locate_answers`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from meds_core.step.answer import locate_answers


def padded_batch(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_id: int,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left-padded prompts then right-padded completions, as TRL builds them.

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


def split_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_width: int) \
        -> tuple[list[list[int]], list[list[int]]]:
    """Inverse of :func:`padded_batch`: the unpadded prompt and completion token lists of each row."""
    ids = input_ids.detach().cpu()
    mask = attention_mask.detach().cpu().bool()
    P = ids.shape[1] - completion_width
    prompts = [row[:P][m[:P]].tolist() for row, m in zip(ids, mask)]
    completions = [row[P:][m[P:]].tolist() for row, m in zip(ids, mask)]
    return prompts, completions


def answer_rows(tokenizer, completion_ids: Sequence[Sequence[int]], prompt_width: int, seq_len: int, marker: str) \
        -> tuple[np.ndarray, np.ndarray]:
    """Capture rows and answer tokens of a padded ``[B, seq_len]`` batch (see :meth:`FeatureCapture.arm`).

    Returns:
        rows int64 ``[B]`` (``b * seq_len + P + k_b - 1``) and targets int64 ``[B]`` (the answer token ids);
        both -1 for completions without an answer.
    """
    starts, targets = locate_answers(tokenizer, completion_ids, marker)
    b = np.arange(len(starts), dtype=np.int64)
    has = (starts >= 0) & (prompt_width + starts >= 1)
    rows = np.where(has, b * seq_len + prompt_width + starts - 1, -1)
    return rows.astype(np.int64), np.where(has, targets, -1).astype(np.int64)
