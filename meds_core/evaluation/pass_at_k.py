"""pass@k and mean@n over sampled answers (numpy only).

``pass_at_k`` is the unbiased estimator of Chen et al. (2021): with ``n`` samples of which ``c`` are correct,
``pass@k = 1 - C(n - c, k) / C(n, k)``, computed as a product of ratios, never as big binomials.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["default_ks", "mean_at_n", "pass_at_k"]

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
