"""HDBSCANParams: the HDBSCAN parameters, validated once, when the object is built."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIN_CLUSTER_SIZE = 2  # the smallest cluster HDBSCAN can form
MIN_SAMPLES = 1  # neighbours besides the point itself
METHODS = ("eom", "leaf")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


@dataclass(frozen=True)
class HDBSCANParams:
    """HDBSCAN parameters with the hdbscan library's meaning and defaults; invalid values raise ``ValueError`` here.

    Parameters
    ----------
    min_cluster_size : int, >= 2
        Default 5, the library's (``MEDSConfig.min_cluster_size`` defaults to 2, the MEDS setting).
    min_samples : int >= 1 or None
        Neighbours besides the point itself (scikit-learn's ``min_samples`` is this plus one). None: stored as
        ``min_cluster_size``, as the library does.
    cluster_selection_method : {"eom", "leaf"}
    allow_single_cluster : bool
    cluster_selection_epsilon : float, >= 0
        0 disables it.

    Notes
    -----
    Two sizes decide whether a problem is clustered at all:

    * :attr:`min_rows` (``max(2, min_samples + 1, min_cluster_size)``): the MEDS step (``cluster_batch``, the
      memory) treats a smaller memory as all noise without calling a backend, as the reference step does.
    * the engines (``hdbscan_batch``) follow the library, which clips ``min_samples`` to ``n - 1`` per problem, and
      cluster from ``max(2, min_cluster_size)`` rows (:attr:`engine_min_rows`).
    """

    min_cluster_size: int = 5
    min_samples: int | None = None
    cluster_selection_method: str = "eom"
    allow_single_cluster: bool = False
    cluster_selection_epsilon: float = 0.0

    def __post_init__(self) -> None:
        mcs, ms = self.min_cluster_size, self.min_samples
        if not _is_int(mcs) or mcs < MIN_CLUSTER_SIZE:
            raise ValueError(f"min_cluster_size={mcs!r} must be an integer >= {MIN_CLUSTER_SIZE}.")
        if ms is None:
            ms = mcs
        if not _is_int(ms) or ms < MIN_SAMPLES:
            raise ValueError(f"min_samples={ms!r} must be an integer >= {MIN_SAMPLES} (neighbours besides the point "
                             "itself, as in the hdbscan library), or None for min_cluster_size.")
        if self.cluster_selection_method not in METHODS:
            raise ValueError(f"cluster_selection_method={self.cluster_selection_method!r}; use 'eom' or 'leaf'.")
        if not isinstance(self.allow_single_cluster, (bool, np.bool_)):
            raise ValueError(f"allow_single_cluster={self.allow_single_cluster!r} must be True or False.")
        eps = self.cluster_selection_epsilon
        if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float, np.integer, np.floating)) \
                or not math.isfinite(eps) or eps < 0:
            raise ValueError(f"cluster_selection_epsilon={eps!r} must be a finite number >= 0 (0 disables it).")
        for name, value in (("min_cluster_size", int(mcs)), ("min_samples", int(ms)),
                            ("allow_single_cluster", bool(self.allow_single_cluster)),
                            ("cluster_selection_epsilon", float(eps))):
            object.__setattr__(self, name, value)

    @property
    def leaf(self) -> bool:
        """True for ``cluster_selection_method='leaf'``."""
        return self.cluster_selection_method == "leaf"

    @property
    def min_rows(self) -> int:
        """Fewest rows the MEDS step clusters: ``max(2, min_samples + 1, min_cluster_size)``; fewer are all noise."""
        return max(2, self.min_samples + 1, self.min_cluster_size)

    @property
    def engine_min_rows(self) -> int:
        """Fewest rows the engines cluster (``min_samples`` clipped to ``n - 1``): ``max(2, min_cluster_size)``."""
        return max(2, self.min_cluster_size)

    def kwargs(self) -> dict[str, Any]:
        """The five parameters as keyword arguments of ``hdbscan_batch`` (and of ``hdbscan.HDBSCAN``)."""
        return asdict(self)
