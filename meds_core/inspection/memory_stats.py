"""Statistics of an ErrorMemory: clusters, noise, repeated errors and cluster sizes per memory (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from meds_core.step.memory import ErrorMemory

__all__ = ["MemoryStats", "memory_stats"]

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
