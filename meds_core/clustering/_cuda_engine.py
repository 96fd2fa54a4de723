"""hdbscan_batch_cuda(): exact HDBSCAN* on many small problems on the GPU, the ``cuda`` backend and the GPU k-NN vote.

Stages: core distances and the mutual-reachability MST on the device (one launch each, one thread block per problem,
matrix-free, scratch in global memory), then the CPU engine's own tree stage (``tree_labels_packed``: single linkage,
condensed tree, selection, labels) on the host, on the MST edges. The device MST is edge-for-edge the CPU engine's
(same distances to the bit, same tie rule), so the labels are identical. Imports numba.cuda: import lazily.
Every step recomputes each touched memory in full: the incremental update (``hdbscan_incremental``, CPU) is not
ported to the GPU; ``ClusteringBackend.supports_incremental`` is False for ``cuda``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import cuda

from meds_core.clustering._cuda_core_distances import core_distances_kernel
from meds_core.clustering._cuda_jit import THREADS, kernel
from meds_core.clustering._cuda_mst import prim_kernel
from meds_core.clustering._cuda_vote import knn_vote_kernel
from meds_core.clustering._engine import _balanced_order, _check_offsets, _check_params, _pack, _raise_if_bad
from meds_core.clustering._gpu import GPUResultError


@kernel
def _copy_rows(src, dst, row0, bad):
    """dst[:, row0 + i] = float64(src[i, :]) (transposed) and bad[row0 + i] = 1 if that row is not finite. One thread
    per row."""
    i = cuda.grid(1)
    if i < src.shape[0]:
        flag = 0
        for k in range(src.shape[1]):
            v = float(src[i, k])
            dst[k, row0 + i] = v
            if not (v - v == 0.0):  # NaN or inf
                flag = 1
        bad[row0 + i] = flag


@kernel
def _cast_rows(src, dst):
    """dst[i, :] = float64(src[i, :]). One thread per row."""
    i = cuda.grid(1)
    if i < src.shape[0]:
        for k in range(src.shape[1]):
            dst[i, k] = float(src[i, k])


def _blocks(n: int, threads: int = THREADS * 2) -> tuple[int, int]:
    return max(1, -(-n // threads)), threads


def _is_device(x) -> bool:
    """On the GPU: a CUDA array interface (torch, CuPy, numba), or a numba device array (the simulator's too)."""
    return hasattr(x, "__cuda_array_interface__") or hasattr(x, "copy_to_host")


def _as_device(x):
    """A numba view of a device array or tensor (no copy)."""
    return x if hasattr(x, "copy_to_host") else cuda.as_cuda_array(x)


def _device_pack(arrays: list, starts: list[int], N: int, d: int, offsets: np.ndarray, members: np.ndarray):
    """Copy arrays (numpy or CUDA, [n_i, d]) to columns starts[i]: of one device array XT [d, N] f64, one launch each;
    raise naming the problem (``offsets``, ``members``: the problems' columns and numbers) and row of the first
    non-finite row."""
    X = cuda.device_array((d, N), dtype=np.float64)
    bad = cuda.device_array(max(N, 1), dtype=np.int8)
    for a, x in zip(starts, arrays):
        if len(x):
            src = _as_device(x) if _is_device(x) else cuda.to_device(np.ascontiguousarray(x))
            _copy_rows[_blocks(len(x))](src, X, a, bad)
    _raise_if_bad(bad.copy_to_host()[:N].astype(bool), offsets, members)
    return X


def _groups(problems, offsets):
    """(XT_dev [d, N] f64, offsets [P + 1] int64, problem numbers [P] int64) per distinct d, like the CPU engine's
    packing but transposed; rows already on the GPU are packed there (no host copy)."""
    if offsets is not None:
        if _is_device(problems):
            x = _as_device(problems)
            offs = _check_offsets(x.shape, offsets)
            members = np.arange(len(offs) - 1)  # already packed: one copy for all problems
            return [(_device_pack([x], [0], x.shape[0], x.shape[1], offs, members), offs, members)]
        X, offs, members = _pack(problems, offsets)[0]
        _raise_if_bad(~np.isfinite(X).all(axis=1), offs, members)
        return [(cuda.to_device(np.ascontiguousarray(X.T)), offs, members)]
    if not any(_is_device(x) for x in problems):
        out = []
        for X, offs, members in _pack(problems, None):
            _raise_if_bad(~np.isfinite(X).all(axis=1), offs, members)
            out.append((cuda.to_device(np.ascontiguousarray(X.T)), offs, members))
        return out
    shapes = [tuple(x.shape) for x in problems]
    for i, s in enumerate(shapes):
        if len(s) != 2:
            raise ValueError(f"problem {i} has shape {s}; each problem must be an array of shape (n_i, d).")
    by_d: dict[int, list[int]] = {}
    for i, s in enumerate(shapes):
        by_d.setdefault(s[1], []).append(i)
    out = []
    for d, idx in by_d.items():
        members = np.asarray(idx, dtype=np.int64)
        offs = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum([shapes[i][0] for i in idx], out=offs[1:])
        out.append((_device_pack([problems[i] for i in idx], offs[:-1].tolist(), int(offs[-1]), d, offs, members), offs,
                    members))
    return out


def _device_mst(XT, offsets: np.ndarray, min_samples: int, min_rows: int):
    """MST edges of every problem with n >= max(2, min_rows) -> (src, dst [E] int64, weight_sq [E] f64 on the host,
    edge_offsets [P + 1] int64)."""
    n = np.diff(offsets)
    P, N = len(n), int(offsets[-1])
    edges = np.where(n >= max(2, min_rows), n - 1, 0)
    edge_offsets = np.zeros(P + 1, dtype=np.int64)
    np.cumsum(edges, out=edge_offsets[1:])
    E = int(edge_offsets[-1])
    if E == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), edge_offsets
    order = cuda.to_device(np.argsort(-n, kind="stable").astype(np.int64))  # largest problems start first
    d_offsets = cuda.to_device(offsets)
    if min_samples == 1:  # the mutual reachability is the distance itself (see mst_one): no core-distance pass
        core = cuda.to_device(np.zeros(N))
    else:
        M = max(1, min(min_samples, int(n.max()) - 1))
        K, core = cuda.device_array((M, N)), cuda.device_array(N)
        core_distances_kernel[P, THREADS](XT, d_offsets, order, min_samples, min_rows, K, core)
    key, via, done = cuda.device_array(N), cuda.device_array(N, np.int64), cuda.device_array(N, np.int8)
    src, dst, w = cuda.device_array(E, np.int64), cuda.device_array(E, np.int64), cuda.device_array(E)
    prim_kernel[P, THREADS](XT, d_offsets, order, core, min_rows, cuda.to_device(edge_offsets), key, via, done,
                            src, dst, w)
    src, dst, w = src.copy_to_host(), dst.copy_to_host(), w.copy_to_host()
    check_prim_edges(src, dst, w, n, edges)
    return src, dst, w, edge_offsets


def check_prim_edges(src: np.ndarray, dst: np.ndarray, weight_sq: np.ndarray, n: np.ndarray,
                     edges: np.ndarray) -> None:
    """Raise :class:`GPUResultError` unless the packed edges are, for every problem, a spanning tree in Prim's joining
    order, before the host's tree stage (compiled without bounds checks) reads them.

    Parameters
    ----------
    src, dst : np.ndarray
        [E] int64, rows within their problem; problem p owns the next ``edges[p]`` edges.
    weight_sq : np.ndarray
        [E] float64, must be finite and >= 0.
    n, edges : np.ndarray
        [P] int64: rows per problem and its edge count (``n - 1`` or 0).

    What holds for Prim's output and is checked, in O(E): each problem's ``dst`` are its rows 1..n-1, each once (row 0
    starts the tree), and each ``src`` is row 0 or a row joined earlier; so the edges connect all n rows with n - 1
    edges and no cycle.
    """
    if not len(src):
        return
    p = np.repeat(np.arange(len(n)), edges)
    size = n[p]
    ok = (src >= 0) & (src < size) & (dst > 0) & (dst < size) & np.isfinite(weight_sq) & (weight_sq >= 0)
    if ok.all():
        base = np.zeros(len(n), dtype=np.int64)
        np.cumsum(n[:-1], out=base[1:])
        row = base[p] + dst  # packed row joined by each edge
        joined_at = np.full(int(n.sum()), -1, dtype=np.int64)
        joined_at[row] = np.arange(len(row))
        first = np.zeros(len(n), dtype=np.int64)
        np.cumsum(edges[:-1], out=first[1:])
        step = np.arange(len(row)) - first[p]  # the edge's position within its problem
        src_at = np.where(src == 0, -1, joined_at[base[p] + src] - first[p])
        ok = (joined_at[row] == np.arange(len(row))) & (src_at < step)  # dst joined once; src joined before dst
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise GPUResultError(f"the GPU's MST is not a tree: edge {bad} of problem {int(p[bad])} (n = {int(n[p[bad]])}) "
                             f"joins row {int(dst[bad])} through row {int(src[bad])} at squared weight "
                             f"{float(weight_sq[bad])!r}; the device result is discarded.")


def hdbscan_batch_cuda(problems, min_cluster_size: int = 5, min_samples: int | None = None,
                       cluster_selection_method: str = "eom", allow_single_cluster: bool = False,
                       cluster_selection_epsilon: float = 0.0, offsets: np.ndarray | None = None) -> list[np.ndarray]:
    """:func:`~meds_core.clustering.hdbscan_batch` on the GPU: same arguments (no ``backend``), same labels.

    ``problems`` may be numpy arrays or CUDA arrays/tensors (anything with ``__cuda_array_interface__``: torch,
    CuPy, numba), a list of them or one packed (N, d) array with ``offsets``; rows already on the GPU are packed and
    cast to float64 there, not copied to the host. Rows with NaN/inf raise ValueError as in the CPU engine. Raises
    numba-cuda's errors on a GPU failure (the ``cuda`` backend catches those and falls back to the CPU engine).
    """
    import numba

    from meds_core.clustering._pipeline import tree_labels_packed

    mcs, ms, leaf, single, eps = _check_params(min_cluster_size, min_samples, cluster_selection_method,
                                               allow_single_cluster, cluster_selection_epsilon)
    count = len(problems) if offsets is None else len(offsets) - 1
    out: list[np.ndarray] = [np.empty(0, np.int64)] * count
    for X, offs, members in _groups(problems, offsets):
        src, dst, w, edge_offsets = _device_mst(X, offs, ms, max(2, mcs))
        order = _balanced_order(offs, numba.get_num_threads())
        labels = tree_labels_packed(src, dst, w, offs, edge_offsets, order, mcs, leaf, single, eps)
        for i, lab in zip(members.tolist(), np.split(labels, offs[1:-1])):
            out[i] = lab
    return out


def mst_edges_cuda(problems: Sequence, min_samples: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The device MST of each problem, as :func:`~meds_core.clustering._engine.mst_edges` gives the CPU engine's:
    (src [n-1] int64, dst [n-1] int64, dist [n-1] float64) in Prim's joining order; empty for n < 2."""
    _check_params(2, min_samples, "eom", False, 0.0)
    out: list = [None] * len(problems)
    for X, offs, members in _groups(problems, None):
        src, dst, w, edge_offsets = _device_mst(X, offs, int(min_samples), 2)
        cuts = edge_offsets[1:-1]
        for i, e in zip(members.tolist(), zip(np.split(src, cuts), np.split(dst, cuts), np.split(np.sqrt(w), cuts))):
            out[i] = e
    return out


def knn_vote_packed_cuda(stored: Sequence[np.ndarray], stored_labels: Sequence[np.ndarray], queries, counts,
                         k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~meds_core.clustering._vote.knn_vote_packed` on the GPU (same arguments, rule and results): one thread
    per query row. ``queries`` may already be on the GPU."""
    m = np.asarray(counts, dtype=np.int64)
    if not len(stored) or not m.sum():
        return np.empty(int(m.sum()), np.int64), np.empty(int(m.sum()), np.int64)
    S = np.concatenate([np.asarray(s, dtype=np.float64) for s in stored])
    labels = np.concatenate(stored_labels).astype(np.int64, copy=False)
    s_off = np.zeros(len(stored) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in stored], out=s_off[1:])
    if _is_device(queries):
        Q = _as_device(queries)
    else:
        Q = cuda.to_device(np.ascontiguousarray(queries, dtype=np.float64))
    if Q.dtype != np.float64:
        Q64 = cuda.device_array(Q.shape, np.float64)
        _cast_rows[_blocks(Q.shape[0])](Q, Q64)
        Q = Q64
    Nq, kk = Q.shape[0], max(1, int(k))
    best, near = cuda.device_array((Nq, kk)), cuda.device_array((Nq, kk), np.int64)
    label, support = cuda.device_array(Nq, np.int64), cuda.device_array(Nq, np.int64)
    knn_vote_kernel[_blocks(Nq)](cuda.to_device(S), cuda.to_device(labels), cuda.to_device(s_off), Q,
                                cuda.to_device(np.repeat(np.arange(len(m)), m)), kk, best, near, label, support)
    return label.copy_to_host(), support.copy_to_host()
