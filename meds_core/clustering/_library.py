"""Backends that loop over problems with a stock HDBSCAN library (the parity/oracle paths and the anchors).

``hdbscan``: the scikit-learn-contrib library with the reference's call (default algorithm), so labels
match the reference implementation exactly. ``sklearn``: ``sklearn.cluster.HDBSCAN``; scikit-learn counts
the point itself in ``min_samples``, so it is called with ``min_samples + 1`` to mean the same thing.
``fast_hdbscan``: the TutteInstitute numba library (float32, Boruvka), one call per problem. ``cuml``: RAPIDS cuML
on the GPU, one call per problem; recent cuML documents ``min_samples`` with the hdbscan library's meaning
(NVIDIA/cuml#8567), which is what it is given. Every library is imported on first use of its backend.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from meds_core.clustering._registry import register_backend


def _require(module: str, install: str):
    """Import ``module`` or raise an ImportError that says how to install it (``install``: the pip argument)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"this clustering backend needs the '{module}' package: pip install {install}") from exc


def _hdbscan_factory():
    hdbscan = _require("hdbscan", "hdbscan")

    def run(problems: Sequence[np.ndarray], params) -> list[np.ndarray]:
        out = []
        for X in problems:
            model = hdbscan.HDBSCAN(
                min_cluster_size=params.min_cluster_size,
                min_samples=params.min_samples,
                cluster_selection_method=params.cluster_selection_method,
                allow_single_cluster=params.allow_single_cluster,
                cluster_selection_epsilon=params.cluster_selection_epsilon,
            )
            out.append(model.fit(X).labels_.astype(np.int64))
        return out

    return run


def _sklearn_factory():
    cluster = _require("sklearn.cluster", "scikit-learn")

    def run(problems: Sequence[np.ndarray], params) -> list[np.ndarray]:
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            for X in problems:
                model = cluster.HDBSCAN(
                    min_cluster_size=params.min_cluster_size,
                    min_samples=params.min_samples + 1,
                    cluster_selection_method=params.cluster_selection_method,
                    allow_single_cluster=params.allow_single_cluster,
                    cluster_selection_epsilon=params.cluster_selection_epsilon,
                    copy=True,
                )
                out.append(model.fit(X).labels_.astype(np.int64))
        return out

    return run


def _fast_hdbscan_factory():
    fast_hdbscan = _require("fast_hdbscan", "fast_hdbscan")

    def run(problems: Sequence[np.ndarray], params) -> list[np.ndarray]:
        out = []
        for X in problems:
            model = fast_hdbscan.HDBSCAN(
                min_cluster_size=params.min_cluster_size,
                min_samples=params.min_samples,
                cluster_selection_method=params.cluster_selection_method,
                allow_single_cluster=params.allow_single_cluster,
                cluster_selection_epsilon=params.cluster_selection_epsilon,
            )
            out.append(model.fit(X).labels_.astype(np.int64))
        return out

    return run


def _cuml_factory():
    cluster = _require("cuml.cluster", "'meds_core[cuml]' (RAPIDS cuML; needs an NVIDIA GPU and CUDA 13)")

    def run(problems: Sequence[np.ndarray], params) -> list[np.ndarray]:
        out = []
        for X in problems:
            if len(X) <= params.min_cluster_size and not params.allow_single_cluster:
                out.append(np.full(len(X), -1, dtype=np.int64))  # no split can leave two sides of min size
                continue  # (and cuML rejects min_cluster_size >= n_samples, NVIDIA/cuml#6985)
            model = cluster.HDBSCAN(
                min_cluster_size=params.min_cluster_size,
                min_samples=params.min_samples,
                cluster_selection_method=params.cluster_selection_method,
                allow_single_cluster=params.allow_single_cluster,
                cluster_selection_epsilon=params.cluster_selection_epsilon,
                output_type="numpy",
            )
            out.append(np.asarray(model.fit_predict(X.astype(np.float32)), dtype=np.int64))
        return out

    return run


register_backend("hdbscan", _hdbscan_factory)
register_backend("sklearn", _sklearn_factory)
register_backend("fast_hdbscan", _fast_hdbscan_factory)
register_backend("cuml", _cuml_factory)
