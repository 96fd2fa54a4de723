"""The numba decorator shared by the clustering kernels. Imports numba: only ever import this module lazily.

Compiled kernels are cached on disk (``cache=True``) so that a process pays the JIT once per environment, not once
per start; set ``MEDS_NUMBA_CACHE=0`` to disable the cache (e.g. on a read-only file system with no user cache).
numba invalidates a cached kernel when ITS file changes, not when a kernel it calls from another file does: after
editing a kernel, delete ``meds_core/clustering/__pycache__/*.nb[ic]`` (an install or upgrade rewrites every file).
No fastmath: distances are summed in a fixed order without FMA contraction, so ``d(i, j) == d(j, i)`` bit for bit and
the results equal the hdbscan library's float64 arithmetic.
"""

from __future__ import annotations

import os

import numba

CACHE = os.environ.get("MEDS_NUMBA_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def kernel(fn=None, *, parallel: bool = False):
    """``numba.njit`` with the project's settings: disk cache (switch above), no bounds checks, no GIL, IEEE division
    (x / 0 gives inf, as in C)."""
    deco = numba.njit(cache=CACHE, boundscheck=False, nogil=True, parallel=parallel, error_model="numpy")
    return deco if fn is None else deco(fn)
