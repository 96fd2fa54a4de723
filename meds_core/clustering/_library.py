"""Backends that loop over problems with a stock HDBSCAN library (the parity/oracle paths and the anchors).

``hdbscan``: the scikit-learn-contrib library with the reference's call (default algorithm), so labels
match the reference implementation exactly. ``sklearn``: ``sklearn.cluster.HDBSCAN``; scikit-learn counts
the point itself in ``min_samples``, so it is called with ``min_samples + 1`` to mean the same thing.
``fast_hdbscan``: the TutteInstitute numba library (float32, Boruvka), one call per problem. ``cuml``: RAPIDS cuML
on the GPU, one call per problem, see :data:`CUML_MIN_SAMPLES_OFFSET`. Every library is imported on first use of its
backend.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from meds_core.clustering._registry import register_backend

# cuML's core distance is the distance to the ``min_samples``-th nearest neighbour NOT counting the point itself, the
# hdbscan library's convention (cuML documents this since NVIDIA/cuml#8567; scikit-learn counts the point, hence its
# +1 above), so cuML gets our ``min_samples`` unchanged and its labels match the hdbscan library's.
CUML_MIN_SAMPLES_OFFSET = 0


def _require(module: str, install: str):
    """Import ``module`` or raise an ImportError that says how to install it (``install``: the pip argument)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"this clustering backend needs the '{module}' package: pip install {install}") from exc


def _kwargs(params, min_samples_offset: int = 0) -> dict:
    """The estimator keywords every library shares; ``min_samples_offset`` = 1 for libraries that count the point."""
    return {"min_cluster_size": params.min_cluster_size, "min_samples": params.min_samples + min_samples_offset,
            "cluster_selection_method": params.cluster_selection_method,
            "allow_single_cluster": params.allow_single_cluster,
            "cluster_selection_epsilon": params.cluster_selection_epsilon}


def _loop(fit: Callable[[np.ndarray, object], np.ndarray]):
    """A backend that calls ``fit(X, params) -> labels`` once per problem."""

    def run(problems: Sequence[np.ndarray], params) -> list[np.ndarray]:
        return [np.asarray(fit(X, params), dtype=np.int64) for X in problems]

    return run


def _hdbscan_factory():
    hdbscan = _require("hdbscan", "hdbscan")
    return _loop(lambda X, params: hdbscan.HDBSCAN(**_kwargs(params)).fit(X).labels_)


def _sklearn_factory():
    cluster = _require("sklearn.cluster", "scikit-learn")

    def fit(X, params):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return cluster.HDBSCAN(**_kwargs(params, 1), copy=True).fit(X).labels_

    return _loop(fit)


def _fast_hdbscan_factory():
    fast_hdbscan = _require("fast_hdbscan", "fast_hdbscan")
    return _loop(lambda X, params: fast_hdbscan.HDBSCAN(**_kwargs(params)).fit(X).labels_)


def _cuml_factory():
    cluster = _require("cuml.cluster", "'meds_core[cuml]' (RAPIDS cuML; needs an NVIDIA GPU and CUDA 13)")

    def fit(X, params):
        if len(X) <= params.min_cluster_size and not params.allow_single_cluster:
            # no split can leave two sides of min size (and cuML rejects min_cluster_size >= n_samples,
            # NVIDIA/cuml#6985)
            return np.full(len(X), -1, dtype=np.int64)
        model = cluster.HDBSCAN(**_kwargs(params, CUML_MIN_SAMPLES_OFFSET), output_type="numpy")
        return model.fit_predict(X.astype(np.float32))

    return _loop(fit)


register_backend("hdbscan", _hdbscan_factory)
register_backend("sklearn", _sklearn_factory)
register_backend("fast_hdbscan", _fast_hdbscan_factory)
register_backend("cuml", _cuml_factory)
