"""Single linkage and the condensed tree, from MST edges, with the hdbscan library's semantics and node order.

MST edges -> single-linkage merge tree (union-find) -> condensed tree (``min_cluster_size``) -> cluster stabilities.
Selection and labelling follow in :mod:`._selection`.

Conventions (hdbscan's): points are nodes 0..n-1 and merge i is node n + i; the condensed tree visits the merge tree
breadth-first from the root and numbers clusters from n in creation order (the root is n, the two sides of a split get
consecutive numbers, left first), so a parent always has a smaller number than its children. Condensed-tree rows are
(parent cluster, child cluster or point, lambda = 1 / distance, child size); a zero distance gives lambda = inf.
"""

from __future__ import annotations

import numpy as np

from meds_core.clustering._jit import kernel
from meds_core.clustering._sort import stable_argsort


@kernel
def _root(uf, x):
    """Root of x in the union-find forest uf [n] int64 (uf[r] == r at a root), halving the path on the way."""
    while uf[x] != x:
        uf[x] = uf[uf[x]]
        x = uf[x]
    return x


@kernel
def single_linkage(src, dst, weight_sq):
    """Merge tree of the MST. src, dst [n-1] int64, weight_sq [n-1] f64 ->
    left, right [n-1] int64 (merged nodes), dist [n-1] f64 (ascending), size [n-1] int64.

    Edges are merged by increasing distance; equal distances keep MST order (stable sort)."""
    dist_e = np.sqrt(weight_sq)
    return merge_in_order(src, dst, dist_e, stable_argsort(dist_e))


@kernel
def merge_in_order(src, dst, dist_e, order):
    """:func:`single_linkage` with the merge order given: edges order[0], order[1], ... (ascending dist_e [n-1] f64,
    not squared). -> left, right [n-1] int64, dist [n-1] f64, size [n-1] int64."""
    n = src.shape[0] + 1
    uf = np.arange(n)  # union-find over the points, by rank; node[r]: the merge-tree node of root r's component
    rank = np.zeros(n, dtype=np.int64)
    node = np.arange(n)
    count = np.ones(n, dtype=np.int64)
    left = np.empty(n - 1, dtype=np.int64)
    right = np.empty(n - 1, dtype=np.int64)
    dist = np.empty(n - 1)
    size = np.empty(n - 1, dtype=np.int64)
    for i in range(n - 1):
        e = order[i]
        ra, rb = _root(uf, src[e]), _root(uf, dst[e])
        left[i], right[i], dist[i] = node[ra], node[rb], dist_e[e]
        size[i] = count[ra] + count[rb]
        if rank[ra] < rank[rb]:
            ra, rb = rb, ra
        uf[rb] = ra
        rank[ra] += rank[ra] == rank[rb]
        count[ra] = size[i]
        node[ra] = n + i
    return left, right, dist, size


@kernel
def _emit_points(top, parent_label, lam, n, left, right, ignore, queue, rows, r):
    """Append a row (parent_label, point, lam, 1) for every point under node ``top``, breadth-first, and mark the
    subtree ignored. rows: (parent, child [2n] int64, lam [2n] f64, size [2n] int64); returns the new row count."""
    parent, child, lams, sizes = rows
    head, tail = 0, 1
    queue[0] = top
    while head < tail:
        node = queue[head]
        head += 1
        ignore[node] = True
        if node < n:
            parent[r], child[r], lams[r], sizes[r] = parent_label, node, lam, 1
            r += 1
        else:
            queue[tail], queue[tail + 1] = left[node - n], right[node - n]
            tail += 2
    return r


@kernel
def condense_tree(left, right, dist, size, min_cluster_size):
    """Condensed tree rows in hdbscan's order. Merge tree [n-1] arrays -> parent, child [r] int64, lam [r] f64,
    child_size [r] int64, and the number of clusters (the root included)."""
    n = left.shape[0] + 1
    root = 2 * n - 2
    queue = np.empty(2 * n - 1, dtype=np.int64)  # breadth-first order of the merge tree
    queue[0] = root
    head, tail = 0, 1
    while head < tail:
        node = queue[head]
        head += 1
        if node >= n:
            queue[tail], queue[tail + 1] = left[node - n], right[node - n]
            tail += 2
    relabel = np.empty(2 * n - 1, dtype=np.int64)
    relabel[root] = n
    next_label = n + 1
    ignore = np.zeros(2 * n - 1, dtype=np.bool_)
    scratch = np.empty(2 * n - 1, dtype=np.int64)
    rows = (np.empty(2 * n, dtype=np.int64), np.empty(2 * n, dtype=np.int64), np.empty(2 * n),
            np.empty(2 * n, dtype=np.int64))
    parent, child, lams, sizes = rows
    r = 0
    for q in range(2 * n - 1):
        node = queue[q]
        if node < n or ignore[node]:
            continue
        a, b = left[node - n], right[node - n]
        lam = 1.0 / dist[node - n] if dist[node - n] > 0.0 else np.inf
        na = size[a - n] if a >= n else 1
        nb = size[b - n] if b >= n else 1
        label = relabel[node]
        if na >= min_cluster_size and nb >= min_cluster_size:
            relabel[a] = next_label
            relabel[b] = next_label + 1
            parent[r], child[r], lams[r], sizes[r] = label, next_label, lam, na
            parent[r + 1], child[r + 1], lams[r + 1], sizes[r + 1] = label, next_label + 1, lam, nb
            next_label += 2
            r += 2
        elif na < min_cluster_size and nb < min_cluster_size:
            r = _emit_points(a, label, lam, n, left, right, ignore, scratch, rows, r)
            r = _emit_points(b, label, lam, n, left, right, ignore, scratch, rows, r)
        elif na < min_cluster_size:
            relabel[b] = label
            r = _emit_points(a, label, lam, n, left, right, ignore, scratch, rows, r)
        else:
            relabel[a] = label
            r = _emit_points(b, label, lam, n, left, right, ignore, scratch, rows, r)
    return parent[:r], child[:r], lams[:r], sizes[:r], next_label - n


@kernel
def cluster_stability(parent, child, lam, child_size, n, n_clusters):
    """Per cluster (numbered from 0 = root): stability [C] f64, birth lambda [C] f64 (root 0), parent [C] int64
    (root -1), first child [C] int64 (-1 for a leaf; the second child is first + 1). Summed in row order, as hdbscan."""
    birth = np.zeros(n_clusters)
    up = np.full(n_clusters, -1, dtype=np.int64)
    first = np.full(n_clusters, -1, dtype=np.int64)
    for q in range(parent.shape[0]):
        c = child[q] - n
        if c >= 0:
            p = parent[q] - n
            birth[c], up[c] = lam[q], p
            if first[p] == -1:
                first[p] = c
    stability = np.zeros(n_clusters)
    for q in range(parent.shape[0]):
        p = parent[q] - n
        stability[p] += (lam[q] - birth[p]) * child_size[q]
    return stability, birth, up, first
