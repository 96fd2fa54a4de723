"""Prim's minimum spanning tree on the mutual-reachability graph, without an n x n matrix.

Mutual reachability: ``w(i, j) = max(core_i, core_j, d(i, j))``, all squared here (the square root is monotone, so
the tree is the same). The points not yet in the tree are kept compacted (swap-remove), and distances from the newest
tree point are recomputed on the fly: O(n * d) memory, O(n^2 * d) time.

Tie-breaking, fixed: the first tree point is row 0; a point's key changes only on a strictly smaller weight (its
source stays the earlier tree point); among equal keys the point with the smallest row index joins next. This is
exactly the hdbscan library's dense Prim's (``algorithm='generic'``), so on bit-equal weights both emit the same
edges in the same order.
"""

from __future__ import annotations

import numpy as np

from meds_core.clustering._core_distances import min_bits, sq_dists_from
from meds_core.clustering._jit import kernel


@kernel
def prim_mst(XT, core_sq):
    """MST of the mutual-reachability graph. XT [d, n] f64, core_sq [n] f64 ->
    src, dst [n-1] int64 (dst joins the tree through src, in joining order), weight_sq [n-1] f64."""
    d, n = XT.shape
    R = XT.copy()  # columns of the points not in the tree, compacted
    core = core_sq.copy()
    idx = np.arange(n)  # row index of each compacted column
    pos = np.arange(n)  # compacted column of each row index
    key = np.full(n, np.inf)
    key_bits = key.view(np.int64)
    via = np.zeros(n, dtype=np.int64)
    dist = np.empty(n)
    x = np.empty(d)
    src = np.empty(n - 1, dtype=np.int64)
    dst = np.empty(n - 1, dtype=np.int64)
    weight = np.empty(n - 1)
    cur, m = 0, n
    for it in range(n):
        # move the newest tree point `cur` (compacted column j) out: its coordinates to x, the last column into j
        j = pos[cur]
        cur_core = core[j]
        for k in range(d):
            x[k] = R[k, j]
        m -= 1
        for k in range(d):
            R[k, j] = R[k, m]
        core[j], key[j], via[j], idx[j] = core[m], key[m], via[m], idx[m]
        pos[idx[j]] = j
        if m == 0:
            break
        sq_dists_from(x, R, 0, m, dist)
        for j in range(m):  # branch-free, so that it vectorises
            w = max(dist[j], core[j], cur_core)
            less = w < key[j]
            key[j] = w if less else key[j]
            via[j] = cur if less else via[j]
        best = min_bits(key_bits, m)  # keys are >= 0: compare bit patterns
        nxt = n
        for j in range(m):
            c = idx[j] if key_bits[j] == best else n
            nxt = c if c < nxt else nxt
        src[it], dst[it], weight[it] = via[pos[nxt]], nxt, key[pos[nxt]]
        cur = nxt
    return src, dst, weight
