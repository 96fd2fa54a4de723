"""Incremental MST for ``min_samples = 1``: the new MST from the old one and the edges incident to the new rows.

With ``min_samples = 1`` the core distance of a row is its nearest-neighbour distance, so every mutual-reachability
weight equals the squared euclidean distance (bit for bit: core and edge come from the same sums). Let the old MST
(rows 0..n_old-1) be UNIQUE: every non-tree edge is strictly heavier than the heaviest edge on its tree path. Adding
rows n_old..n-1 only lowers minimax path distances, so the old non-tree edges stay strictly heavier than the new
tree paths, and the new MST is the MST of the candidate set C = old MST edges + edges incident to a new row. Kruskal on
C, one class of bit-equal weights at a time, checks that MST(C) is unique too (every edge of a class that joins two
components before the class must be added); then it is the unique MST of all rows. Prim's algorithm on the full graph
(:mod:`._numba_mst`) emits exactly that tree, and Prim on the tree alone, with the same rule (start at row 0, smallest
key first, equal keys: smallest row index) emits the same edges, orientation and order, because each vertex outside
the tree has at most one tree neighbour inside it. When C has a tie that could change the tree, the answer is
``ok = False`` and the caller recomputes in full. Cost: O(n * m * d + (n * m) log(n * m)) for m new rows.
"""

from __future__ import annotations

import heapq

import numpy as np
from numba import prange

from meds_core.clustering._numba_batch import _transposed, mst_one, tree_labels
from meds_core.clustering._numba_core import sq_dists_from
from meds_core.clustering._numba_jit import kernel


@kernel
def _root(parent, x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@kernel
def _tree_adjacency(n, tu, tv, tw):
    """Adjacency (CSR) of a tree's n-1 edges (tu, tv [n-1] int64, tw [n-1] f64): row r's neighbours are
    nb[start[r]:start[r + 1]] with edge weights nw[same] -> start [n+1] int64, nb [2(n-1)] int64, nw [2(n-1)] f64."""
    deg = np.zeros(n + 1, dtype=np.int64)
    for e in range(n - 1):
        deg[tu[e] + 1] += 1
        deg[tv[e] + 1] += 1
    start = np.cumsum(deg)
    fill = start[:-1].copy()
    nb = np.empty(2 * (n - 1), dtype=np.int64)
    nw = np.empty(2 * (n - 1))
    for e in range(n - 1):
        a, b = tu[e], tv[e]
        nb[fill[a]], nw[fill[a]] = b, tw[e]
        fill[a] += 1
        nb[fill[b]], nw[fill[b]] = a, tw[e]
        fill[b] += 1
    return start, nb, nw


@kernel
def _prim_on_tree(n, tu, tv, tw):
    """Prim's order of a spanning tree (tu, tv [n-1] int64, tw [n-1] f64): from row 0, smallest weight first, equal
    weights smallest row first. -> src, dst [n-1] int64 (dst joins through src), weight [n-1] f64."""
    start, nb, nw = _tree_adjacency(n, tu, tv, tw)
    src = np.empty(n - 1, dtype=np.int64)
    dst = np.empty(n - 1, dtype=np.int64)
    weight = np.empty(n - 1)
    seen = np.zeros(n, dtype=np.bool_)
    seen[0] = True
    heap = [(0.0, np.int64(0), np.int64(0))]
    heap.pop()
    for z in range(start[0], start[1]):
        heapq.heappush(heap, (nw[z], nb[z], np.int64(0)))
    for it in range(n - 1):
        w, v, u = heapq.heappop(heap)  # v has one tree neighbour in the tree: no stale entries
        src[it], dst[it], weight[it] = u, v, w
        seen[v] = True
        for z in range(start[v], start[v + 1]):
            if not seen[nb[z]]:
                heapq.heappush(heap, (nw[z], nb[z], v))
    return src, dst, weight


@kernel
def incremental_mst(X, n_old, drop, src_old, dst_old, w_old):
    """The MST of X [n, d] f64 from the unique MST of the previous rows (src_old, dst_old [n_old-1] int64, w_old
    [n_old-1] f64 squared, over n_old rows) after dropping their first ``drop`` rows: X holds the kept previous rows
    (n_old - drop, same order), then the new ones. -> (src, dst [n-1] int64, weight_sq [n-1] f64 in the full engine's
    Prim order, ok): ok is False (and the edges empty) when the new MST is not provably unique.

    Dropping rows: the old tree edges between kept rows form a forest F, every edge of which is in the new MST (each
    was the strict minimum across a cut, still true with fewer rows); an edge inside one component of F is strictly
    heavier than its tree path, so the candidates are F, the pairs of kept rows in different components (one end is
    outside the largest component: O(n * (rows outside it) * d)), and the edges of the new rows."""
    n, d = X.shape
    kept = n_old - drop
    m = n - kept
    comp = np.arange(max(kept, 1))
    e_f = 0
    for e in range(src_old.shape[0]):
        if src_old[e] >= drop and dst_old[e] >= drop:
            e_f += 1
            a, b = _root(comp, src_old[e] - drop), _root(comp, dst_old[e] - drop)
            comp[a] = b
    size = np.zeros(max(kept, 1), dtype=np.int64)
    for i in range(kept):
        comp[i] = _root(comp, i)
        size[comp[i]] += 1
    big = np.argmax(size) if kept > 0 else 0
    outside = 0
    for i in range(kept):
        outside += comp[i] != big
    ne = e_f + outside * kept + m * kept + m * (m - 1) // 2
    u = np.empty(ne, dtype=np.int64)
    v = np.empty(ne, dtype=np.int64)
    w = np.empty(ne)
    k = 0
    for e in range(src_old.shape[0]):
        if src_old[e] >= drop and dst_old[e] >= drop:
            u[k], v[k], w[k] = src_old[e] - drop, dst_old[e] - drop, w_old[e]
            k += 1
    XT = _transposed(X)
    x = np.empty(d)
    row = np.empty(n)
    if outside:
        for i in range(kept):
            if comp[i] == big:
                continue
            for c in range(d):
                x[c] = XT[c, i]
            sq_dists_from(x, XT, 0, kept, row)
            for j in range(kept):
                if comp[j] != comp[i] and (comp[j] == big or j > i):
                    u[k], v[k], w[k] = i, j, row[j]
                    k += 1
    for i in range(kept, n):
        for c in range(d):
            x[c] = XT[c, i]
        sq_dists_from(x, XT, 0, i, row)
        for j in range(i):
            u[k], v[k], w[k] = j, i, row[j]
            k += 1
    ne = k
    w = w[:ne]
    order = np.argsort(w, kind="mergesort")
    parent = np.arange(n)
    tu = np.empty(max(n - 1, 0), dtype=np.int64)
    tv = np.empty(max(n - 1, 0), dtype=np.int64)
    tw = np.empty(max(n - 1, 0))
    t, q = 0, 0
    empty_i, empty_f = np.empty(0, dtype=np.int64), np.empty(0)
    while q < ne and t < n - 1:
        wq = w[order[q]]
        r = q
        while r < ne and w[order[r]] == wq:
            r += 1
        usable = 0
        for z in range(q, r):
            if _root(parent, u[order[z]]) != _root(parent, v[order[z]]):
                usable += 1
        added = 0
        for z in range(q, r):
            e = order[z]
            a, b = _root(parent, u[e]), _root(parent, v[e])
            if a != b:
                parent[a] = b
                tu[t], tv[t], tw[t] = u[e], v[e], w[e]
                t += 1
                added += 1
        if usable != added:
            return empty_i, empty_i, empty_f, False
        q = r
    if t != n - 1:
        return empty_i, empty_i, empty_f, False
    if n < 2:
        return tu, tv, tw, True
    src, dst, weight = _prim_on_tree(n, tu, tv, tw)
    return src, dst, weight, True


@kernel
def is_unique_mst(X, src, dst, weight_sq):
    """True when the spanning tree (src, dst [n-1] int64, weight_sq [n-1] f64) of X [n, d] f64 is the UNIQUE
    euclidean MST: every non-tree pair is strictly farther (squared, bit for bit) than the heaviest edge on its tree
    path. O(n^2 * d) time, O(n * d) memory (one tree walk and one distance row per row)."""
    n, d = X.shape
    if n < 3:
        return True
    XT = _transposed(X)
    start, nb, nw = _tree_adjacency(n, src, dst, weight_sq)
    pm = np.empty(n)
    up = np.empty(n, dtype=np.int64)
    stack = np.empty(n, dtype=np.int64)
    row = np.empty(n)
    x = np.empty(d)
    for u in range(n - 1):
        pm[u], up[u] = 0.0, u
        stack[0], top = u, 1
        while top > 0:
            top -= 1
            a = stack[top]
            for z in range(start[a], start[a + 1]):
                b = nb[z]
                if b != up[a]:
                    up[b] = a
                    pm[b] = nw[z] if nw[z] > pm[a] else pm[a]
                    stack[top] = b
                    top += 1
        for c in range(d):
            x[c] = XT[c, u]
        sq_dists_from(x, XT, u + 1, n, row)
        for j in range(n - 1 - u):
            v = u + 1 + j
            if row[j] < pm[v] or (row[j] == pm[v] and up[v] != u):
                return False
    return True


@kernel(parallel=True)
def incremental_packed(X, offsets, n_old, drop, e_src, e_dst, e_w, e_offsets, out_offsets, order, min_cluster_size,
                       min_samples, want_state, leaf, allow_single_cluster, epsilon):
    """One step over packed problems (rows offsets[p]:offsets[p + 1] of X [N, d] f64). Problem p with n_old[p] >= 0
    is updated from its old unique MST over n_old[p] rows, the first drop[p] of them gone (edges
    e_offsets[p]:e_offsets[p + 1] of e_src, e_dst [E] int64, e_w [E] f64
    squared); n_old[p] = -1, or a tie, means full recomputation, after which the MST is kept (checked unique) where
    want_state[p] and min_samples == 1. -> labels [N] int64, the new MSTs src, dst, w_sq
    packed by out_offsets (n_p - 1 each; filled only where ok), ok [P] bool (MST stored and provably unique)."""
    P = offsets.shape[0] - 1
    labels = np.full(X.shape[0], -1, dtype=np.int64)
    E = out_offsets[-1]
    src, dst, wsq = np.zeros(E, dtype=np.int64), np.zeros(E, dtype=np.int64), np.zeros(E)
    ok = np.zeros(P, dtype=np.bool_)
    for t in prange(order.shape[0]):
        p = order[t]
        a, b, o = offsets[p], offsets[p + 1], out_offsets[p]
        n = b - a
        good = False
        if n_old[p] >= 0:
            ea, eb = e_offsets[p], e_offsets[p + 1]
            s, dd, w, good = incremental_mst(X[a:b], n_old[p], drop[p], e_src[ea:eb], e_dst[ea:eb], e_w[ea:eb])
            if good and n >= 2:
                src[o:o + n - 1], dst[o:o + n - 1], wsq[o:o + n - 1] = s, dd, w
        if not good and n >= 2 and (n >= min_cluster_size or (want_state[p] and min_samples == 1)):
            s, dd, w = mst_one(X[a:b], min_samples)  # the full engine's MST
            src[o:o + n - 1], dst[o:o + n - 1], wsq[o:o + n - 1] = s, dd, w
            good = want_state[p] and min_samples == 1 and is_unique_mst(X[a:b], s, dd, w)
            if n >= max(2, min_cluster_size):
                labels[a:b] = tree_labels(s, dd, w, min_cluster_size, leaf, allow_single_cluster, epsilon)
        elif good and n >= max(2, min_cluster_size):
            labels[a:b] = tree_labels(src[o:o + n - 1], dst[o:o + n - 1], wsq[o:o + n - 1], min_cluster_size,
                                      leaf, allow_single_cluster, epsilon)
        elif not good and n < 2 and want_state[p] and min_samples == 1:
            good = True  # no edges: trivially unique
        ok[p] = good
    return labels, src, dst, wsq, ok
