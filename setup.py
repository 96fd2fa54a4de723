"""Build script: metadata lives in pyproject.toml; this file only adds the native extension.

The pybind11 extension ``meds_core._native`` is built from ``csrc/`` once its sources exist (the fused
feature-gather kernel). Until then no extension is built and the pure-torch/numpy paths are used.
Switches for that build: ``MEDS_FORCE_CUDA=1`` / ``MEDS_SKIP_CUDA=1``; CUDA architectures come from
``TORCH_CUDA_ARCH_LIST`` or ``CUDAARCHS``.
"""

import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def native_extensions():
    """Extensions to build: none unless csrc/meds_native.cpp exists."""
    if not os.path.exists(os.path.join(HERE, "csrc", "meds_native.cpp")):
        return []
    raise RuntimeError("csrc/meds_native.cpp exists but setup.py has no build rule for it yet; add it here.")


setup(ext_modules=native_extensions())
