import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # the test helpers beside this file (trl_toy.py, ...)

# Without an NVIDIA driver the GPU kernels run under numba's CUDA simulator (it must be switched on before numba is
# imported); with one, the same tests run natively.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    if os.environ["NUMBA_ENABLE_CUDASIM"] == "1":
        import _cudasim

        _cudasim.install()  # the simulator's shared arrays are not thread-safe: see tests/_cudasim.py
