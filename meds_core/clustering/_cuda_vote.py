"""The batched k-NN vote on the GPU, one thread per query row: the rule and rounding of the numba vote
(``_vote_kernel``), so the same labels and supports.

Rule: stored rows ranked by (cosine distance rounded to 1e-9, stored index), the distance being
``fl(sum_k (-1e9 * q_k) * s_k) + (1e9 + 1.5 * 2**52)`` summed in feature order with separately rounded products and
sums (see ``_cuda_jit``); k = min(k, n); the vote is the most frequent label among the k, ties to the smallest;
support = stored rows of the memory carrying the voted label.
"""

from __future__ import annotations

import math

from numba import cuda

from meds_core.clustering._cuda_jit import add, kernel, mul

_SCALE = 1e9
_OFFSET = _SCALE + 1.5 * 2.0**52


@kernel
def knn_vote_kernel(S, s_lab, s_off, Q, q_mem, k, best, near, label, support):
    """S [Ns, d] f64 stored unit rows of all memories, s_lab [Ns] int64, memory p's at s_off[p]:s_off[p + 1];
    Q [Nq, d] f64 unit query rows, q_mem [Nq] int64 memory of each query; best [Nq, k] f64 / near [Nq, k] int64
    scratch -> label, support [Nq] int64 (-1 / 0 for a memory without stored rows). One thread per query row."""
    r = cuda.grid(1)
    if r >= Q.shape[0]:
        return
    p = q_mem[r]
    sa = s_off[p]
    n = s_off[p + 1] - sa
    if n == 0:
        label[r], support[r] = -1, 0
        return
    kk = min(k, n)
    for i in range(kk):
        best[r, i] = math.inf
    for j in range(n):
        acc = 0.0
        for f in range(Q.shape[1]):
            acc = add(acc, mul(mul(Q[r, f], -_SCALE), S[sa + j, f]))
        v = add(acc, _OFFSET)
        if v < best[r, kk - 1]:  # strict: the older row stays first on ties
            i = kk - 1
            while i > 0 and best[r, i - 1] > v:
                best[r, i], near[r, i] = best[r, i - 1], near[r, i - 1]
                i -= 1
            best[r, i], near[r, i] = v, s_lab[sa + j]
    lab, lab_votes = near[r, 0], 0
    for x in range(kk):
        votes = 0
        for y in range(kk):
            votes += near[r, y] == near[r, x]
        if votes > lab_votes or (votes == lab_votes and near[r, x] < lab):
            lab, lab_votes = near[r, x], votes
    count = 0
    for j in range(n):
        count += s_lab[sa + j] == lab
    label[r], support[r] = lab, count
