"""Name -> clustering backend. A backend clusters a whole list of problems in one call.

Backend signature: ``fn(problems, params) -> labels`` where ``problems`` is a list of float64 arrays
``[n_i, d]`` (every ``n_i`` large enough to cluster: trivial problems never reach a backend) and
``labels`` a list of int64 arrays ``[n_i]`` (noise -1). Backends are registered as zero-argument
factories so optional libraries are imported only when a backend is first used.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Callable, Sequence

import numpy as np

Backend = Callable[[Sequence[np.ndarray], "object"], list[np.ndarray]]

_FACTORIES: dict[str, Callable[[], Backend]] = {}
_LOADED: dict[str, Backend] = {}
_AUTO: list[str] = []  # the CPU engine 'auto' resolves to, decided (and warned about) once per process
_LOGGED: set[tuple[str, str]] = set()  # 'auto' decisions (backend, reason) already logged
log = logging.getLogger("meds_core.clustering")


def register_backend(name: str, factory: Callable[[], Backend], *, overwrite: bool = False) -> None:
    """Register ``factory`` (returns the backend function) under ``name``."""
    if name == "auto":
        raise ValueError("'auto' is reserved; register the backend under its own name.")
    if name in _FACTORIES and not overwrite:
        raise ValueError(f"clustering backend {name!r} is already registered; pass overwrite=True to replace it.")
    _FACTORIES[name] = factory
    _LOADED.pop(name, None)


def unregister_backend(name: str) -> None:
    """Remove the backend registered under ``name`` (one :func:`register_backend` added); unknown names are an
    error."""
    if name not in _FACTORIES:
        raise ValueError(f"clustering backend {name!r} is not registered; registered: {available_backends()}.")
    del _FACTORIES[name]
    _LOADED.pop(name, None)


def available_backends() -> list[str]:
    """Registered backend names (their optional libraries may still be missing)."""
    return sorted(_FACTORIES)


def _auto() -> str:
    """'numba' where numba is installed (checked without importing it), else 'hdbscan' with one warning."""
    if not _AUTO:
        if importlib.util.find_spec("numba") is not None:
            _AUTO.append("numba")
        else:
            warnings.warn("numba is not installed: clustering falls back to backend='hdbscan' (one library call per "
                          "memory, much slower); pip install numba for the batched engine.", RuntimeWarning,
                          stacklevel=3)
            _AUTO.append("hdbscan")
    return _AUTO[0]


def resolve_backend(name: str, data=None) -> str:
    """Map ``'auto'`` to a concrete backend name; check that other names are registered.

    ``auto`` is ``'cuda'`` when ``data`` (the step's features: array, tensor or list of them) lives on a GPU and
    numba-cuda sees a usable one (:func:`~meds_core.clustering.cuda_status`), else the CPU engine ``'numba'`` (or
    ``'hdbscan'`` without numba). Each distinct (decision, reason) is logged once, at INFO on
    ``meds_core.clustering``.
    """
    if name != "auto":
        if name not in _FACTORIES:
            raise ValueError(f"unknown clustering backend {name!r}; use 'auto' or one of {available_backends()}.")
        return name
    from meds_core.clustering._gpu import cuda_status, on_gpu

    if not on_gpu(data):
        chosen, why = _auto(), "the features are on the CPU"
    else:
        status = cuda_status()
        chosen, why = ("cuda", f"the features are on a GPU and {status['reason']}") if status["usable"] else \
            (_auto(), f"the features are on a GPU but {status['reason']}")
    if (chosen, why) not in _LOGGED:
        _LOGGED.add((chosen, why))
        log.info("clustering backend 'auto' -> %r: %s.", chosen, why)
    return chosen


def get_backend(name: str) -> Backend:
    """The backend function for ``name`` (``'auto'`` resolved), importing its library on first use."""
    name = resolve_backend(name)
    if name not in _LOADED:
        _LOADED[name] = _FACTORIES[name]()
    return _LOADED[name]
