"""Input coercion shared by the memory and the penalty: array-likes to numpy, correctness to groups."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(x: Any, name: str) -> np.ndarray:
    """numpy view/copy of an array-like; torch tensors (any device, bf16 included) are moved to the host."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.dtype != x.float().dtype and x.element_size() < 4:
            x = x.float()  # numpy has no bfloat16
        x = x.numpy()
    try:
        return np.asarray(x)
    except ValueError as exc:  # numpy refuses nested lists of unequal lengths
        if isinstance(x, (list, tuple)) and any(hasattr(r, "__len__") for r in x):
            lengths = sorted({len(r) for r in x if hasattr(r, "__len__")})
            raise ValueError(f"{name} is ragged: its rows have lengths {lengths[:5]}; every row needs the same "
                             "number of values.") from exc
        raise TypeError(f"{name} must be array-like (numpy array, torch tensor or list), got {type(x).__name__}") \
            from exc
    except Exception as exc:
        raise TypeError(f"{name} must be array-like (numpy array, torch tensor or list), got {type(x).__name__}") \
            from exc


def correctness_groups(correct: Any, n: int) -> np.ndarray:
    """Map bools / {1, 0, -1} to int8 groups (1 correct, 0 wrong, -1 unknown). correct: [n] -> [n] int8."""
    c = to_numpy(correct, "correct")
    if c.shape != (n,):
        raise ValueError(f"correct has shape {c.shape}; expected ({n},), one value per rollout.")
    if c.dtype == bool:
        return c.astype(np.int8)
    if c.size and not np.issubdtype(c.dtype, np.number):
        raise ValueError(f"correct has dtype {c.dtype}; pass bools or numbers 1 (correct), 0 (wrong), -1 (unknown).")
    bad = ~np.isin(c, (1, 0, -1))
    if bad.any():
        raise ValueError(f"correct holds {c[bad][:5].tolist()}; use 1 (correct), 0 (wrong), -1 (unknown) or bools.")
    return c.astype(np.int8)
