"""A thread-safe ``cuda.shared.array`` for numba's CUDA simulator, installed by conftest when the simulator runs.

The simulator runs every GPU thread as a Python thread and gives all threads of a block the same shared array by
looking it up in a dict keyed by the calling line: ``get``, then, if absent, allocate and store. Two threads can both
find it absent and each allocate its own (numba-cuda 0.30.4, ``kernelapi.FakeCUDAShared.array``); a thread that
keeps the array the other one replaced then writes where no other thread reads, and reads uninitialised values. In
``_cuda_mst.prim_kernel`` that gave the block-wide arg-min a garbage row index: an IndexError in the simulator, or,
when the garbage was a valid index, a wrong MST that crashed the host tree stage. Measured: 1 of 60
``mst_edges_cuda`` calls went wrong with ``sys.setswitchinterval(5e-5)`` (set by test_cuda_clustering to speed up
the simulator). On a GPU, shared memory is one allocation per block and this cannot happen.

Here the lookup and the store are one ``dict.setdefault`` (atomic under the GIL), so every thread of a block gets the
same array. Same key as the simulator's: the caller's file name and line number.
"""

from __future__ import annotations

import sys

import numpy as np


def install() -> bool:
    """Patch the simulator's shared-array allocation; returns False when numba-cuda's simulator is not importable."""
    try:
        from numba.core import types
        from numba.cuda.simulator import kernelapi
        from numba.np import numpy_support
    except ImportError:
        return False
    shared = kernelapi.FakeCUDAShared
    if getattr(shared.array, "_thread_safe", False):
        return True
    original = shared.array

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:  # an error, or dynamic shared memory (one buffer, no lookup)
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        return self._allocations.setdefault((caller.f_code.co_filename, caller.f_lineno), np.empty(shape, dtype))

    array._thread_safe = True
    shared.array = array
    return True
