"""extract_features: one no-grad forward of a causal LM -> MEDS features of a padded batch of rollouts.

:func:`capture_forward` is that forward alone (eval mode, no grad, capture armed), shared with the TRL adapter.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from meds_core.step.capture import FeatureCapture
from meds_core.step.model_parts import logits_kwargs, unwrap_model

if TYPE_CHECKING:
    import torch
    from torch import nn

    from meds_core.step.config import MEDSConfig

__all__ = ["capture_forward", "extract_features"]


def extract_features(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    answer_positions: Any,
    config: MEDSConfig,
) -> torch.Tensor:
    """MEDS features of a padded batch with one no-grad forward.

    Args:
        model: HF causal LM (plain, PEFT, DDP/FSDP-wrapped).
        input_ids: int ``[B, T]`` (left padding as in generation is fine).
        attention_mask: ``[B, T]`` 1 for real tokens, 0 for padding (None: all ones).
        answer_positions: int ``[B]`` index in ``input_ids[b]`` of the answer's first token; ``-1`` (any negative):
            no answer. The feature reads the state at ``answer_positions[b] - 1`` and the target
            ``input_ids[b, answer_positions[b]]``; position 0, or an answer whose preceding token is padding, has no
            preceding state and gives NaN.
        config: :class:`MEDSConfig` (``use_last_n_layers``, ``use_layer_diff``, ``final_norm``).

    Returns:
        float32 ``[B, use_last_n_layers]`` on the LM head's device, NaN rows where there is no answer.

    The forward uses ``position_ids = clamp(cumsum(attention_mask) - 1, 0)``, ``use_cache=False`` and, when the model
    accepts it, ``logits_to_keep=1``; the model is put in eval mode for the call and every module's training flag is
    restored afterwards.
    """
    import torch

    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a 2-D [B, T] tensor, got "
                         f"{tuple(input_ids.shape) if hasattr(input_ids, 'shape') else type(input_ids).__name__}.")
    if input_ids.is_floating_point():
        raise ValueError(f"input_ids must hold token ids (integers), got dtype {input_ids.dtype}.")
    bsz, seq = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (bsz, seq):
        raise ValueError(f"attention_mask must be a [B, T] = {(bsz, seq)} tensor, got "
                         f"{tuple(attention_mask.shape) if hasattr(attention_mask, 'shape') else attention_mask!r}.")
    pos = answer_positions.detach() if isinstance(answer_positions, torch.Tensor) else torch.as_tensor(answer_positions)
    if pos.dim() != 1 or pos.shape[0] != bsz:
        raise ValueError(f"answer_positions must be 1-D [B] with B={bsz}, got shape {tuple(pos.shape)}.")
    if pos.is_floating_point() or pos.dtype == torch.bool:
        raise ValueError(f"answer_positions must hold integers, got dtype {pos.dtype}.")
    pos = pos.to(device="cpu", dtype=torch.int64)
    if bool((pos >= seq).any()):
        raise ValueError(f"answer_positions holds {int(pos.max())} >= sequence length T={seq}.")

    ids_cpu = input_ids.detach().cpu()
    mask_cpu = attention_mask.detach().cpu().to(torch.int64)
    b = torch.arange(bsz)
    has = pos >= 1
    p = pos.clamp(min=1)
    if bool((has & (mask_cpu[b, p] == 0)).any()):
        bad = int(torch.nonzero(has & (mask_cpu[b, p] == 0))[0])
        raise ValueError(f"answer_positions[{bad}]={int(pos[bad])} points at a padding token (attention_mask == 0).")
    has &= mask_cpu[b, p - 1] != 0
    rows = torch.where(has, b * seq + p - 1, torch.full_like(pos, -1))
    targets = torch.where(has, ids_cpu[b, p].to(torch.int64), torch.full_like(pos, -1))

    try:
        device = next(unwrap_model(model).parameters()).device
    except StopIteration:
        device = input_ids.device
    ids = input_ids.to(device)
    mask = attention_mask.to(device)
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with FeatureCapture(model, config) as cap:
        return capture_forward(model, cap, rows, targets, input_ids=ids, attention_mask=mask,
                               position_ids=position_ids)


def capture_forward(model: nn.Module, capture: FeatureCapture, rows: Any, targets: Any, autocast: Any = None,
                    **inputs: Any) -> torch.Tensor:
    """One eval-mode, no-grad forward of ``model(**inputs)`` with ``capture`` armed; returns its features.

    Parameters
    ----------
    model : nn.Module
        The causal LM ``capture`` hooks (plain or wrapped).
    capture : FeatureCapture
        Hooks already registered on ``model``.
    rows, targets : int [B]
        Passed to :meth:`FeatureCapture.arm` (flat state row and answer token per sample, -1: no answer).
    autocast : context manager, optional
        Entered around the forward (e.g. TRL's ``accelerator.autocast()``).
    **inputs
        The model's inputs (``input_ids``, ``attention_mask``, ...); ``use_cache=False`` and, when the model takes
        it, ``logits_to_keep=1`` are added.

    Returns
    -------
    torch.Tensor
        float32 ``[B, use_last_n_layers]``, NaN rows where there is no answer. The capture is disarmed and every
        module's training flag restored afterwards, also when the forward raises.
    """
    import torch

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    capture.arm(rows, targets)
    try:
        with torch.no_grad(), autocast if autocast is not None else nullcontext():
            model(**inputs, use_cache=False, **logits_kwargs(model))
        return capture.collect()
    finally:
        capture.disarm()
        for m, mode in modes:
            m.training = mode
