"""knn_vote(): assign new rows to stored clusters by a k-nearest-neighbour vote, all memories at once.

Memories are sorted by (query rows, stored rows) and cut into chunks of similar shape. Each chunk is copied into
padded scratch buffers that are reused from chunk to chunk; one batched matmul gives -1e9 x the cosine similarities,
one addition turns them into distances rounded to integers (units of 1e-9), and k argmin passes pick the neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_CHUNK_BYTES = 1 << 21  # padded stored rows + queries + distances per chunk (~L2-sized scratch)
_MAX_PAD = 1.25  # a chunk pads its stored rows to at most 1.25x those of its smallest memory
_SCALE = 1e9  # cosine distances are compared in units of 1e-9, rounded (features are float32: ~1e-7)
_ROUND = 1.5 * 2.0**52  # x + _ROUND is x rounded half-to-even to an integer, plus _ROUND (for |x| < 2**51)


def _vote(labels: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Majority label per row, ties to the smallest label. labels/ok: [r, k] int64/bool -> [r] int64."""
    votes = np.zeros(labels.shape, dtype=np.int64)
    for b in range(labels.shape[1]):
        votes += (labels == labels[:, b:b + 1]) & ok[:, b:b + 1]
    # Rank by (votes desc, label asc): labels lie in [-1, 2**31), so votes * 2**32 - label orders both.
    key = np.where(ok, votes << 32, -1 << 62) - labels
    return labels[np.arange(len(labels)), key.argmax(1)]


def _scatter_index(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slot, position) of every row when lists of the given lengths are packed side by side. -> 2 x [sum] int64."""
    slot = np.repeat(np.arange(len(lengths)), lengths)
    return slot, np.arange(len(slot)) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _chunk_starts(n: np.ndarray, m: np.ndarray, d: int) -> np.ndarray:
    """Split memories sorted by (m, n) into runs padded to (max m, max n) that fit the chunk budget.

    A run holds one m and stored sizes within a factor _MAX_PAD. n, m: [c] int64 stored / query rows per
    memory, in run order. -> [runs] int64 first memory of every run (one memory over budget runs alone).
    """
    bucket = np.floor(np.log(n) / np.log(_MAX_PAD)).astype(np.int64)
    first = np.flatnonzero(np.diff(m, prepend=-1) | np.diff(bucket, prepend=-1))
    size = np.diff(np.append(first, len(n)))
    n_max, m_g = np.maximum.reduceat(n, first), m[first]
    per_run = np.maximum(_CHUNK_BYTES // (8 * (n_max * (d + m_g) + m_g * d)), 1)
    pos = np.arange(len(n)) - np.repeat(first, size)
    return np.flatnonzero(pos % np.repeat(per_run, size) == 0)


def knn_vote_packed(stored: Sequence[np.ndarray], stored_labels: Sequence[np.ndarray], queries: np.ndarray,
                    counts: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """:func:`knn_vote` with the queries packed, plus the support of each vote: the hot path of
    :meth:`ErrorMemory.update`.

    Parameters
    ----------
    stored : list of c ndarray of shape (n_i, d), float64, L2-normalised, ``n_i >= 1``
    stored_labels : list of c ndarray of shape (n_i,), int64 (>= -1)
    queries : ndarray of shape (sum m_i, d), float64, L2-normalised
        Query rows of all memories, concatenated in memory order.
    counts : ndarray of shape (c,), int64
        ``m_i``, query rows per memory.
    k : int

    Returns
    -------
    label, support : ndarray of shape (sum m_i,), int64
        Voted label of every query row, and how many stored rows of its memory carry that label.
    """
    n = np.fromiter(map(len, stored), dtype=np.int64, count=len(stored))
    m = np.asarray(counts, dtype=np.int64)
    order = np.lexsort((n, m))
    order = order[m[order] > 0]
    label, support = np.empty(len(queries), dtype=np.int64), np.empty(len(queries), dtype=np.int64)
    if not len(order):
        return label, support
    d = queries.shape[1]
    starts = _chunk_starts(n[order], m[order], d)
    c = np.diff(np.append(starts, len(order)))
    n_max, m_max = np.maximum.reduceat(n[order], starts), np.maximum.reduceat(m[order], starts)
    # Every memory's queries padded to its chunk's m_max, chunk after chunk: one scatter for all chunks.
    m_pad = np.repeat(m_max, c)
    pad_off = np.cumsum(m_pad) - m_pad
    j, p = _scatter_index(m[order])
    dest = pad_off[j] + p  # padded row of every query, in chunk order
    src = np.repeat((np.cumsum(m) - m)[order], m[order]) + p  # its row in ``queries``
    Q = np.zeros((int(m_pad.sum()), d))
    Q[dest] = queries[src] * -_SCALE
    jobs = zip(starts.tolist(), (starts + c).tolist(), n_max.tolist(), m_max.tolist(), pad_off[starts].tolist())
    padded_label, padded_support = _run_chunks(list(jobs), stored, stored_labels, order.tolist(), n[order], Q, k)
    label[src], support[src] = padded_label[dest], padded_support[dest]
    return label, support


def _run_chunks(jobs: list[tuple[int, int, int, int, int]], stored: Sequence[np.ndarray],
                stored_labels: Sequence[np.ndarray], order: list[int], sizes: np.ndarray, Q: np.ndarray, k: int) \
        -> tuple[np.ndarray, np.ndarray]:
    """Vote and support of every padded query row, for every chunk ``(a, b, n_max, m_max, first padded query
    row)`` of the memories ``order[a:b]``, one chunk after the other on one set of scratch buffers.

    sizes: [c] int64 stored rows of the memories in ``order``; Q: [rows, d] float64 padded query rows times -1e9.
    -> label, support [rows] int64.
    """
    d = Q.shape[1]
    near = np.zeros((len(Q), min(k, max(nm for _, _, nm, _, _ in jobs))), dtype=np.int64)  # neighbours' labels
    ok = np.zeros(near.shape, dtype=bool)
    hists, bins, sparse = [], np.empty(len(Q), dtype=np.int64), []  # label histograms, a row's bin of label 0
    s_buf = np.zeros(max((b - a) * nm for a, b, nm, _, _ in jobs) * d)  # padding only ever holds finite values
    l_buf = np.zeros(max((b - a) * nm for a, b, nm, _, _ in jobs), dtype=np.int64)  # and labels >= -1
    d_buf = np.empty(max((b - a) * mm * nm for a, b, nm, mm, _ in jobs))
    offset = 0
    for a, b, nm, mm, r0 in jobs:
        S, lab = s_buf[:(b - a) * nm * d].reshape(b - a, nm, d), l_buf[:(b - a) * nm].reshape(b - a, nm)
        n = sizes[a:b]
        _gather(stored, stored_labels, order[a:b], n, S, lab)
        dist = d_buf[:(b - a) * mm * nm].reshape(b - a, mm, nm)
        picked, ok_chunk = _nearest(Q[r0:r0 + (b - a) * mm].reshape(b - a, mm, d), S, n, dist, k)
        r1, owner = r0 + len(picked), np.repeat(np.arange(b - a), mm)
        near[r0:r1, :picked.shape[1]] = lab.ravel()[(owner * nm)[:, None] + picked]
        ok[r0:r1, :picked.shape[1]] = ok_chunk
        hist, lo, values = _histogram(lab, n)
        bins[r0:r1] = offset + owner * hist.shape[1] - lo
        offset += hist.size
        hists.append(hist.ravel())
        if values is not None:
            sparse.append((r0, r1, values))
    label = _vote(near, ok)
    code = label.copy()
    for r0, r1, values in sparse:
        code[r0:r1] = np.searchsorted(values, label[r0:r1])
    return label, np.concatenate(hists)[bins + code]


def _histogram(lab: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, int, np.ndarray | None]:
    """Stored rows per label of each memory.

    lab: [c, n_max] int64 labels (>= -1), past ``n[j]`` padding; n: [c] int64. -> (counts [c, w] int64, lo, values):
    counts[j, label - lo], or for sparse label ids (values: sorted distinct labels) counts[j, rank of label].
    """
    c, n_max = lab.shape
    lo, values = int(lab.min()), None
    width = int(lab.max()) - lo + 1
    if width > 2 * n_max:  # sparse label ids: count their ranks instead
        values, lab = np.unique(lab, return_inverse=True)
        lo, width = 0, len(values)
    key = lab.reshape(c, n_max) + (np.arange(c) * width - lo)[:, None]
    if n.min() < n_max:
        key = np.where(np.arange(n_max) < n[:, None], key, c * width)  # padding goes to a spare bin
    return np.bincount(key.ravel(), minlength=c * width + 1)[:c * width].reshape(c, width), lo, values


def _gather(stored: Sequence[np.ndarray], stored_labels: Sequence[np.ndarray], chunk: list[int], n: np.ndarray,
            S: np.ndarray, lab: np.ndarray) -> None:
    """Copy the memories ``chunk`` (n: [c] int64 stored rows each) into S [c, n_max, d] float64 and lab [c, n_max]
    int64, padded at the end of each memory (padding keeps whatever it held)."""
    if n.min() == S.shape[1]:  # no padding: one copy each
        np.concatenate([stored[i] for i in chunk], out=S.reshape(-1, S.shape[2]))
        np.concatenate([stored_labels[i] for i in chunk], out=lab.reshape(-1))
    else:
        for j, (i, n_j) in enumerate(zip(chunk, n.tolist())):
            S[j, :n_j], lab[j, :n_j] = stored[i], stored_labels[i]


def _nearest(Q: np.ndarray, S: np.ndarray, n: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest stored rows of every padded query row, ranked by (distance rounded to 1e-9, index).

    Q: [c, m, d] float64 query rows times -1e9; S: [c, n_max, d] float64, rows past ``n[j]`` are padding;
    n: [c] int64; dist: [c, m, n_max] float64 scratch. -> picked [c*m, min(k, n_max)] int64 stored index, and
    ok, same shape, bool: False where the memory has fewer stored rows.
    """
    c, m_max, n_max = dist.shape
    np.matmul(Q, S.transpose(0, 2, 1), out=dist)  # -1e9 x cosine similarity
    for j in np.flatnonzero(n < n_max).tolist():
        dist[j, :, n[j]:] = np.inf
    # Distance in units of 1e-9, rounded half-to-even by the addition itself (offset by _ROUND). Rounded so that
    # equal distances computed along different BLAS paths (duplicate rows, other padding) compare equal and fall
    # to the index rule instead of to rounding noise.
    dist += _SCALE + _ROUND
    dist = dist.reshape(c * m_max, n_max)
    rows = np.arange(c * m_max)
    picked = np.empty((c * m_max, min(k, n_max)), dtype=np.int64)
    for r in range(picked.shape[1]):
        picked[:, r] = col = dist.argmin(1)  # the first (lowest-index) minimum: ties go to the older row
        dist[rows, col] = np.inf
    # Real rows are finite, so they all go before any padding: the r-th pick is real iff r < n.
    return picked, np.arange(picked.shape[1]) < np.repeat(n, m_max)[:, None]


def knn_vote(stored: Sequence[np.ndarray], stored_labels: Sequence[np.ndarray], queries: Sequence[np.ndarray],
             k: int = 3) -> list[np.ndarray]:
    """Label each query row by the vote of its k nearest stored rows (cosine distance).

    Neighbours are ranked by (distance rounded to 1e-9, stored index), so equal distances go to the older
    row; the vote takes the most frequent label, ties to the smallest label; ``k`` is ``min(k, n_stored)``.

    Parameters
    ----------
    stored : list of ndarray of shape (n_i, d), float64
        Stored rows of each memory, already L2-normalised (cosine distance = 1 - dot). ``n_i >= 1``.
    stored_labels : list of ndarray of shape (n_i,), int64
    queries : list of ndarray of shape (m_i, d), float64
        New rows of each memory, L2-normalised.
    k : int

    Returns
    -------
    list of ndarray of shape (m_i,), int64
    """
    counts = np.fromiter(map(len, queries), dtype=np.int64, count=len(queries))
    if not counts.sum():
        return [np.empty(0, np.int64) for _ in queries]
    voted, _ = knn_vote_packed(stored, stored_labels, np.concatenate(queries).astype(np.float64, copy=False), counts,
                               k)
    return np.split(voted, np.cumsum(counts)[:-1])


def knn_vote_packed_numba(stored: Sequence[np.ndarray], stored_labels: Sequence[np.ndarray], queries: np.ndarray,
                          counts: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """:func:`knn_vote_packed` as one parallel numba kernel (same arguments, same rule and rounding, same results):
    the stored rows are packed once, then :func:`knn_vote_rows_numba`."""
    n = np.fromiter(map(len, stored), dtype=np.int64, count=len(stored))
    if not len(stored):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rows = np.concatenate([np.asarray(s, dtype=np.float64) for s in stored])
    labels = np.concatenate(stored_labels).astype(np.int64, copy=False)
    return knn_vote_rows_numba(rows, np.cumsum(n) - n, n, labels, queries, counts, k)


def knn_vote_rows_numba(rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray, labels: np.ndarray,
                        queries: np.ndarray, counts: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The numba vote on stored rows given in place, inside one array (no packing copy, no list of arrays).

    Parameters
    ----------
    rows : ndarray of shape (R, d), float64, L2-normalised
        Memory i's stored rows are rows[starts[i]:starts[i] + lengths[i]].
    starts, lengths : ndarray of shape (c,), int64
    labels : ndarray of shape (sum lengths,), int64
        The stored rows' labels, memory after memory.
    queries, counts, k
        As in :func:`knn_vote_packed`.

    Returns
    -------
    label, support : ndarray of shape (sum counts,), int64
    """
    from meds_core.clustering._vote_kernel import knn_vote_kernel

    m = np.asarray(counts, dtype=np.int64)
    q_off = np.zeros(len(m) + 1, dtype=np.int64)
    np.cumsum(m, out=q_off[1:])
    Q = np.ascontiguousarray(queries, dtype=np.float64)
    return knn_vote_kernel(np.ascontiguousarray(rows, dtype=np.float64), np.asarray(starts, dtype=np.int64),
                           np.asarray(lengths, dtype=np.int64), np.asarray(labels, dtype=np.int64), Q, q_off, int(k))


def knn_vote_packed_for(backend: str):
    """The packed vote that goes with a (resolved) clustering backend: the GPU vote for ``cuda`` (falling back to the
    numba vote on a GPU failure), the numba vote for ``numba``, else the numpy one. Same rule, same results."""
    if backend == "cuda":
        from meds_core.clustering._cuda_engine import knn_vote_packed_cuda
        from meds_core.clustering._gpu import run_with_fallback

        def vote(*args):
            return run_with_fallback("k-NN vote", lambda: knn_vote_packed_cuda(*args),
                                     lambda: knn_vote_packed_numba(*args))

        return vote
    return knn_vote_packed_numba if backend == "numba" else knn_vote_packed
