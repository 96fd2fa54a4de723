"""Squared euclidean distances from one row to a block of columns, and core distances (hdbscan's ``min_samples``).

Rows are stored transposed, ``XT`` of shape (d, n), so that the inner loop runs over contiguous columns and
vectorises. Distances are summed over the features in index order (four at a time, same association), so the value
for (i, j) equals the value for (j, i) bit for bit, in every kernel that uses :func:`sq_dists_from`.
"""

from __future__ import annotations

import numpy as np

from meds_core.clustering._jit import kernel


@kernel
def _add_block(x, XT, k, lo, hi, out):
    """out[j] += the squares of features k..k+3 of x [d] f64 minus column lo + j of XT [d, n] f64, for j < hi - lo,
    added one at a time in feature order (the association every distance here uses)."""
    a0, a1, a2, a3 = x[k], x[k + 1], x[k + 2], x[k + 3]
    r0, r1, r2, r3 = XT[k, lo:hi], XT[k + 1, lo:hi], XT[k + 2, lo:hi], XT[k + 3, lo:hi]
    for j in range(hi - lo):  # column slices index from 0: no negative-index wrap-around check blocks vectorisation
        t0, t1, t2, t3 = a0 - r0[j], a1 - r1[j], a2 - r2[j], a3 - r3[j]
        out[j] = (((out[j] + t0 * t0) + t1 * t1) + t2 * t2) + t3 * t3


@kernel
def sq_dists_from(x, XT, lo, hi, out):
    """out[:hi - lo] = squared distances from x [d] f64 to the columns lo..hi-1 of XT [d, n] f64 (out [>= hi - lo])."""
    d = XT.shape[0]
    m = hi - lo
    for j in range(m):
        out[j] = 0.0
    k = 0
    while k + 4 <= d:
        _add_block(x, XT, k, lo, hi, out)
        k += 4
    while k < d:
        a0, r0 = x[k], XT[k, lo:hi]
        for j in range(m):
            t0 = a0 - r0[j]
            out[j] = out[j] + t0 * t0
        k += 1


@kernel
def sq_dists_upto(x, XT, lo, hi, out, idx, cutoff):
    """:func:`sq_dists_from` for the columns whose squared distance can be at most ``cutoff``: the same sums, in the
    same order, but after each block of four features the columns already above ``cutoff`` are left (a partial sum
    of squares only grows, and so does its rounding). -> c: out[idx[s]] (idx [>= hi - lo] int64, s < c) holds the
    exact distance of column lo + idx[s], for every column whose distance is <= cutoff (and maybe a few others);
    the other entries of out are partial sums above ``cutoff``."""
    d = XT.shape[0]
    m = hi - lo
    for j in range(m):
        out[j] = 0.0
    k = 0
    while k + 4 <= d and k < 8:  # the first blocks over every column, vectorised
        _add_block(x, XT, k, lo, hi, out)
        k += 4
    c = 0
    for j in range(m):
        idx[c] = j
        c += out[j] <= cutoff
    while k + 4 <= d:
        a0, a1, a2, a3 = x[k], x[k + 1], x[k + 2], x[k + 3]
        c2 = 0
        for s in range(c):
            j = idx[s]
            t0, t1, t2, t3 = a0 - XT[k, lo + j], a1 - XT[k + 1, lo + j], a2 - XT[k + 2, lo + j], a3 - XT[k + 3, lo + j]
            v = (((out[j] + t0 * t0) + t1 * t1) + t2 * t2) + t3 * t3
            out[j] = v
            idx[c2] = j
            c2 += v <= cutoff
        c = c2
        k += 4
    while k < d:
        a0 = x[k]
        for s in range(c):
            j = idx[s]
            t0 = a0 - XT[k, lo + j]
            out[j] = out[j] + t0 * t0
        k += 1
    return c


@kernel
def min_bits(bits, m):
    """Smallest of bits[:m] int64, m >= 1. Used on float64 arrays of values >= +0.0 viewed as int64: their bit
    patterns order like the values, and an integer min-reduction vectorises (a float one needs fastmath)."""
    best = bits[0]
    for j in range(m):
        b = bits[j]
        best = b if b < best else best
    return best


@kernel
def _insert(K, c, v):
    """Insert v into column c of K [m, n] f64 (ascending from row 0; the largest falls off)."""
    t = K.shape[0] - 1
    while t > 0 and K[t - 1, c] > v:
        K[t, c] = K[t - 1, c]
        t -= 1
    K[t, c] = v


@kernel
def _merge_network(K, lo, row):
    """Insert row[j] into column lo + j of K [m, n] f64 (ascending columns) for every j, branch-free:
    K'[t] = min(K[t], max(K[t - 1], v)), highest t first. One vectorised pass per neighbour slot."""
    m, L = K.shape[0], K.shape[1] - lo
    for t in range(m - 1, 0, -1):
        kt, kp = K[t, lo:], K[t - 1, lo:]
        for j in range(L):
            v = row[j]
            a = kp[j] if kp[j] > v else v
            kt[j] = a if a < kt[j] else kt[j]
    k0 = K[0, lo:]
    for j in range(L):
        v = row[j]
        k0[j] = v if v < k0[j] else k0[j]


@kernel
def core_distances_sq(XT, m):
    """Squared distance of every row to its m-th nearest OTHER row (hdbscan: k = m + 1 neighbours counting itself).

    XT [d, n] f64, 1 <= m <= n - 1 -> [n] f64. Each pair (i < j) is computed once, in row i, and offered to both rows:
    to row i by insertion (few succeed), to the rows j by a branch-free merge while offers often succeed (early rows:
    an offer from row i is among the m best so far with odds about m / i), by insertion on a hit after that.
    """
    d, n = XT.shape
    K = np.full((m, n), np.inf)  # column c: the m smallest offers to row c so far, ascending
    row = np.empty(n)
    x = np.empty(d)
    for i in range(n - 1):
        for k in range(d):
            x[k] = XT[k, i]
        L = n - 1 - i
        sq_dists_from(x, XT, i + 1, n, row)
        if m == 1:  # row i: one vectorised min (distances are >= +0.0: compare bit patterns)
            nearest = K[0].view(np.int64)
            nearest[i] = min(nearest[i], min_bits(row.view(np.int64), L))
        else:
            ki = K[m - 1, i]
            for j in range(L):
                if row[j] < ki:
                    _insert(K, i, row[j])
                    ki = K[m - 1, i]
        if m <= 2 or i < 32 * m:
            _merge_network(K, i + 1, row)
        else:
            last = K[m - 1, i + 1:]
            for j in range(L):
                if row[j] < last[j]:
                    _insert(K, i + 1 + j, row[j])
    return K[m - 1].copy()
