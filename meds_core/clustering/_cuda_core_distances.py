"""Core distances on the GPU: one thread block per problem, one thread per row (strided), matrix-free.

Packed problems as in the CPU engine, transposed: points XT [d, N] f64 (columns), problem p owning points
offsets[p]:offsets[p + 1]. Each point's m smallest squared distances to the other points of its problem are kept
sorted in its own column of a global scratch array K [M, N] (consecutive threads touch consecutive addresses; no
on-chip size limit on n or m).
"""

from __future__ import annotations

import math

from numba import cuda

from meds_core.clustering._cuda_jit import kernel, sq_dist


@kernel
def core_distances_kernel(XT, offsets, order, min_samples, min_rows, K, core):
    """core[i] = squared distance of row i to its m-th nearest OTHER row of its problem, m = max(1, min(min_samples,
    n - 1)) (hdbscan's ``min_samples``); problems with n < max(2, min_rows) are skipped. Block b runs problem
    order[b].

    XT [d, N] f64 (points as columns), offsets [P + 1] int64, K [M >= m, N] f64 scratch -> core [N] f64."""
    p = order[cuda.blockIdx.x]
    a, b = offsets[p], offsets[p + 1]
    n = b - a
    if n < min_rows or n < 2:
        return
    m = max(1, min(min_samples, n - 1))
    for i in range(a + cuda.threadIdx.x, b, cuda.blockDim.x):
        for t in range(m):
            K[t, i] = math.inf
        last = math.inf
        for j in range(a, b):
            if j == i:
                continue
            v = sq_dist(XT, i, j)
            if v < last:  # insertion into the sorted m best; the largest falls off
                t = m - 1
                while t > 0 and K[t - 1, i] > v:
                    K[t, i] = K[t - 1, i]
                    t -= 1
                K[t, i] = v
                last = K[m - 1, i]
        core[i] = last
