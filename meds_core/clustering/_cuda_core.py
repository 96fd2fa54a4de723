"""Core distances on the GPU: one thread block per problem, one thread per row (strided), matrix-free.

Packed problems as in the CPU engine: rows X [N, d] f64, problem p owning rows offsets[p]:offsets[p + 1]. Each row's
m smallest squared distances to the other rows of its problem are kept sorted in its own row of a global scratch
array K [N, M] (no on-chip size limit on n or m).
"""

from __future__ import annotations

import math

from numba import cuda

from meds_core.clustering._cuda_jit import kernel, sq_dist


@kernel
def core_distances_kernel(X, offsets, order, min_samples, min_rows, K, core):
    """core[i] = squared distance of row i to its m-th nearest OTHER row of its problem, m = max(1, min(min_samples,
    n - 1)) (hdbscan's ``min_samples``); problems with n < max(2, min_rows) are skipped. Block b runs problem
    order[b].

    X [N, d] f64, offsets [P + 1] int64, K [N, M >= m] f64 scratch -> core [N] f64."""
    p = order[cuda.blockIdx.x]
    a, b = offsets[p], offsets[p + 1]
    n = b - a
    if n < min_rows or n < 2:
        return
    m = max(1, min(min_samples, n - 1))
    for i in range(a + cuda.threadIdx.x, b, cuda.blockDim.x):
        for t in range(m):
            K[i, t] = math.inf
        last = math.inf
        for j in range(a, b):
            if j == i:
                continue
            v = sq_dist(X, i, j)
            if v < last:  # insertion into the sorted m best; the largest falls off
                t = m - 1
                while t > 0 and K[i, t - 1] > v:
                    K[i, t] = K[i, t - 1]
                    t -= 1
                K[i, t] = v
                last = K[i, m - 1]
        core[i] = last
