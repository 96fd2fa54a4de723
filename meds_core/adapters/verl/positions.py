"""Where the MEDS feature row of each sample sits in the layout a veRL engine forward uses (pure torch).

The driver describes each sample by ``from_end`` (int64): the number of tokens from the answer token to the end of
the sample's unpadded ``[prompt | response]`` sequence (``response_len - answer_start``), 0 for "no answer". The
feature is read at the state just BEFORE the answer token, so at unpadded position ``seq_len - from_end - 1``. This
description does not depend on prompt length, padding, packing or micro-batch order, so it survives veRL's
dynamic-batch reordering and DP dispatch unchanged; the functions below turn it into the flat row index that
:meth:`meds_core.FeatureCapture.arm` expects for one micro-batch.
"""

from __future__ import annotations

import torch

__all__ = ["answer_from_end", "packed_rows", "padded_rows", "ulysses_local_rows"]


def answer_from_end(response_lens: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """``from_end`` [B] int64 from response lengths [B] and answer starts [B] (response index, -1: none).

    Raises ValueError if a start lies outside its response.
    """
    lens, starts = response_lens.long(), starts.long()
    bad = (starts >= lens) | (starts < -1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"answer start {int(starts[i])} of sample {i} is outside its response of "
                         f"{int(lens[i])} tokens; starts must be in [0, len) or -1 for no answer.")
    return torch.where(starts >= 0, lens - starts, torch.zeros_like(lens))


def _check(seq_lens: torch.Tensor, from_end: torch.Tensor) -> None:
    if from_end.shape != seq_lens.shape:
        raise ValueError(f"from_end has shape {tuple(from_end.shape)}; expected {tuple(seq_lens.shape)}, one per "
                         "sample of the micro-batch.")
    # the state before the answer token must exist: from_end <= seq_len - 1
    bad = (from_end < 0) | (from_end >= seq_lens)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"from_end={int(from_end[i])} for sample {i} of length {int(seq_lens[i])}; it must be "
                         "0 (no answer) or in [1, seq_len - 1].")


def packed_rows(cu_seqlens: torch.Tensor, from_end: torch.Tensor) -> torch.Tensor:
    """Rows [B] int64 into the packed ``[1, N]`` sequence (remove-padding): ``cu[i+1] - from_end[i] - 1``; -1 where
    ``from_end == 0``. ``cu_seqlens`` [B+1] are the sample offsets (``input_ids.offsets()`` of the nested batch)."""
    cu = cu_seqlens.long()
    fe = from_end.to(cu.device).long()
    _check(cu.diff(), fe)
    return torch.where(fe > 0, cu[1:] - fe - 1, torch.full_like(fe, -1))


def padded_rows(seq_lens: torch.Tensor, max_len: int, from_end: torch.Tensor) -> torch.Tensor:
    """Rows [B] int64 into the flattened right-padded ``[B, max_len]`` batch: ``i * max_len + seq_len[i] -
    from_end[i] - 1``; -1 where ``from_end == 0``."""
    lens = seq_lens.long()
    fe = from_end.to(lens.device).long()
    _check(lens, fe)
    if bool((lens > max_len).any()):
        raise ValueError(f"a sequence of {int(lens.max())} tokens does not fit max_len={max_len}.")
    base = torch.arange(lens.shape[0], device=lens.device) * max_len
    return torch.where(fe > 0, base + lens - fe - 1, torch.full_like(fe, -1))


def ulysses_local_rows(rows: torch.Tensor, local_len: int, sp_rank: int) -> torch.Tensor:
    """Rows of the global packed sequence -> rows of this Ulysses rank's contiguous slice
    ``[sp_rank * local_len, (sp_rank + 1) * local_len)``; -1 for rows another rank owns (or no answer)."""
    if local_len <= 0 or sp_rank < 0:
        raise ValueError(f"local_len={local_len} and sp_rank={sp_rank} must be > 0 and >= 0.")
    lo = sp_rank * local_len
    own = (rows >= lo) & (rows < lo + local_len)
    return torch.where(own, rows - lo, torch.full_like(rows, -1))
