"""Backends that loop over problems with a stock HDBSCAN library (the parity/oracle paths).

``hdbscan``: the scikit-learn-contrib library with the reference's call (default algorithm), so labels
match the reference implementation exactly. ``sklearn``: ``sklearn.cluster.HDBSCAN``; scikit-learn counts
the point itself in ``min_samples``, so it is called with ``min_samples + 1`` to mean the same thing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from meds_core.clustering._registry import register_backend


def _require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only where the library is missing
        raise ImportError(f"clustering backend needs the '{module}' package: pip install 'meds_core[{extra}]' "
                          f"or pip install {module}") from exc


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
    cluster = _require("sklearn.cluster", "dev")

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


register_backend("hdbscan", _hdbscan_factory)
register_backend("sklearn", _sklearn_factory)
