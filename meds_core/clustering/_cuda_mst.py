"""Prim's mutual-reachability MST on the GPU: one thread block per problem, matrix-free.

Each step, every thread relaxes the keys of its (strided) rows not yet in the tree against the newest tree point,
with distances recomputed on the fly, and the block picks the next point by a block-wide arg-min in shared memory.
Keys, sources and the in-tree flags live in global scratch ([N] each), so n has no on-chip limit.

Tie rule, the CPU engine's (``_mst``): the first tree point is row 0; a key changes only on a strictly smaller
weight (its source stays the earlier tree point); the next point is the smallest (key, row index). With bit-equal
weights (see ``_cuda_jit``) this is a strict total order, so both engines emit the same edges in the same order.
"""

from __future__ import annotations

import math

from numba import cuda, float64, int64

from meds_core.clustering._cuda_jit import THREADS, kernel, sq_dist


@kernel
def prim_kernel(XT, offsets, order, core, min_rows, edge_offsets, key, via, done, src, dst, weight_sq):
    """MST edges of every packed problem with n >= max(2, min_rows): problem p writes its n - 1 edges at
    edge_offsets[p]: src, dst [E] int64 (rows within the problem; dst joins through src, in joining order),
    weight_sq [E] f64. Launch: one block of ``THREADS`` threads per problem;
    block b runs problem order[b].

    XT [d, N] f64 (points as columns), core [N] f64 squared core distances; key [N] f64, via [N] int64, done [N] int8
    scratch."""
    p = order[cuda.blockIdx.x]
    a, b = offsets[p], offsets[p + 1]
    n = b - a
    if n < min_rows or n < 2:
        return
    tid, T = cuda.threadIdx.x, cuda.blockDim.x
    # Two buffers for the arg-min, alternating by step: a step's result is read while the next step fills the other
    # buffer, so one barrier per step plus one per reduction level suffices.
    best_key = cuda.shared.array((2, THREADS), float64)
    best_row = cuda.shared.array((2, THREADS), int64)
    for j in range(tid, n, T):  # thread tid owns rows tid, tid + T, ...: only it reads or writes their entries
        key[a + j] = math.inf
        via[a + j] = 0
        done[a + j] = j == 0  # row 0 is the first tree point
    e0 = edge_offsets[p]
    cur = 0
    for it in range(n - 1):
        buf = it & 1
        cur_core = core[a + cur]
        bk, bi = math.inf, n
        for j in range(tid, n, T):
            if done[a + j] == 0:
                w = max(sq_dist(XT, a + cur, a + j), core[a + j], cur_core)
                if w < key[a + j]:
                    key[a + j] = w
                    via[a + j] = cur
                kj = key[a + j]
                if kj < bk or (kj == bk and j < bi):
                    bk, bi = kj, j
        best_key[buf, tid], best_row[buf, tid] = bk, bi
        cuda.syncthreads()
        s = T // 2
        while s > 0:
            if tid < s:
                ok, oi = best_key[buf, tid + s], best_row[buf, tid + s]
                if ok < best_key[buf, tid] or (ok == best_key[buf, tid] and oi < best_row[buf, tid]):
                    best_key[buf, tid], best_row[buf, tid] = ok, oi
            cuda.syncthreads()
            s //= 2
        cur = best_row[buf, 0]  # every thread: the point that joins now
        if cur % T == tid:  # its owner records the edge
            src[e0 + it], dst[e0 + it], weight_sq[e0 + it] = via[a + cur], cur, key[a + cur]
            done[a + cur] = 1
