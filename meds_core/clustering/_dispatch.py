"""cluster_batch(): cluster many small problems with one backend call."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from meds_core.clustering import _engine, _gpu, _library  # noqa: F401  (register the numba, cuda, library backends)
from meds_core.clustering._registry import get_backend, resolve_backend
from meds_core.clustering.params import HDBSCANParams


def cluster_batch(problems: Sequence[np.ndarray], params: HDBSCANParams, backend: str = "auto") -> list[np.ndarray]:
    """Cluster every problem; the backend is called once, for the problems that can hold a cluster.

    Parameters
    ----------
    problems : list of ndarray of shape (n_i, d), float
        One dataset per memory; rows are clustered with euclidean distance. With the ``cuda`` backend they may be
        CUDA arrays or tensors, which then stay on the GPU.
    params : HDBSCANParams
    backend : str
        Registered backend name or ``'auto'`` (``'cuda'`` for problems on a usable GPU, see
        :func:`~meds_core.clustering.resolve_backend`).

    Returns
    -------
    list of ndarray of shape (n_i,), int64
        Cluster labels per problem, noise -1. Problems of fewer than ``params.min_rows`` rows are all noise.
    """
    labels: list[np.ndarray | None] = [None] * len(problems)
    todo = []
    for i, X in enumerate(problems):
        if len(X) < params.min_rows:
            labels[i] = np.full(len(X), -1, dtype=np.int64)
        else:
            todo.append(i)
    if todo:
        backend = resolve_backend(backend, problems)
        run = get_backend(backend)
        if backend == "cuda":  # takes device arrays as they are
            results = run([problems[i] for i in todo], params)
        else:
            results = run([np.ascontiguousarray(problems[i], dtype=np.float64) for i in todo], params)
        if len(results) != len(todo):
            raise RuntimeError(f"clustering backend {backend!r} returned {len(results)} label arrays for "
                               f"{len(todo)} problems")
        for i, lab in zip(todo, results):
            lab = np.asarray(lab, dtype=np.int64)
            if lab.shape != (len(problems[i]),):
                raise RuntimeError(f"clustering backend {backend!r} returned labels of shape {lab.shape} for a "
                                   f"problem of {len(problems[i])} rows")
            labels[i] = lab
    return labels  # type: ignore[return-value]
