"""The extra no-grad forward that reads MEDS features when TRL runs no policy forward before the rewards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from meds_core.step.capture import FeatureCapture
from meds_core.step.features import capture_forward

from .batch import answer_rows, padded_batch


def forward_features(model: torch.nn.Module, capture: FeatureCapture, tokenizer: Any,
                     prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_id: int,
                     device: torch.device | str, autocast: Any = None,
                     model_mask: Sequence[Sequence[int]] | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Features of (prompt, completion) pairs laid out as TRL lays them out, from one forward.

    ``model_mask``: per completion, 1 for model-written and 0 for tool-written tokens (see
    :func:`~.batch.model_written_answers`); the answer is read only from model-written tokens.

    The forward takes the inputs TRL's own log-prob forward takes (``input_ids``, ``attention_mask``), plus
    ``use_cache=False`` and ``logits_to_keep=1``, under ``no_grad`` and ``autocast`` (TRL's
    ``accelerator.autocast()``) with the model in eval mode (each module's mode restored after).

    Returns:
        features float32 ``[B, use_last_n_layers]`` (NaN rows: no answer) and no_answer bool ``[B]``.
    """
    ids, mask, P = padded_batch(prompt_ids, completion_ids, pad_id, device)
    rows, targets = answer_rows(tokenizer, completion_ids, P, ids.shape[1], capture.config.answer_marker, model_mask)
    feats = capture_forward(model, capture, rows, targets, autocast, input_ids=ids, attention_mask=mask)
    return feats, targets < 0
