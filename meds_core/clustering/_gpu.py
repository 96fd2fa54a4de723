"""What the GPU path needs without importing numba.cuda: is numba-cuda there and does it see a GPU
(:func:`cuda_status`), are these features on a GPU (:func:`on_gpu`), and the fall-back to the CPU engine when a GPU
step fails (:class:`GPUFallbackWarning`, :func:`run_with_fallback`)."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from typing import TypeVar

from meds_core.clustering._registry import register_backend

T = TypeVar("T")
_STATUS: list[dict] = []


class GPUFallbackWarning(RuntimeWarning):
    """A GPU clustering step failed (out of memory, launch failure, no usable GPU) and ran on the CPU engine."""


class GPUResultError(RuntimeError):
    """The GPU returned a result that cannot be right (e.g. MST edges that do not form a tree): checked before the host
    uses it, so that a faulty device gives this error (and the CPU fall-back) instead of a crash on the host."""


def cuda_status(refresh: bool = False) -> dict:
    """Whether the ``cuda`` clustering backend can run here, decided once per process (``refresh`` re-checks).

    Returns
    -------
    dict
        ``usable`` (bool), ``reason`` (str, one line), ``device`` (GPU name or None), ``simulator`` (bool: numba's
        CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``, which runs the kernels on the CPU) and ``numba_cuda`` (installed
        version or None). Never raises; importing numba.cuda happens here, not at ``import meds_core``.
    """
    if _STATUS and not refresh:
        return dict(_STATUS[0])
    status = {"usable": False, "reason": "", "device": None, "simulator": False, "numba_cuda": None}
    if importlib.util.find_spec("numba_cuda") is None:
        status["reason"] = "numba-cuda is not installed (pip install 'meds_core[cuda]' or pip install numba-cuda)"
    else:
        from importlib.metadata import PackageNotFoundError, version

        try:
            status["numba_cuda"] = version("numba-cuda")
        except PackageNotFoundError:
            status["numba_cuda"] = "unknown"
        try:
            from numba import config, cuda

            status["simulator"] = bool(config.ENABLE_CUDASIM)
            if status["simulator"]:
                status.update(usable=True, device="CUDA simulator", reason="numba's CUDA simulator is on "
                              "(NUMBA_ENABLE_CUDASIM=1): kernels run as Python on the CPU")
            elif not cuda.is_available():
                status["reason"] = "numba-cuda sees no usable GPU (no NVIDIA driver or device)"
            else:
                name = cuda.get_current_device().name
                status["device"] = name.decode() if isinstance(name, bytes) else str(name)
                status.update(usable=True, reason=f"numba-cuda sees {status['device']}")
        except Exception as exc:  # a broken driver or toolkit: report it, never raise
            status["reason"] = f"numba-cuda failed to start: {type(exc).__name__}: {exc}"
    _STATUS[:] = [status]
    return dict(status)


def on_gpu(data) -> bool:
    """True if ``data`` (an array or tensor, or a list of them: its first element decides) lives on a CUDA device:
    it exposes ``__cuda_array_interface__`` (torch CUDA tensors, CuPy and numba device arrays do; CPU tensors don't),
    or it is a numba device array (the CUDA simulator's have no interface)."""
    if isinstance(data, (list, tuple)):
        data = data[0] if data else None
    return data is not None and (hasattr(data, "__cuda_array_interface__") or hasattr(data, "copy_to_host"))


def is_gpu_failure(exc: BaseException) -> bool:
    """An error of the GPU itself (out of memory, launch or driver failure, no device), as opposed to bad input."""
    if isinstance(exc, (MemoryError, GPUResultError)):
        return True
    for cls in type(exc).__mro__:
        module, name = cls.__module__ or "", cls.__name__
        if module.startswith(("numba.cuda", "numba_cuda", "cuda.", "cupy")) or "OutOfMemory" in name:
            return True
    return False


def run_with_fallback(what: str, gpu: Callable[[], T], cpu: Callable[[], T]) -> T:
    """``gpu()``, or ``cpu()`` after one :class:`GPUFallbackWarning` naming the cause if the GPU fails. Errors that
    are not GPU failures (bad input) propagate unchanged."""
    try:
        return gpu()
    except Exception as exc:
        if not is_gpu_failure(exc):
            raise
        cause = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        warnings.warn(f"GPU {what} failed ({cause}); this step ran on the CPU engine instead (same results).",
                      GPUFallbackWarning, stacklevel=3)
        return cpu()


def _on_host(x):
    """x as a numpy array (device arrays and tensors copied to the host)."""
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    if hasattr(x, "__cuda_array_interface__"):
        from numba import cuda

        return cuda.as_cuda_array(x).copy_to_host()
    return x


def _cuda_factory():
    """The ``cuda`` backend: :func:`hdbscan_batch_cuda`, falling back to the CPU engine on a GPU failure."""
    if importlib.util.find_spec("numba_cuda") is None:
        raise ImportError("clustering backend 'cuda' needs numba-cuda: pip install 'meds_core[cuda]' (or pip install "
                          "numba-cuda), or use backend='numba'")
    from meds_core.clustering._cuda_engine import hdbscan_batch_cuda
    from meds_core.clustering._engine import hdbscan_batch

    def run(problems, params) -> list:
        kwargs = params.kwargs()
        return run_with_fallback("clustering", lambda: hdbscan_batch_cuda(problems, **kwargs),
                                 lambda: hdbscan_batch([_on_host(x) for x in problems], **kwargs))

    return run


register_backend("cuda", _cuda_factory)
