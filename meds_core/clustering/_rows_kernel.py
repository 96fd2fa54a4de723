"""The kernels of :func:`meds_core.clustering.rows_packed`: float32 rows written into one float64 array, L2-normalised
or not, in parallel (no float32 concatenation, no float64 temporaries).

The arithmetic is fixed (squares summed in column order, one square root and one reciprocal per row, one product per
value), so a row comes out bit for bit the same whichever call, position or thread handles it: rows normalised when
they arrive equal the same rows normalised again in a later step, which the incremental clustering relies on.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from meds_core.clustering._jit import kernel


@kernel
def _put_row(x, out, o, normalize):
    """out[o] = x [d] f32 as float64, times the reciprocal of its L2 norm under ``normalize`` (a zero row stays zero;
    one division per row, not per value: the kernel was bound by the divisions)."""
    d = out.shape[1]
    scale = 1.0
    if normalize:
        s = 0.0
        for k in range(d):
            v = np.float64(x[k])
            s += v * v
        if s > 0.0:
            scale = 1.0 / np.sqrt(s)
    for k in range(d):
        out[o, k] = np.float64(x[k]) * scale


@kernel(parallel=True)
def _blocks_into(parts, dest, normalize, out):
    """Rows of parts[p] (typed list of [n_p, d] f32 C-contiguous) to out [N, d] f64 from row dest[p] on."""
    for t in prange(len(parts)):
        p = np.int64(t)  # prange's index is unsigned; typed lists take a signed one
        x, o = parts[p], dest[p]
        for i in range(x.shape[0]):
            _put_row(x[i], out, o + i, normalize)


@kernel(parallel=True)
def _rows_to(x, dest, normalize, out):
    """Row i of x [V, d] f32 to out [N, d] f64 row dest[i] ([V] int64)."""
    for i in prange(x.shape[0]):
        _put_row(x[i], out, dest[i], normalize)
