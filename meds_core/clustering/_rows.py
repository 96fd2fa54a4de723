"""rows_packed(): many float32 row blocks as one float64 array, L2-normalised or not (the rows of one MEDS step)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rows_packed(parts: Sequence[np.ndarray], d: int, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pack float32 row blocks into one float64 array, each row L2-normalised under ``normalize``.

    Parameters
    ----------
    parts : list of ndarray of shape (n_p, d), float32
    d : int
        Columns (used when ``parts`` is empty).
    normalize : bool
        Divide every row by its L2 norm (zero rows stay zero); else only convert.

    Notes
    -----
    One parallel numba kernel with a fixed order of operations per row (squares summed in column order, one square
    root, one division per value): a row comes out bit for bit the same whichever call, position or thread handles
    it, so rows normalised when they arrive equal the same rows normalised again in a later step.

    Returns
    -------
    rows : ndarray of shape (sum n_p, d), float64
        Block p at rows offsets[p]:offsets[p + 1].
    offsets : ndarray of shape (len(parts) + 1,), int64
    """
    from numba.typed import List

    from meds_core.clustering._rows_kernel import _rows_into

    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in parts], out=offsets[1:])
    out = np.empty((int(offsets[-1]), d))
    live = [p for p, x in enumerate(parts) if len(x)]
    if live:
        _rows_into(List([np.ascontiguousarray(parts[p], dtype=np.float32) for p in live]), offsets[live], normalize,
                   out)
    return out, offsets
