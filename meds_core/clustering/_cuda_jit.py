"""numba.cuda for the GPU clustering kernels: the decorators, the block size and exactly rounded arithmetic.

Imports numba.cuda (the ``numba-cuda`` package): only ever import this module lazily, from the ``cuda`` backend.

Exact arithmetic: the CUDA compiler contracts ``a * b + c`` into one fused multiply-add by default, which rounds once
instead of twice, so a distance summed that way can differ in its last bit from the CPU engine's, and a tie there can
change an MST edge. The kernels therefore multiply and add through :func:`mul` and :func:`add` (libdevice's
round-to-nearest ``__nv_dmul_rn`` / ``__nv_dadd_rn``, which the compiler never fuses), summing features in index
order as the CPU engine does, so every distance is bit-equal to the CPU engine's. Under numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) kernels run as Python on the CPU, where plain ``*`` and ``+`` already round each step.
"""

from __future__ import annotations

from numba import config, cuda

SIMULATOR = bool(config.ENABLE_CUDASIM)
# Threads per block (a power of two for the tree reductions). The simulator runs every thread as a Python thread,
# so it gets few.
THREADS = 4 if SIMULATOR else 128

kernel = cuda.jit
device = cuda.jit(device=True)

if SIMULATOR:
    @device
    def mul(a, b):
        return a * b

    @device
    def add(a, b):
        return a + b
else:
    from numba.cuda import libdevice

    @device
    def mul(a, b):
        return libdevice.dmul_rn(a, b)

    @device
    def add(a, b):
        return libdevice.dadd_rn(a, b)


@device
def sq_dist(XT, i, j):
    """Squared euclidean distance between points i and j, the columns of XT [d, N] f64, summed in feature order
    without fused multiply-adds: bit-equal to the CPU engine's ``sq_dists_from`` (and symmetric: (a - b)^2 ==
    (b - a)^2). Points are columns so that the threads of a warp, which take consecutive j, read consecutive
    addresses (coalesced loads)."""
    s = 0.0
    for k in range(XT.shape[0]):
        t = XT[k, i] - XT[k, j]
        s = add(s, mul(t, t))
    return s
