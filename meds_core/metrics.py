"""Evaluation metrics: pass@k, diversity of answer features, statistics of an ErrorMemory (numpy only).

* ``pass_at_k`` is the unbiased estimator of Chen et al. (2021): with ``n`` samples of which ``c`` are correct,
  ``pass@k = 1 - C(n - c, k) / C(n, k)``, computed as a product of ratios, never as big binomials.
* ``effective_rank`` (Roy & Vetterli, 2007) and ``top1_eigen_ratio`` measure how spread the answer features
  of one problem's samples are: a policy that collapses onto one way of answering has an effective rank near
  1 and a top-1 eigen ratio near 1.
* ``memory_stats`` summarises what an :class:`~meds_core.ErrorMemory` stores (clusters, noise, repeated errors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from meds_core.memory import ErrorMemory

__all__ = [
    "ERDynamics",
    "MemoryStats",
    "default_ks",
    "effective_rank",
    "effective_rank_dynamics",
    "mean_at_n",
    "memory_stats",
    "pass_at_k",
    "top1_eigen_ratio",
]


# ---------------------------------------------------------------------------------------------------- pass@k
def _counts(n: Any, c: Any) -> tuple[np.ndarray, np.ndarray]:
    """n, c broadcast to int64 arrays of one shape, checked: n >= 1, 0 <= c <= n."""
    n_arr, c_arr = np.asarray(n), np.asarray(c)
    for name, a in (("n", n_arr), ("c", c_arr)):
        if a.size and not (np.issubdtype(a.dtype, np.integer) or (np.issubdtype(a.dtype, np.floating)
                                                                    and np.all(a == np.round(a)))):
            raise ValueError(f"{name} must hold whole numbers (sample counts), got {a.ravel()[:5].tolist()}.")
    n_arr, c_arr = np.broadcast_arrays(n_arr.astype(np.int64), c_arr.astype(np.int64))
    if (n_arr < 1).any():
        raise ValueError(f"n must be >= 1 samples per problem, got {n_arr[n_arr < 1][:5].tolist()}.")
    bad = (c_arr < 0) | (c_arr > n_arr)
    if bad.any():
        raise ValueError(f"c must satisfy 0 <= c <= n; got c={c_arr[bad][:5].tolist()} for "
                         f"n={n_arr[bad][:5].tolist()}.")
    return n_arr, c_arr


def pass_at_k(n: Any, c: Any, k: int) -> Any:
    """Unbiased pass@k estimator ``1 - C(n - c, k) / C(n, k)`` for every problem.

    Parameters
    ----------
    n : int or array-like of int
        Samples drawn per problem (>= k).
    c : int or array-like of int, broadcastable with ``n``
        Correct samples per problem (0 <= c <= n).
    k : int
        Budget (1 <= k <= min(n)).

    Returns
    -------
    float, or ndarray of the broadcast shape of (n, c), float64
        Probability that at least one of k samples drawn without replacement from the n is correct.

    Notes
    -----
    ``C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i)`` (Chen et al. 2021); the product is taken
    as ``-expm1(sum log1p(-k / i))`` per problem (one segmented sum over all problems, O(sum c)), so no
    binomial coefficient is formed and small values keep their relative precision. The result is 1 exactly
    when ``n - c < k`` and 0 exactly when ``c = 0``.
    """
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r} must be an integer >= 1.")
    k = int(k)
    n_arr, c_arr = _counts(n, c)
    if n_arr.size and (n_arr < k).any():
        raise ValueError(f"k={k} exceeds the samples of some problems (n={n_arr[n_arr < k][:5].tolist()}); pass@k "
                         "needs n >= k samples per problem: sample more or use a smaller k.")
    out = np.ones(n_arr.shape, dtype=np.float64)
    out[c_arr == 0] = 0.0
    part = (n_arr - c_arr >= k) & (c_arr > 0)  # else: 1 (every k-subset holds a correct sample) or 0 (none correct)
    if part.any():
        nn, cc = n_arr[part], c_arr[part]
        # one segment per problem: i = n - c + 1 .. n, all > k, so every log1p(-k / i) is finite
        starts = np.concatenate([[0], np.cumsum(cc)[:-1]])
        i = np.repeat(nn - cc - starts, cc) + np.arange(cc.sum()) + 1
        out[part] = -np.expm1(np.add.reduceat(np.log1p(-k / i.astype(np.float64)), starts))
    return float(out) if out.ndim == 0 else out


def mean_at_n(n: Any, c: Any) -> float:
    """Mean accuracy over all samples and problems ("avg@n"): mean of ``c / n``, i.e. the mean of pass@1.

    Parameters
    ----------
    n, c : int or array-like of int, broadcastable
        Samples and correct samples per problem.

    Returns
    -------
    float (NaN for zero problems)
    """
    n_arr, c_arr = _counts(n, c)
    return float(np.mean(c_arr / n_arr)) if n_arr.size else float("nan")


def default_ks(n: int) -> list[int]:
    """The budgets reported for n samples: 1, 2, 4, ... up to n, and n itself."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r} must be an integer >= 1.")
    ks = [1 << e for e in range(int(n).bit_length()) if 1 << e <= n]
    return ks if ks[-1] == n else ks + [int(n)]


# ---------------------------------------------------------------------------------------------------- diversity
def _matrix(X: Any, name: str = "X") -> np.ndarray:
    """X as a finite float64 2-D array [n_samples, n_features]."""
    if hasattr(X, "detach"):
        X = X.detach().cpu().float().numpy()
    a = np.asarray(X, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} has shape {a.shape}; pass a 2-D array of shape (n_samples, n_features).")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN/inf in rows {np.flatnonzero(~np.isfinite(a).all(1))[:5].tolist()}; "
                         "drop the rows without an answer first (e.g. X[np.isfinite(X).all(1)]).")
    return a


def effective_rank(X: Any) -> float:
    """Effective rank: ``exp(H(p))`` with ``p_i = s_i / sum(s)`` over the singular values ``s`` of ``X``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features), float
        One row per sample (e.g. the MEDS answer features of one problem's completions). Rows are used as
        they are: no centring, no normalisation.

    Returns
    -------
    float
        In ``[1, min(n_samples, n_features)]``; 0.0 for an all-zero or empty matrix. Terms with ``p_i = 0``
        contribute 0 to the entropy.
    """
    a = _matrix(X)
    if a.size == 0:
        return 0.0
    s = np.linalg.svd(a, compute_uv=False)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def top1_eigen_ratio(X: Any) -> float:
    """Largest eigenvalue over the sum of eigenvalues of the covariance of the centred rows of ``X``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features), float
        One row per sample; each column is centred before the covariance is formed.

    Returns
    -------
    float
        In ``[1 / min(n_samples - 1, n_features), 1]``; near 1 when the samples vary along one direction only.
        NaN when there is no variance (fewer than 2 samples, or all rows equal): the ratio is undefined then.
    """
    a = _matrix(X)
    if a.shape[0] < 2 or a.shape[1] == 0:
        return float("nan")
    centred = a - a.mean(axis=0)
    ev = np.linalg.svd(centred, compute_uv=False) ** 2  # covariance eigenvalues times (n - 1)
    total = ev.sum()
    # all rows equal up to rounding: the centred matrix is pure round-off
    if total <= (64 * np.finfo(np.float64).eps * float(np.abs(a).max())) ** 2 * a.size:
        return float("nan")
    return float(ev.max() / total)


class ERDynamics(NamedTuple):
    """Effective rank over training steps and its discrete first and second differences."""

    rank: np.ndarray  # [T] float64
    first: np.ndarray  # [T-1] float64: rank[t+1] - rank[t]
    second: np.ndarray  # [T-2] float64: first[t+1] - first[t]


def effective_rank_dynamics(series: Sequence[Any]) -> ERDynamics:
    """First and second differences of the effective rank over training steps.

    Parameters
    ----------
    series : sequence of length T
        Either effective ranks (numbers), one per step, or feature matrices ``(n_samples, n_features)``, one
        per step, whose :func:`effective_rank` is taken. Steps are assumed evenly spaced.

    Returns
    -------
    ERDynamics
        ``rank`` [T], ``first`` [T-1] (``np.diff(rank)``), ``second`` [T-2] (``np.diff(rank, 2)``), float64.
    """
    items = list(series)
    if items and all(np.ndim(x) == 0 for x in items):
        rank = np.asarray(items, dtype=np.float64)
    elif all(np.ndim(x) == 2 for x in items):
        rank = np.asarray([effective_rank(x) for x in items], dtype=np.float64)
    else:
        raise ValueError("series must be a sequence of numbers (effective ranks) or of 2-D feature matrices, "
                         f"got elements of ndim {sorted({int(np.ndim(x)) for x in items})}.")
    return ERDynamics(rank, np.diff(rank), np.diff(rank, 2))


# ---------------------------------------------------------------------------------------------------- memory
@dataclass
class MemoryStats:
    """What an ErrorMemory stores, per correctness group and in total (see :func:`memory_stats`).

    Per-memory arrays are aligned with ``keys`` (one entry per (prompt key, group) memory, creation order).
    """

    keys: list[tuple[Any, int]]  # (prompt key, group) of each memory
    rows: np.ndarray  # [M] int64 stored rows
    clusters: np.ndarray  # [M] int64 clusters (labels >= 0)
    noise: np.ndarray  # [M] int64 rows labelled -1
    repeated: np.ndarray  # [M] int64 rows whose cluster holds an earlier stored row: rows in clusters - clusters
    cluster_sizes: dict[int, np.ndarray] = field(default_factory=dict)  # group -> sizes of every cluster, int64

    def select(self, group: int | None) -> np.ndarray:
        """[M] bool: memories of correctness group ``group`` (0 wrong, 1 correct; None: all)."""
        g = np.asarray([grp for _, grp in self.keys], dtype=np.int64)
        return np.ones(len(g), bool) if group is None else g == group

    def total_rows(self, group: int | None = None) -> int:
        return int(self.rows[self.select(group)].sum())

    def num_memories(self, group: int | None = None) -> int:
        return int(self.select(group).sum())

    def clusters_per_memory(self, group: int | None = None) -> float:
        """Mean clusters per memory of the group (NaN without memories)."""
        m = self.select(group)
        return float(self.clusters[m].mean()) if m.any() else float("nan")

    def noise_share(self, group: int | None = None) -> float:
        """Stored rows labelled noise over stored rows (NaN without rows)."""
        m = self.select(group)
        rows = self.rows[m].sum()
        return float(self.noise[m].sum() / rows) if rows else float("nan")

    def repeated_error_rate(self) -> float:
        """Share of stored wrong rows that repeat an error: sum(repeated) / rows over wrong memories (NaN if none).

        A stored wrong row is a repeat when an earlier stored row of the same (prompt, wrong) memory carries
        the same cluster label (labels from the memory's latest clustering; noise rows are never repeats). Per
        memory that is ``rows in clusters - number of clusters``: every cluster's first row is a new error, each
        further row repeats it. Only rows still stored count (``max_rows_per_memory`` evicts the oldest).
        """
        m = self.select(0)
        rows = self.rows[m].sum()
        return float(self.repeated[m].sum() / rows) if rows else float("nan")


def memory_stats(memory: ErrorMemory) -> MemoryStats:
    """Clusters, noise, repeated errors and cluster sizes of every memory of an :class:`ErrorMemory`.

    Parameters
    ----------
    memory : ErrorMemory

    Returns
    -------
    MemoryStats
        ``cluster_sizes[g]`` holds the size of every cluster of every memory of group g (0 wrong, 1 correct),
        noise excluded.
    """
    keys = memory.keys()
    rows, clusters, noise, repeated = (np.zeros(len(keys), np.int64) for _ in range(4))
    sizes: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for i, (key, group) in enumerate(keys):
        labels = memory.labels(key, group)
        counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
        counts = counts[counts > 0]
        rows[i], clusters[i], noise[i] = len(labels), len(counts), int((labels < 0).sum())
        repeated[i] = int(counts.sum() - len(counts))
        sizes.setdefault(int(group), []).append(counts.astype(np.int64))
    cluster_sizes = {g: np.concatenate(v) if v else np.zeros(0, np.int64) for g, v in sizes.items()}
    return MemoryStats(keys, rows, clusters, noise, repeated, cluster_sizes)
