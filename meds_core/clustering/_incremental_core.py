"""Incremental core distances for ``min_samples > 1``: each row's ``min_samples`` nearest other rows, kept between
steps, so that a step computes O(n * (m + r) * d) distances for m new rows instead of O(n^2 * d).

With ``min_samples > 1`` mutual-reachability weights tie wherever a core distance dominates (a row's nearest rows all
reach it at its own core distance), so the MST is in general not unique and only Prim's run itself decides which
tree, and in which order, the tree stage sees. The step therefore keeps Prim's and the tree stage as in full
recomputation, and makes only the core distances incremental; they are order statistics of the same bit-for-bit
distances, so they equal the full engine's exactly, and so do the tree and the labels.

State per problem: ``K [ms, n] f64``, column i the ``ms`` smallest squared distances from row i to the other rows,
ascending (inf where fewer than ``ms`` other rows exist), and ``J [ms, n] int32``, the rows they belong to (-1 where
inf). Between steps:

* a kept row none of whose listed rows was dropped keeps its list (every unlisted kept row is at least as far as
  the last listed one), renumbered;
* a kept row that lost a listed row is recomputed over all rows (O(n * d));
* each new row is computed over all rows, and offers its distance to every kept row that kept its list.

Equal distances may leave different rows listed than a full computation would; the values, and so the core
distances, are the same.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from meds_core.clustering._core_distances import sq_dists_from
from meds_core.clustering._jit import kernel
from meds_core.clustering._mst import prim_mst
from meds_core.clustering._pipeline import _transposed, tree_labels


@kernel
def _offer(K, J, c, v, j):
    """Insert distance v to row j into column c of K [ms, n] f64 / J [ms, n] int32 when v is strictly below the last
    entry (ascending; the last entry falls off)."""
    t = K.shape[0] - 1
    if not v < K[t, c]:
        return
    while t > 0 and K[t - 1, c] > v:
        K[t, c], J[t, c] = K[t - 1, c], J[t - 1, c]
        t -= 1
    K[t, c], J[t, c] = v, j


@kernel
def core_lists_update(XT, n_old, drop, K_old, J_old, ms):
    """The neighbour lists of the rows XT [d, n] f64 (transposed: the previous rows less their first ``drop``, then
    the new rows) from the lists of the previous n_old rows (K_old [ms, n_old] f64, J_old [ms, n_old] int32; n_old =
    0 builds them from scratch). -> K [ms, n] f64, J [ms, n] int32 (module docstring)."""
    d, n = XT.shape
    kept = n_old - drop
    K = np.full((ms, n), np.inf)
    J = np.full((ms, n), -1, dtype=np.int32)
    redo = np.zeros(n, dtype=np.bool_)
    for i in range(kept):
        o = i + drop
        for t in range(ms):
            redo[i] |= 0 <= J_old[t, o] < drop
        if not redo[i]:
            for t in range(ms):
                K[t, i] = K_old[t, o]
                J[t, i] = J_old[t, o] - drop if J_old[t, o] >= 0 else -1
    row = np.empty(n)
    x = np.empty(d)
    for a in range(n):
        if a < kept and not redo[a]:
            continue
        for q in range(d):
            x[q] = XT[q, a]
        sq_dists_from(x, XT, 0, n, row)
        for j in range(n):
            if j != a:
                _offer(K, J, a, row[j], j)
                if a >= kept and j < kept and not redo[j]:  # a new row's distance to a kept list
                    _offer(K, J, j, row[j], a)
    return K, J


@kernel(parallel=True)
def incremental_core_packed(X, starts, offsets, n_old, drop, K_old, J_old, s_offsets, order, min_cluster_size,
                            min_samples, leaf, allow_single_cluster, epsilon):
    """One step over packed problems for ``min_samples > 1`` (rows starts[p]:offsets[p + 1] of X [N, d] f64; rows
    offsets[p]:starts[p] are skipped): problem p's lists are updated from its previous n_old[p] rows' lists (columns
    s_offsets[p]:s_offsets[p + 1] of K_old [ms, S] f64, J_old [ms, S] int32; n_old[p] = -1 builds them from
    scratch), the core distances read from them, then Prim's and the tree stage run as in full recomputation.
    -> labels [N] int64 (-1 on skipped rows), K [ms, N] f64 and J [ms, N] int32 (problem p's lists in columns
    starts[p]:offsets[p + 1])."""
    N = X.shape[0]
    ms = min_samples  # K_old, J_old have ms rows
    labels = np.full(N, -1, dtype=np.int64)
    K = np.full((ms, N), np.inf)
    J = np.full((ms, N), -1, dtype=np.int32)
    for t in prange(order.shape[0]):
        p = order[t]
        a, b = starts[p], offsets[p + 1]
        n = b - a
        if n == 0:
            continue
        XT = _transposed(X[a:b])
        if n_old[p] >= 0:
            Kp, Jp = core_lists_update(XT, n_old[p], drop[p], K_old[:, s_offsets[p]:s_offsets[p + 1]],
                                       J_old[:, s_offsets[p]:s_offsets[p + 1]], ms)
        else:
            Kp, Jp = core_lists_update(XT, 0, 0, K_old[:, 0:0], J_old[:, 0:0], ms)
        K[:, a:b], J[:, a:b] = Kp, Jp
        if n >= max(2, min_cluster_size):
            src, dst, w = prim_mst(XT, Kp[min(ms, n - 1) - 1].copy())
            labels[a:b] = tree_labels(src, dst, w, min_cluster_size, leaf, allow_single_cluster, epsilon)
    return labels, K, J
