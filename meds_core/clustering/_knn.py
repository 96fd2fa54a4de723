"""knn_vote(): assign new rows to stored clusters by a k-nearest-neighbour vote, all memories at once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_CHUNK_ELEMS = 1 << 22  # distance entries per padded chunk (bounds temporary memory to ~32 MiB)
_SCALE = 1e9  # cosine distances are compared in units of 1e-9, rounded (features are float32: ~1e-7)


def _vote(labels: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Majority label per row, ties to the smallest label. labels/ok: [r, k] int64/bool -> [r] int64."""
    same = (labels[:, :, None] == labels[:, None, :]) & ok[:, None, :]
    votes = np.where(ok, same.sum(-1), -1).astype(np.int64)
    # Rank by (votes desc, label asc): labels are >= -1, so shift them into [0, 2**31) for the key.
    key = votes * (1 << 32) - (labels + 1)
    return np.take_along_axis(labels, key.argmax(-1)[:, None], axis=1)[:, 0]


def _scatter_index(lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(slot, position) of every row when lists of the given lengths are packed side by side. -> 2 x [sum] int64."""
    lengths = np.asarray(lengths, dtype=np.int64)
    slot = np.repeat(np.arange(len(lengths)), lengths)
    return slot, np.arange(len(slot)) - np.repeat(np.cumsum(lengths) - lengths, lengths)


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
    out: list[np.ndarray] = [np.empty(0, np.int64)] * len(stored)
    # Pad memories of similar size together: sort by stored size, chunk, batch-matmul each chunk.
    order = sorted(range(len(stored)), key=lambda i: (len(stored[i]), len(queries[i])))
    start = 0
    while start < len(order):
        n_max = len(stored[order[start]])
        stop = start
        m_max = 0
        while stop < len(order):
            i = order[stop]
            n_i, m_i = len(stored[i]), len(queries[i])
            if stop > start and (n_i * max(m_max, m_i) * (stop - start + 1) > _CHUNK_ELEMS or n_i > 2 * n_max):
                break
            n_max, m_max = max(n_max, n_i), max(m_max, m_i)
            stop += 1
        chunk = order[start:stop]
        start = stop
        c, d = len(chunk), stored[chunk[0]].shape[1]
        S = np.zeros((c, d, n_max))  # transposed so that the batched matmul runs on contiguous operands
        Q = np.zeros((c, m_max, d))
        lab = np.full((c, n_max), -1, dtype=np.int64)
        pad = np.full((c, n_max), np.inf)
        j, p = _scatter_index([len(stored[i]) for i in chunk])
        S[j, :, p] = np.concatenate([stored[i] for i in chunk])
        lab[j, p] = np.concatenate([stored_labels[i] for i in chunk])
        pad[j, p] = 0.0
        j, p = _scatter_index([len(queries[i]) for i in chunk])
        Q[j, p] = np.concatenate([queries[i] for i in chunk])
        # Rounded to 1e-9 so that equal distances computed along different BLAS paths (duplicate rows, other
        # padding) compare equal and fall to the index rule instead of to rounding noise.
        dist = 1.0 - np.matmul(Q, S)  # [c, m, n]
        dist *= _SCALE
        np.rint(dist, out=dist)
        dist += pad[:, None, :]
        dist = dist.reshape(c * m_max, n_max)
        kk = min(k, n_max)
        picked = np.empty((c * m_max, kk), dtype=np.int64)
        ok = np.empty((c * m_max, kk), dtype=bool)  # False where a memory has fewer than k stored rows
        rows = np.arange(c * m_max)
        for r in range(kk):  # argmin returns the first (lowest-index) minimum: ties go to the older row
            picked[:, r] = dist.argmin(1)
            ok[:, r] = dist[rows, picked[:, r]] < np.inf
            dist[rows, picked[:, r]] = np.inf
        owner = np.repeat(np.arange(c), m_max)
        voted = _vote(lab[owner[:, None], picked], ok).reshape(c, m_max)
        for j, i in enumerate(chunk):
            out[i] = voted[j, :len(queries[i])].copy()
    return out
