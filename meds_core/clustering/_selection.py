"""Cluster selection ("eom" or "leaf", ``allow_single_cluster``, ``cluster_selection_epsilon``) on the condensed
tree of :mod:`._condensed_tree`, and the labels of the points (noise -1), with the hdbscan library's semantics.
"""

from __future__ import annotations

import numpy as np

from meds_core.clustering._jit import kernel


@kernel
def _mark_below(c, first, flag):
    """Set flag [C] bool for every strict descendant of cluster c in the cluster tree (first [C] int64)."""
    stack = np.empty(first.shape[0], dtype=np.int64)
    top = 0
    if first[c] >= 0:
        stack[0], stack[1] = first[c], first[c] + 1
        top = 2
    while top > 0:
        top -= 1
        x = stack[top]
        flag[x] = True
        if first[x] >= 0:
            stack[top], stack[top + 1] = first[x], first[x] + 1
            top += 2


@kernel
def select_eom(stability, first, up, allow_single_cluster):
    """Excess-of-mass selection -> selected [C] bool. Bottom-up, a cluster keeps itself unless its children's summed
    stability is larger; the sum is accumulated in float32 left child first, as hdbscan does (bit-for-bit)."""
    C = stability.shape[0]
    stab = stability.copy()
    keeps = np.zeros(C, dtype=np.bool_)
    last = 0 if allow_single_cluster else 1  # the root competes only with allow_single_cluster
    for c in range(C - 1, last - 1, -1):
        sub = np.float32(0.0)
        if first[c] >= 0:
            sub = np.float32(np.float64(sub) + stab[first[c]])
            sub = np.float32(np.float64(sub) + stab[first[c] + 1])
        if np.float64(sub) > stab[c]:
            stab[c] = np.float64(sub)
        else:
            keeps[c] = True
    selected = np.zeros(C, dtype=np.bool_)
    blocked = np.zeros(C, dtype=np.bool_)  # an ancestor kept itself
    for c in range(C):  # parents come before children
        if c > 0:
            blocked[c] = blocked[up[c]] or keeps[up[c]]
        selected[c] = keeps[c] and not blocked[c]
    return selected


@kernel
def select_leaves(first):
    """Leaf selection -> selected [C] bool: the leaves of the cluster tree (none if the root never splits)."""
    selected = np.zeros(first.shape[0], dtype=np.bool_)
    if first[0] >= 0:
        for c in range(1, first.shape[0]):
            selected[c] = first[c] < 0
    return selected


@kernel
def apply_epsilon(selected, birth, up, first, epsilon, allow_single_cluster):
    """hdbscan's epsilon search: a selected cluster born at a distance below ``epsilon`` is replaced by its nearest
    ancestor born above it (the root only with allow_single_cluster). selected [C] bool -> [C] bool.
    Clusters are visited in increasing number (hdbscan iterates a Python set; equal for small numbers)."""
    C = selected.shape[0]
    out = np.zeros(C, dtype=np.bool_)
    processed = np.zeros(C, dtype=np.bool_)
    for c in range(C):
        if not selected[c]:
            continue
        if 1.0 / birth[c] < epsilon:
            if not processed[c]:
                e = c
                while True:
                    p = up[e]
                    if p == 0:
                        e = 0 if allow_single_cluster else e
                        break
                    if 1.0 / birth[p] > epsilon:
                        e = p
                        break
                    e = p
                out[e] = True
                _mark_below(e, first, processed)
        else:
            out[c] = True
    return out


@kernel
def label_points(parent, child, lam, n, selected, up, epsilon, allow_single_cluster):
    """Labels [n] int64: the number (0, 1, ... in cluster order) of a point's nearest selected ancestor, else -1.
    The root as the only selected cluster (allow_single_cluster) keeps the points that leave it last (lambda at
    least the root's largest child lambda), or those with lambda >= 1 / epsilon when epsilon > 0."""
    C = selected.shape[0]
    owner = np.full(C, -1, dtype=np.int64)  # nearest selected ancestor-or-self
    rank = np.full(C, -1, dtype=np.int64)
    k = 0
    for c in range(C):
        if selected[c]:
            rank[c] = k
            k += 1
        owner[c] = c if selected[c] else (owner[up[c]] if c > 0 else -1)
    single = allow_single_cluster and selected[0] and k == 1
    root_max = 0.0
    for q in range(parent.shape[0]):
        if parent[q] == n and lam[q] > root_max:
            root_max = lam[q]
    cut = 1.0 / epsilon if epsilon != 0.0 else root_max
    labels = np.full(n, -1, dtype=np.int64)
    for q in range(parent.shape[0]):
        if child[q] >= n:
            continue
        o = owner[parent[q] - n]
        if o > 0:
            labels[child[q]] = rank[o]
        elif o == 0 and single and lam[q] >= cut:
            labels[child[q]] = 0
    return labels
