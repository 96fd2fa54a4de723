"""The shuffled-penalty control: MEDS's cluster sizes permuted among the wrong completions of each GRPO group.

The penalty values (and so their distribution) stay MEDS's own; only which wrong completion gets which value is
randomised, which removes what the memory knows about repeated errors. MEDS minus this control is what the memory
adds beyond "some penalty on wrong answers".
"""

from __future__ import annotations

import numpy as np


def shuffle_within_groups(sizes: np.ndarray, correct: np.ndarray, group_ids: np.ndarray,
                          rng: np.random.Generator) -> np.ndarray:
    """Permute ``sizes`` among the wrong completions (``correct == 0``) of each group; all other entries unchanged.

    Parameters
    ----------
    sizes : ndarray of shape (N,), int64 — cluster size of each completion.
    correct : ndarray of shape (N,), int8 — 1 correct, 0 wrong, -1 unknown.
    group_ids : ndarray of shape (N,), int64 — GRPO group of each completion.
    rng : numpy Generator (seeded by the caller).

    Returns
    -------
    ndarray of shape (N,), int64 — a copy.
    """
    sizes = np.asarray(sizes)
    correct, group_ids = np.asarray(correct), np.asarray(group_ids)
    if not (sizes.shape == correct.shape == group_ids.shape) or sizes.ndim != 1:
        raise ValueError(f"sizes, correct and group_ids must be 1-D of one length; got shapes {sizes.shape}, "
                         f"{correct.shape}, {group_ids.shape}")
    out = sizes.astype(np.int64, copy=True)
    for g in np.unique(group_ids):
        idx = np.flatnonzero((group_ids == g) & (correct == 0))
        if len(idx) > 1:
            out[idx] = out[rng.permutation(idx)]
    return out
