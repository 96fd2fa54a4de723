"""hdbscan_batch(): exact HDBSCAN* on many small problems in one call (numba on CPU), and the ``numba`` backend.

numba is imported on first use only, so ``import meds_core`` never compiles or imports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from meds_core.clustering._registry import register_backend
from meds_core.clustering.params import HDBSCANParams


def _check_params(min_cluster_size, min_samples, cluster_selection_method, allow_single_cluster,
                  cluster_selection_epsilon) -> tuple[int, int, bool, bool, float]:
    """Validated (min_cluster_size, min_samples, leaf, allow_single_cluster, epsilon)."""
    p = HDBSCANParams(min_cluster_size, min_samples, cluster_selection_method, allow_single_cluster,
                      cluster_selection_epsilon)
    return p.min_cluster_size, p.min_samples, p.leaf, p.allow_single_cluster, p.cluster_selection_epsilon


def _pack(problems, offsets) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Packed groups (rows [N, d] float64 C-contiguous, offsets [P + 1] int64, problem numbers [P] int64), one per
    distinct d, from a list of [n_i, d] arrays or from packed input (one group)."""
    if offsets is not None:
        X = np.ascontiguousarray(problems, dtype=np.float64)
        return [(X, _check_offsets(X.shape, offsets), np.arange(len(offsets) - 1))]
    arrays = [np.asarray(x) for x in problems]
    for i, x in enumerate(arrays):
        if x.ndim != 2:
            raise ValueError(f"problem {i} has shape {x.shape}; each problem must be an array of shape (n_i, d).")
    groups = {}
    for i, x in enumerate(arrays):
        groups.setdefault(x.shape[1], []).append(i)
    out = []
    for members in groups.values():
        lengths = np.fromiter((len(arrays[i]) for i in members), dtype=np.int64, count=len(members))
        offsets = np.zeros(len(members) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        X = np.concatenate([arrays[i] for i in members], axis=0).astype(np.float64, copy=False)
        out.append((np.ascontiguousarray(X), offsets, np.asarray(members, dtype=np.int64)))
    return out


def _check_offsets(shape: tuple, offsets) -> np.ndarray:
    """offsets as int64 [P + 1], checked against packed rows of shape (N, d)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if len(shape) != 2:
        raise ValueError(f"packed problems must be an array of shape (N, d); got shape {tuple(shape)}.")
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != shape[0] \
            or (np.diff(offsets) < 0).any():
        raise ValueError(f"offsets must be non-decreasing, start at 0 and end at N={shape[0]}; got {offsets!r}.")
    return offsets


def _check_finite(X: np.ndarray, offsets: np.ndarray, members: np.ndarray) -> None:
    _raise_if_bad(~np.isfinite(X).all(axis=1), offsets, members)


def _raise_if_bad(bad: np.ndarray, offsets: np.ndarray, members: np.ndarray) -> None:
    """Raise naming the first problem and row flagged in bad [N] bool (rows with NaN/inf)."""
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        p = int(np.searchsorted(offsets, row, side="right") - 1)
        raise ValueError(f"problem {members[p]} row {row - offsets[p]} is not finite; drop or impute NaN/inf rows "
                         "first.")


def _balanced_order(offsets: np.ndarray, threads: int) -> np.ndarray:
    """Problem order for the parallel loop, which hands each of ``threads`` threads one contiguous block: problems
    sorted by cost (n^2) are dealt to the blocks in snake order (0, 1, .., T-1, T-1, .., 0, ...), so the blocks carry
    about equal work and each starts with its largest problems."""
    sizes = np.diff(offsets)
    ranked = np.argsort(-sizes, kind="stable")
    if threads <= 1 or len(ranked) <= threads:
        return ranked.astype(np.int64)
    lap, pos = np.divmod(np.arange(len(ranked)), threads)
    block = np.where(lap % 2 == 0, pos, threads - 1 - pos)
    return ranked[np.argsort(block, kind="stable")].astype(np.int64)


def _check_backend(backend: str) -> None:
    if backend not in ("auto", "numba"):
        raise ValueError(f"hdbscan_batch backend={backend!r}; use 'auto' or 'numba' (the CPU engine). For the GPU "
                         "engine or the library loops use meds_core.clustering.cluster_batch(..., backend='cuda') or "
                         "(..., backend='hdbscan').")


def hdbscan_batch(problems: Sequence[np.ndarray] | np.ndarray,
                  min_cluster_size: int = HDBSCANParams.min_cluster_size, min_samples: int | None = None,
                  cluster_selection_method: str = "eom",
                  allow_single_cluster: bool = False, cluster_selection_epsilon: float = 0.0,
                  backend: str = "auto", offsets: np.ndarray | None = None) -> list[np.ndarray]:
    """Exact HDBSCAN* (euclidean) on many small problems in one parallel call, with the hdbscan library's semantics.

    Parameters
    ----------
    problems : list of ndarray of shape (n_i, d), float; or ndarray of shape (N, d) with ``offsets``
        One dataset per problem; rows must be finite. Problems of different d are run as one call per d.
    min_cluster_size : int, >= 2
    min_samples : int >= 1 or None
        Neighbours besides the point itself: the core distance is the distance to the ``min_samples``-th nearest
        other row (hdbscan library meaning; scikit-learn's ``min_samples`` is this plus one). None means
        ``min_cluster_size``. Clipped to ``n_i - 1`` per problem, as the library does.
    cluster_selection_method : {"eom", "leaf"}
    allow_single_cluster : bool
    cluster_selection_epsilon : float, >= 0
    backend : {"auto", "numba"}
        ``auto`` is the numba CPU engine.
    offsets : ndarray of shape (P + 1,), int, optional
        With packed ``problems``: problem p is ``problems[offsets[p]:offsets[p + 1]]``.

    Returns
    -------
    list of ndarray of shape (n_i,), int64
        Labels per problem, clusters numbered 0, 1, ... in the library's order, noise -1. A problem with fewer than
        ``min_cluster_size`` rows (or a single row) is all noise, also with ``allow_single_cluster`` (where the
        library would call such a set one cluster).

    Notes
    -----
    Matrix-free: O(n_i * d) memory per problem. Deterministic, with fixed tie-breaking: Prim's algorithm starts at
    row 0 and, among equal keys, adds the lowest row index (the library's dense Prim's does the same, so the MST is
    edge-for-edge identical to ``hdbscan.HDBSCAN(algorithm='generic')``); merges of equal distance keep MST order
    (stable sort; the library's unstable sort may order such ties differently, which can change the partition when
    tied merges decide a split). Condensed tree, stabilities (including hdbscan's float32 sum in the excess-of-mass
    comparison), selection and labelling follow the library; zero distances (duplicate rows) give lambda = inf as
    there. Parallel over problems on numba's threads (``numba.set_num_threads`` / ``NUMBA_NUM_THREADS``), each thread
    taking an equal-work block. The first call in an environment compiles the kernels (about 20 s) and caches them
    on disk (``MEDS_NUMBA_CACHE=0`` disables the cache).
    """
    mcs, ms, leaf, single, eps = _check_params(min_cluster_size, min_samples, cluster_selection_method,
                                               allow_single_cluster, cluster_selection_epsilon)
    _check_backend(backend)
    import numba

    from meds_core.clustering._pipeline import hdbscan_packed

    threads = numba.get_num_threads()
    out: list[np.ndarray] = [np.empty(0, np.int64)] * (len(problems) if offsets is None else len(offsets) - 1)
    for X, offs, members in _pack(problems, offsets):
        _check_finite(X, offs, members)
        labels = hdbscan_packed(X, offs, _balanced_order(offs, threads), mcs, ms, leaf, single, eps)
        for i, lab in zip(members.tolist(), np.split(labels, offs[1:-1])):
            out[i] = lab
    return out


def mst_edges(problems: Sequence[np.ndarray], min_samples: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The engine's mutual-reachability MST of each problem (a testing hook): (src [n-1] int64, dst [n-1] int64,
    dist [n-1] float64) in Prim's joining order; empty for n < 2."""
    _check_params(2, min_samples, "eom", False, 0.0)
    import numba

    from meds_core.clustering._pipeline import mst_packed

    out: list = [None] * len(problems)
    for X, offsets, members in _pack(problems, None):
        _check_finite(X, offsets, members)
        edges = np.maximum(np.diff(offsets) - 1, 0)
        edge_offsets = np.zeros(len(edges) + 1, dtype=np.int64)
        np.cumsum(edges, out=edge_offsets[1:])
        order = _balanced_order(offsets, numba.get_num_threads())
        src, dst, dist = mst_packed(X, offsets, edge_offsets, order, int(min_samples))
        cuts = edge_offsets[1:-1]
        for i, e in zip(members.tolist(), zip(np.split(src, cuts), np.split(dst, cuts), np.split(dist, cuts))):
            out[i] = e
    return out


def _numba_factory():
    try:
        from meds_core.clustering import _pipeline  # noqa: F401  (imports numba and defines the kernels)
    except ImportError as exc:
        raise ImportError("clustering backend 'numba' needs the 'numba' package: pip install numba (or use "
                          "backend='hdbscan')") from exc

    def run(problems: Sequence[np.ndarray], params) -> list[np.ndarray]:
        return hdbscan_batch(problems, **params.kwargs())

    return run


register_backend("numba", _numba_factory)


def hdbscan_incremental(problems: Sequence[np.ndarray], n_old: Sequence[int], old_msts: Sequence, min_cluster_size: int,
                        min_samples: int = 1, cluster_selection_method: str = "eom", allow_single_cluster: bool = False,
                        cluster_selection_epsilon: float = 0.0, want_state: Sequence[bool] | None = None,
                        drop: Sequence[int] | None = None, offsets: np.ndarray | None = None,
                        starts: np.ndarray | None = None, check_finite: bool = True) -> tuple[list[np.ndarray], list]:
    """:func:`hdbscan_batch` for a stream step, in one parallel call: labels bit-identical to full recomputation, at
    a cost that follows the new rows where the incremental path applies.

    Parameters
    ----------
    problems : list of ndarray of shape (n_i, d), float64, finite; or ndarray of shape (N, d) with ``offsets``
        Each problem's rows: its ``n_old[i]`` previous rows less the first ``drop[i]`` (FIFO), unchanged and in the
        same order, then the new rows.
    n_old : sequence of int
        Rows problem i had when ``old_msts[i]`` was returned; -1 (or ``old_msts[i]`` None) forces full recomputation.
    old_msts : sequence of state or None
        The state this function returned for the previous rows with the same ``min_samples`` (never built from
        elsewhere). With ``min_samples == 1``: the unique MST as one array of shape (3, n-1), float64: rows u, v
        (row numbers, integral values) and weight_sq, columns sorted by squared weight (one array, so that a step
        gathers and hands back one block per problem). With ``min_samples > 1``: each row's ``min_samples`` nearest
        other rows, (K [min_samples, n] float64 squared distances ascending, J [min_samples, n] int32 their rows;
        inf / -1 where fewer other rows exist).
    min_cluster_size, min_samples, cluster_selection_method, allow_single_cluster, cluster_selection_epsilon
        As in :func:`hdbscan_batch`.
    drop : sequence of int, optional
        Previous rows dropped from the front (0 <= drop[i] <= n_old[i]); default none. Also read where n_old[i] is
        -1 (``min_samples == 1``): see Notes on drops too large for the reconnect.
    want_state : sequence of bool, optional
        Where False, a problem recomputed in full returns no state (saves the O(n^2 d) uniqueness check of
        ``min_samples == 1``). Default all True.
    offsets : ndarray of shape (P + 1,), int, optional
        With packed ``problems``: problem i is ``problems[offsets[i]:offsets[i + 1]]`` (no packing copy).
    starts : ndarray of shape (P,), int, optional
        With ``offsets``: problem i is ``problems[starts[i]:offsets[i + 1]]`` instead, ``offsets[i] <= starts[i]``;
        the rows before ``starts[i]`` are skipped (e.g. rows about to be dropped, kept in place by the caller).
    check_finite : bool
        False skips the NaN/inf check, for callers whose rows are finite by construction (``ErrorMemory``).

    Returns
    -------
    labels : list of ndarray of shape (n_i,), int64
    states : list of state or None
        The state to pass with the next step's rows; None where the problem was recomputed in full without it.

    Notes
    -----
    ``min_samples == 1`` (mutual reachability is then the euclidean distance): the MST itself is incremental where
    the problem's old MST is known. Full recomputation (the engine's Prim's) where ``old_msts[i]`` is None (e.g. a
    memory loaded from a file) or the new MST is not provably unique (bit-equal distances that could swap a tree
    edge, such as three or more copies of a row). After a full recomputation with ``want_state`` the MST is checked
    for uniqueness in O(n^2 d) (about as long as the full clustering itself) and kept when unique. A first clustering
    (``n_old = 0``, empty MST) is incremental. Cost per problem: O(n * m * d) for m new rows, plus O(outside * n * d)
    after a FIFO drop (outside: rows cut off from the largest remaining piece of the old tree), plus the O(n log n)
    tree stage. See :mod:`._incremental`. A drop is reconnected only where that is cheaper than Prim's, measured:
    n >= 192 + 16 * drop[i] rows after the step (:func:`._incremental.reconnect_pays`). Below it the problem is
    recomputed in full and returns no state, whatever ``want_state`` says (a memory at its cap stays there, so a
    rebuilt MST would only add the uniqueness check).

    ``min_samples > 1``: mutual-reachability weights tie wherever a core distance dominates, so the MST is not unique
    and Prim's own run decides the tree; only the core distances are incremental (each row's nearest rows kept,
    O(n * (m + r) * d) per step, r the rows that lost a listed neighbour to the drop), and Prim's (O(n^2 d)) and the
    tree stage run as in full recomputation, on the same core distances bit for bit. Without a state the lists are
    built from scratch, at about twice the core-distance cost of a full clustering. See :mod:`._incremental_core`.

    The GPU backend always recomputes in full.
    """
    mcs, ms, leaf, single, eps = _check_params(min_cluster_size, min_samples, cluster_selection_method,
                                               allow_single_cluster, cluster_selection_epsilon)
    import numba

    from meds_core.clustering import _incremental
    from meds_core.clustering._incremental import incremental_packed
    from meds_core.clustering._incremental_core import incremental_core_packed

    if starts is not None and offsets is None:
        raise ValueError("hdbscan_incremental: starts needs packed problems with offsets.")
    P = len(problems) if offsets is None else len(offsets) - 1
    labels: list[np.ndarray] = [np.empty(0, np.int64)] * P
    states: list = [None] * P
    if P == 0:
        return labels, states
    nold = np.asarray(n_old, dtype=np.int64).reshape(-1)
    if len(nold) != P or len(old_msts) != P:
        raise ValueError(f"hdbscan_incremental: {P} problems but {len(nold)} n_old and {len(old_msts)} old_msts.")
    nold = np.where(np.fromiter((s is None for s in old_msts), dtype=np.bool_, count=P) | (nold < 0), -1, nold)
    dropped = np.zeros(P, dtype=np.int64) if drop is None else np.asarray(drop, dtype=np.int64)
    want = np.ones(P, dtype=np.bool_) if want_state is None else np.asarray(want_state, dtype=np.bool_)
    if ms == 1:
        empty = np.empty((3, 0))
    else:
        empty = (np.empty((ms, 0)), np.empty((ms, 0), np.int32))
    old = [empty if k < 0 else s for k, s in zip(nold.tolist(), old_msts)]
    for X, offs, members in _pack(problems, offsets):
        if check_finite:
            _check_finite(X, offs, members)
        first = offs[:-1] if starts is None else np.asarray(starts, dtype=np.int64)
        if starts is not None and (len(first) != len(offs) - 1 or (first < offs[:-1]).any()
                                   or (first > offs[1:]).any()):
            raise ValueError("hdbscan_incremental: starts must satisfy offsets[i] <= starts[i] <= offsets[i + 1].")
        sizes = offs[1:] - first
        g_drop = dropped[members]
        grp_old = [old[i] for i in members.tolist()]
        g_nold = nold[members]
        if ms == 1:
            e_len = np.fromiter((s.shape[1] if s.ndim == 2 and s.shape[0] == 3 else -1 for s in grp_old),
                                dtype=np.int64, count=len(members))  # -1: not a state of this layout
            fits = e_len == np.maximum(g_nold - 1, 0)
        else:
            e_len = np.fromiter((s[0].shape[1] for s in grp_old), dtype=np.int64, count=len(members))
            fits = np.fromiter((s[0].shape[0] == ms and s[1].shape == s[0].shape for s in grp_old), dtype=np.bool_,
                               count=len(members)) & (e_len == np.maximum(g_nold, 0))
        if ((g_nold >= 0) & ((g_nold - g_drop > sizes) | (g_drop > g_nold) | (g_drop < 0) | ~fits)).any():
            raise ValueError("hdbscan_incremental: a stored state does not match its n_old rows; pass the state this "
                             "function returned for those rows, or None.")
        e_offs = np.zeros(len(members) + 1, dtype=np.int64)
        np.cumsum(e_len, out=e_offs[1:])
        bounds = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=bounds[1:])
        order = _balanced_order(bounds, numba.get_num_threads())
        if ms != 1:
            K_old = np.concatenate([s[0] for s in grp_old], axis=1).astype(np.float64, copy=False)
            J_old = np.concatenate([s[1] for s in grp_old], axis=1).astype(np.int32, copy=False)
            lab, K, J = incremental_core_packed(X, first, offs, g_nold, g_drop, K_old, J_old, e_offs, order, mcs, ms,
                                                leaf, single, eps)
            cuts, ends, kept = first.tolist(), offs[1:].tolist(), want[members].tolist()
            for j, i in enumerate(members.tolist()):
                a, b = cuts[j], ends[j]
                labels[i] = lab[a:b]
                if kept[j]:  # copies: a view would keep the whole step's arrays alive
                    states[i] = (K[:, a:b].copy(), J[:, a:b].copy())
            continue
        out_offs = np.zeros(len(members) + 1, dtype=np.int64)
        np.cumsum(np.maximum(sizes - 1, 0), out=out_offs[1:])
        g_want = want[members]
        full = ~_incremental.reconnect_pays(sizes, g_drop)  # a drop too large for the reconnect to pay
        if full.any():
            g_nold, g_want = np.where(full, -1, g_nold), g_want & ~full
        edges = np.ascontiguousarray(np.concatenate(grp_old, axis=1) if len(grp_old) > 1 else grp_old[0],
                                     dtype=np.float64)
        lab, out, ok = incremental_packed(X, first, offs, g_nold, g_drop, edges, e_offs, out_offs, order, mcs, ms,
                                          g_want, leaf, single, eps)
        cuts, ends, good = first.tolist(), offs[1:].tolist(), ok.tolist()
        o = out_offs.tolist()
        for j, i in enumerate(members.tolist()):
            labels[i] = lab[cuts[j]:ends[j]]
            if good[j]:  # a copy: a view would keep the whole step's edges alive while any one memory's state lives
                states[i] = out[:, o[j]:o[j + 1]].copy()
    return labels, states
