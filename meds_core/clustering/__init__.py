"""Batched clustering of many small memories behind one backend interface."""

from meds_core.clustering._backend import ClusteringBackend, backend_for
from meds_core.clustering._dispatch import cluster_batch
from meds_core.clustering._engine import hdbscan_batch, hdbscan_incremental, mst_edges
from meds_core.clustering._gpu import GPUFallbackWarning, cuda_status
from meds_core.clustering._registry import (
    available_backends,
    get_backend,
    register_backend,
    resolve_backend,
    unregister_backend,
)
from meds_core.clustering._rows import rows_packed
from meds_core.clustering._vote import knn_vote
from meds_core.clustering.params import HDBSCANParams

__all__ = [
    "ClusteringBackend",
    "backend_for",
    "hdbscan_incremental",
    "mst_edges",
    "GPUFallbackWarning",
    "HDBSCANParams",
    "available_backends",
    "cluster_batch",
    "cuda_status",
    "get_backend",
    "hdbscan_batch",
    "knn_vote",
    "register_backend",
    "resolve_backend",
    "rows_packed",
    "unregister_backend",
]
