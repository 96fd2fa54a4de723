"""ClusteringBackend: everything one step asks of a clustering backend (clustering, k-NN vote, incremental update)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from meds_core.clustering._dispatch import cluster_batch
from meds_core.clustering._registry import get_backend, resolve_backend
from meds_core.clustering._vote import knn_vote_packed_for
from meds_core.clustering.params import HDBSCANParams


class ClusteringBackend:
    """One resolved clustering backend, as :class:`~meds_core.ErrorMemory` uses it every step.

    Parameters
    ----------
    name : str
        A registered backend name or ``'auto'``.
    data : array, tensor or list of them, optional
        The step's features, for ``'auto'`` (``'cuda'`` when they live on a usable GPU).
    load : bool
        Import the backend's library now (default), so that a missing one fails here.

    Attributes
    ----------
    name : str
        The resolved backend name.

    Notes
    -----
    The vote is the numba kernel for ``numba``, the GPU kernel for ``cuda`` (numba on a GPU failure) and numpy for
    every other backend: same rule, same results. The incremental update exists for ``numba`` with
    ``min_samples = 1`` only; the GPU and library backends recompute every memory in full.
    """

    def __init__(self, name: str, data=None, load: bool = True):
        self.name = resolve_backend(name, data)
        if load:
            get_backend(self.name)
        self._vote = knn_vote_packed_for(self.name)

    def cluster(self, problems: Sequence[np.ndarray], params: HDBSCANParams) -> list[np.ndarray]:
        """Labels of every problem in one backend call: :func:`~meds_core.clustering.cluster_batch`.

        Parameters
        ----------
        problems : list of ndarray of shape (n_i, d), float
        params : HDBSCANParams

        Returns
        -------
        list of ndarray of shape (n_i,), int64
        """
        return cluster_batch(problems, params, self.name)

    def vote(self, stored: Sequence[np.ndarray], stored_labels: Sequence[np.ndarray], queries: np.ndarray,
             counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k-NN vote of the new rows over each memory's stored rows, and the voted cluster's size.

        Parameters
        ----------
        stored : list of c ndarray of shape (n_i, d), float64, L2-normalised, n_i >= 1
        stored_labels : list of c ndarray of shape (n_i,), int64
        queries : ndarray of shape (sum m_i, d), float64, L2-normalised, memory after memory
        counts : ndarray of shape (c,), int64
            Query rows per memory.
        k : int

        Returns
        -------
        label, support : ndarray of shape (sum m_i,), int64
        """
        return self._vote(stored, stored_labels, queries, counts, k)

    def vote_rows(self, rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray, labels: np.ndarray,
                  queries: np.ndarray, counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`vote` with the stored rows given in place: memory i's are rows[starts[i]:starts[i] + lengths[i]]
        (rows [R, d] float64, L2-normalised; starts, lengths [c] int64, lengths >= 1), their labels packed memory
        after memory (labels [sum lengths] int64). Same results as :meth:`vote`; the numba kernel reads the rows
        where they are."""
        if self.name == "numba":
            from meds_core.clustering._vote import knn_vote_rows_numba

            return knn_vote_rows_numba(rows, starts, lengths, labels, queries, counts, k)
        cuts = np.cumsum(lengths)[:-1].tolist()
        return self._vote([rows[a:a + n] for a, n in zip(starts.tolist(), lengths.tolist())], np.split(labels, cuts),
                          queries, counts, k)

    def supports_incremental(self, params: HDBSCANParams) -> bool:
        """True where :meth:`cluster_incremental` applies: the numba engine."""
        return self.name == "numba"

    def cluster_incremental(self, problems: Sequence[np.ndarray], n_old: Sequence[int], old_msts: Sequence,
                            params: HDBSCANParams, drop: Sequence[int], want_state: Sequence[bool],
                            offsets: np.ndarray | None = None,
                            starts: np.ndarray | None = None) -> tuple[list[np.ndarray], list]:
        """:func:`~meds_core.clustering.hdbscan_incremental` (labels equal to :meth:`cluster`, and each problem's
        state for the next step); only where :meth:`supports_incremental`. With ``offsets``, ``problems`` is packed
        (rows [N, d] float64, problem i = rows offsets[i]:offsets[i + 1], or starts[i]:offsets[i + 1] with
        ``starts``) and trusted to be finite."""
        if not self.supports_incremental(params):
            raise ValueError(f"backend {self.name!r} has no incremental path; use cluster().")
        from meds_core.clustering._engine import hdbscan_incremental

        labels, states = hdbscan_incremental(problems, n_old, old_msts, drop=drop, want_state=want_state,
                                             offsets=offsets, starts=starts, check_finite=offsets is None,
                                             **params.kwargs())
        for i, lab in enumerate(labels):  # as cluster(): fewer than min_rows rows are all noise (min_samples > 1)
            if len(lab) < params.min_rows:
                labels[i] = np.full(len(lab), -1, dtype=np.int64)
        return labels, states

    @staticmethod
    def can_cluster(n: int, params: HDBSCANParams) -> bool:
        """False where ``n`` rows cannot hold a cluster (all noise, no backend work)."""
        return n >= params.min_rows


def backend_for(name: str, data=None, load: bool = True) -> ClusteringBackend:
    """The :class:`ClusteringBackend` for ``name`` (``'auto'`` resolved against ``data``); see the class."""
    return ClusteringBackend(name, data, load)
