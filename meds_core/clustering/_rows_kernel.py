"""The kernel of :func:`meds_core.clustering.rows_packed`: float32 row blocks written side by side into one float64
array, L2-normalised or not, in one parallel pass (no float32 concatenation, no float64 temporaries).

The arithmetic is fixed (squares summed in column order, one square root, one division per value), so a row comes out
bit for bit the same whichever call, position or thread handles it: rows normalised when they arrive equal the same
rows normalised again in a later step, which the incremental clustering relies on.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from meds_core.clustering._jit import kernel


@kernel(parallel=True)
def _rows_into(parts, dest, normalize, out):
    """out[dest[p] + i] = parts[p][i] as float64, divided by its L2 norm under ``normalize`` (zero rows stay zero).
    parts: typed list of [n_p, d] float32 C-contiguous; dest [len(parts)] int64; out [N, d] float64."""
    d = out.shape[1]
    for t in prange(len(parts)):
        p = np.int64(t)  # prange's index is unsigned; typed lists take a signed one
        x, o = parts[p], dest[p]
        for i in range(x.shape[0]):
            scale = 1.0
            if normalize:
                s = 0.0
                for k in range(d):
                    v = np.float64(x[i, k])
                    s += v * v
                if s > 0.0:
                    scale = np.sqrt(s)
            for k in range(d):
                out[o + i, k] = np.float64(x[i, k]) / scale
