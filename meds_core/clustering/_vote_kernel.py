"""The batched k-NN vote as one numba kernel, ``prange`` over memories: same rule and same rounding as the numpy
:func:`meds_core.clustering._vote.knn_vote_packed` (its oracle).

Rule: neighbours ranked by (cosine distance rounded to 1e-9, stored index); k = min(k, n); the vote is the most
frequent label, ties to the smallest; support = stored rows of the memory carrying the voted label. Rounding, as in
the numpy version: ``fl(sum_k (-1e9 * q_k) * s_k) + (1e9 + 1.5 * 2**52)`` rounds the distance in units of 1e-9
half-to-even, offset by 1.5 * 2**52. Only the order of the dot product's sum differs from the BLAS call, which can
move a distance across a rounding boundary (a relative 1e-16 error against a unit of 1e-9: practically never).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from meds_core.clustering._jit import kernel

_SCALE = 1e9
_ROUND = 1.5 * 2.0**52


@kernel
def _row_length(n):
    """Row length of the per-memory scratch arrays (stored rows transposed, distances of four queries), whose rows
    are read side by side: n, or n + 40 where rows would start within 256 bytes of a multiple of 4 KiB from each
    other (n near a multiple of 512, such as the default cap of 1,024 rows). Such rows share cache sets and evict
    each other: this kernel took 19.9-29.9 ms at n = 1024 against 14.1-15.1 ms at n = 1008 (P = 512, 16 queries
    each, 2 threads), and 13.7-13.8 ms at n = 1024 padded."""
    r = n % 512
    return n + 40 if (r < 32 or r > 480) else n


@kernel
def _scaled_dots(Qs, ST, n, out):
    """out[r, :n] = sum_k Qs[r, k] * ST[k, j] for the r <= 4 rows of Qs, each summed in k order.
    Qs [r, d] f64 (queries already times -1e9), ST [d, >= n] f64 (stored rows as columns 0..n-1), out [4, >= n] f64."""
    d, r = ST.shape[0], Qs.shape[0]
    for t in range(r):
        for j in range(n):
            out[t, j] = 0.0
    o0, o1, o2, o3 = out[0, 0:n], out[1, 0:n], out[2, 0:n], out[3, 0:n]
    for k in range(d):
        s = ST[k, 0:n]
        if r == 4:  # four queries share each load of a stored column
            a0, a1, a2, a3 = Qs[0, k], Qs[1, k], Qs[2, k], Qs[3, k]
            for j in range(n):
                v = s[j]
                o0[j] += a0 * v
                o1[j] += a1 * v
                o2[j] += a2 * v
                o3[j] += a3 * v
        else:
            for t in range(r):
                c, o = Qs[t, k], out[t, 0:n]
                for j in range(n):
                    o[j] += c * s[j]


@kernel
def _vote(near_lab, kk):
    """Most frequent of near_lab[:kk] int64, ties to the smallest label."""
    best, best_votes = near_lab[0], 0
    for a in range(kk):
        votes = 0
        for b in range(kk):
            votes += near_lab[b] == near_lab[a]
        if votes > best_votes or (votes == best_votes and near_lab[a] < best):
            best, best_votes = near_lab[a], votes
    return best


@kernel(parallel=True)
def knn_vote_kernel(rows, s_start, s_len, labels, Q, q_off, k):
    """Vote of every query row over its memory's stored rows.

    rows [R, d] f64 (unit rows): memory p's stored rows are rows[s_start[p]:s_start[p] + s_len[p]] (int64 [c] each);
    labels [sum s_len] int64 (>= -1), memory after memory; Q [Nq, d] f64 queries (unit), q_off [c+1] int64 (a memory
    with queries has s_len >= 1) -> label [Nq] int64, support [Nq] int64.
    """
    d = Q.shape[1]
    label = np.empty(Q.shape[0], dtype=np.int64)
    support = np.empty(Q.shape[0], dtype=np.int64)
    offset = _SCALE + _ROUND
    l_off = np.zeros(s_len.shape[0] + 1, dtype=np.int64)
    for p in range(s_len.shape[0]):
        l_off[p + 1] = l_off[p] + s_len[p]
    for p in prange(q_off.shape[0] - 1):
        S, s_lab = rows[s_start[p]:s_start[p] + s_len[p]], labels[l_off[p]:l_off[p + 1]]
        qa, qb = q_off[p], q_off[p + 1]
        n = S.shape[0]
        if qb == qa or n == 0:
            continue
        kk = min(k, n)
        ld = _row_length(n)
        ST = np.empty((d, ld))  # columns 0..n-1 used
        for f in range(d):  # contiguous writes; the strided reads stay in cache
            for j in range(n):
                ST[f, j] = S[j, f]
        dist = np.empty((4, ld))
        Qs = np.empty((4, d))
        best = np.empty(kk)
        near = np.empty(kk, dtype=np.int64)
        for r0 in range(qa, qb, 4):
            r1 = min(r0 + 4, qb)
            for t in range(r1 - r0):
                for f in range(d):
                    Qs[t, f] = Q[r0 + t, f] * -_SCALE
            _scaled_dots(Qs[:r1 - r0], ST, n, dist)
            for t in range(r1 - r0):
                for i in range(kk):
                    best[i] = np.inf
                row = dist[t]
                for j in range(n):  # kk smallest (distance, index): strict '<' keeps the older row first on ties
                    v = row[j] + offset
                    if v < best[kk - 1]:
                        i = kk - 1
                        while i > 0 and best[i - 1] > v:
                            best[i], near[i] = best[i - 1], near[i - 1]
                            i -= 1
                        best[i], near[i] = v, s_lab[j]
                lab = _vote(near, kk)
                count = 0
                for j in range(n):
                    count += s_lab[j] == lab
                label[r0 + t], support[r0 + t] = lab, count
    return label, support
