"""Compile the numba clustering kernels up front, with a visible one-time message (``meds warmup``, demo warm-up).

numba compiles a kernel the first time it is called and keeps the machine code in its disk cache, so only the very
first MEDS step of an environment pays the compilation. Calling :func:`warm_clustering_kernels` before training moves
that wait to a place where it is announced, instead of a silent first step.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable

# measured: a cold compile of every kernel the default backend uses, 2-core machine (loadavg ~2): 40-60 s
COMPILE_SECONDS_HINT = 60


# the numba CPU engine's kernel modules in meds_core/clustering (numba names its cache files after them)
_KERNEL_MODULES = ("_core_distances", "_mst", "_condensed_tree", "_selection", "_pipeline", "_incremental",
                   "_vote_kernel")


def _cache_enabled() -> bool:
    return os.environ.get("MEDS_NUMBA_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def kernels_cached() -> bool:
    """True when numba's disk cache already holds the clustering kernels (their ``.nbi`` index files): in
    ``NUMBA_CACHE_DIR`` when set, else next to the kernels."""
    if not _cache_enabled():
        return False
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    where = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(package, "clustering", "__pycache__")
    return any(glob.glob(os.path.join(where, "**", f"{module}.*.nbi"), recursive=True) for module in _KERNEL_MODULES)


def warm_clustering_kernels(verbose: bool = True, say: Callable[[str], None] = print) -> float:
    """Run two small :class:`~meds_core.ErrorMemory` updates (k-NN vote + batched clustering) so that every kernel
    the default backend uses is compiled or loaded from the disk cache.

    Parameters
    ----------
    verbose : bool
        Announce a compilation when the cache holds no kernels yet.
    say : callable
        Where the announcement goes (default ``print``).

    Returns
    -------
    float
        Seconds spent.
    """
    import numpy as np

    from meds_core.step.config import MEDSConfig
    from meds_core.step.memory import ErrorMemory

    t0 = time.perf_counter()
    if verbose and not kernels_cached():
        if _cache_enabled():
            say(f"compiling clustering kernels (one-time, ~{COMPILE_SECONDS_HINT} s on 2 cores; later runs load "
                "them from numba's disk cache)")
        else:
            say(f"compiling clustering kernels (~{COMPILE_SECONDS_HINT} s on 2 cores; MEDS_NUMBA_CACHE=0 turns "
                "numba's disk cache off, so every process compiles them)")
    rng = np.random.default_rng(0)
    memory = ErrorMemory(MEDSConfig(use_last_n_layers=4))
    keys = np.repeat(np.arange(4), 8)
    for _ in range(2):
        memory.update(keys, rng.standard_normal((32, 4)).astype(np.float32), rng.integers(0, 2, 32))
    return time.perf_counter() - t0
