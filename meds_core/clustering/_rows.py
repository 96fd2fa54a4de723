"""rows_packed(): many float32 row blocks as one float64 array, L2-normalised or not (the rows of one MEDS step)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rows_packed(parts: Sequence[np.ndarray], d: int, normalize: bool = True, new_rows: np.ndarray | None = None,
                new_counts: np.ndarray | None = None, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pack float32 row blocks into one float64 array, each row L2-normalised under ``normalize``.

    Parameters
    ----------
    parts : list of P ndarray of shape (n_p, d), float32
    d : int
        Columns (used when there are no rows).
    normalize : bool
        Scale every row to unit L2 norm (zero rows stay zero); else only convert.
    new_rows : ndarray of shape (V, d), float32, optional
        With ``new_counts`` ([P] int, summing to V): block p is parts[p] followed by the next new_counts[p] rows of
        ``new_rows`` (e.g. a memory's stored rows, then its rows of this step).
    out : ndarray of shape (>= N, d), float64, C-contiguous, optional
        A buffer to write into (its first N rows are returned); reusing one across calls saves the page faults of a
        fresh allocation. Allocated when missing or too small.

    Notes
    -----
    Parallel numba kernels with a fixed order of operations per row (squares summed in column order, one square
    root and one reciprocal, then one product per value): a row comes out bit for bit the same whichever call,
    position or thread handles it, so rows normalised when they arrive equal the same rows normalised again in a
    later step. A normalised value can differ from ``x / norm`` in its last bit.

    Returns
    -------
    rows : ndarray of shape (sum n_p + V, d), float64
        Block p at rows offsets[p]:offsets[p + 1].
    offsets : ndarray of shape (P + 1,), int64
    """
    from numba.typed import List

    from meds_core.clustering._rows_kernel import _blocks_into, _rows_to

    sizes = np.fromiter((len(x) for x in parts), dtype=np.int64, count=len(parts))
    extra = np.zeros(len(parts), np.int64) if new_counts is None else np.asarray(new_counts, dtype=np.int64)
    if new_rows is not None and (extra.shape != sizes.shape or extra.sum() != len(new_rows)):
        raise ValueError(f"new_counts must give one count per part, summing to the {len(new_rows)} new rows.")
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(sizes + extra, out=offsets[1:])
    N = int(offsets[-1])
    if out is None or out.shape[0] < N or out.shape[1] != d or out.dtype != np.float64 or not out.flags.c_contiguous:
        out = np.empty((N, d))
    out = out[:N]
    live = np.flatnonzero(sizes).tolist()
    if live:
        _blocks_into(List([np.ascontiguousarray(parts[p], dtype=np.float32) for p in live]), offsets[live], normalize,
                     out)
    if new_rows is not None and len(new_rows):
        dest = np.repeat(offsets[:-1] + sizes - (np.cumsum(extra) - extra), extra) + np.arange(len(new_rows))
        _rows_to(np.ascontiguousarray(new_rows, dtype=np.float32), dest, normalize, out)
    return out, offsets
