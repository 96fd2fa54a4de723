"""Diversity of answer features: effective rank and top-1 eigen ratio (numpy only).

``effective_rank`` (Roy & Vetterli, 2007) and ``top1_eigen_ratio`` measure how spread the answer features of one
problem's samples are: a policy that collapses onto one way of answering has an effective rank near 1 and a top-1
eigen ratio near 1. ``effective_rank_dynamics`` follows the effective rank over training steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["ERDynamics", "effective_rank", "effective_rank_dynamics", "top1_eigen_ratio"]

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
