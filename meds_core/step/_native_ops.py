"""Python face of the fused gather kernel: lazy loading, tensor descriptors, the HF RMSNorm check.

The compiled modules (``csrc/``, built by ``setup.py``) are plain pybind11 extensions, not torch extensions: they
receive raw pointers, dtypes, shapes and strides, so they do not depend on the torch build.

- ``meds_core._native``: CPU kernel (C++, OpenMP over samples).
- ``meds_core._native_cuda``: CUDA kernel (runs on the stream it is given: torch's current stream here).

Nothing is imported when this module is: torch and the extensions load on first use. A module that is not there
(no compiler at install time) gives ONE :class:`NativeKernelWarning` and :func:`available` returns False, so callers
take the pure-torch path. ``MEDS_DISABLE_NATIVE=1`` turns the kernels off without a warning.

Kernel (shapes as in the docstring of :func:`gather_dot`)::

    out[b, l] = dot(norm_l(hidden[l, b, :]), weight[targets[b], :]) (+ bias[targets[b]])    float32 accumulation

``norm_l`` is RMSNorm over ``norm_layers = (begin, end)`` and the identity elsewhere. ``hf_rounding=True`` emulates
HF's Qwen2/Llama ``RMSNorm.forward`` exactly: ``x * rsqrt(mean(x^2) + eps)`` in float32, cast back to the input dtype
(bf16/fp16 round-to-nearest-even), then ``weight * x`` in torch's promoted dtype (rounded again when both are
bf16/fp16). The result then matches features read from ``output_hidden_states`` up to float32 summation order, plus
rare 1-ulp flips of a bf16 element where the two ``mean(x^2)`` sums differ in their last bit. With
``hf_rounding=False`` the norm is computed in float32 throughout (more accurate, not HF's numbers).
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["NativeKernelWarning", "available", "disable", "gather_dot", "hf_rms_norm", "load", "supported_dtype"]

MODULE_NAMES = {"cpu": "meds_core._native", "cuda": "meds_core._native_cuda"}
_loaded: dict[str, Any] = {}
_norm_checks: dict[tuple, bool] = {}


class NativeKernelWarning(UserWarning):
    """The compiled gather kernel is missing; the pure-torch path is used instead."""


def _disabled() -> bool:
    return os.environ.get("MEDS_DISABLE_NATIVE", "").strip().lower() in ("1", "true", "yes", "on")


def load(device_type: str) -> Any | None:
    """The compiled module for ``"cpu"`` / ``"cuda"`` tensors, or None (missing, disabled, other device type).

    The first failed import per module warns once with the reason and how to build it.
    """
    if device_type not in MODULE_NAMES or _disabled():
        return None
    if device_type not in _loaded:
        name = MODULE_NAMES[device_type]
        try:
            _loaded[device_type] = importlib.import_module(name)
        except ImportError as exc:
            _loaded[device_type] = None
            how = ("a C++17 compiler" if device_type == "cpu"
                   else "nvcc on PATH or CUDA_HOME set (MEDS_FORCE_CUDA=1 makes a failed CUDA build an error)")
            warnings.warn(f"meds_core: the compiled {device_type.upper()} gather kernel ({name}) is not available "
                          f"({exc}); MEDS features use the pure-torch path (same values, slower). To build it, "
                          f"reinstall meds_core from source with {how}: pip install -e .",
                          NativeKernelWarning, stacklevel=3)
    return _loaded[device_type]


def disable(device_type: str, reason: BaseException) -> None:
    """Stop using the kernel for this device type after it failed at run time (e.g. a CUDA build without this GPU's
    architecture); warns once."""
    if _loaded.get(device_type) is not None:
        _loaded[device_type] = None
        warnings.warn(f"meds_core: the compiled {device_type.upper()} gather kernel failed ({reason}); MEDS features "
                      "use the pure-torch path from now on. For a CUDA architecture mismatch rebuild with "
                      "TORCH_CUDA_ARCH_LIST set to this GPU's compute capability (e.g. '8.0'): pip install -e .",
                      NativeKernelWarning, stacklevel=3)


def available(device_type: str) -> bool:
    """Whether the fused kernel can run on tensors of this device type (loads the module on first call)."""
    return load(device_type) is not None


def supported_dtype(dtype: torch.dtype) -> bool:
    """float32, bfloat16 and float16 are what the kernels read."""
    import torch

    return dtype in (torch.float32, torch.bfloat16, torch.float16)


def _desc(t: torch.Tensor | None) -> tuple | None:
    """(data_ptr, dtype name, shape, strides, device index or -1) as the bindings take it."""
    if t is None:
        return None
    import torch

    if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.layout != torch.strided:
        raise TypeError(f"the gather kernel needs plain strided tensors, got {type(t).__name__} "
                        f"with layout {t.layout}; convert it first (e.g. DTensor.full_tensor()).")
    return (t.data_ptr(), str(t.dtype).removeprefix("torch."), tuple(t.shape), tuple(t.stride()),
            -1 if t.device.type == "cpu" else int(t.device.index))


def gather_dot(
    hidden: torch.Tensor | list[torch.Tensor],
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    norm_layers: tuple[int, int] = (0, 0),
    hf_rounding: bool = False,
    out: torch.Tensor | None = None,
    check_targets: bool = True,
) -> torch.Tensor:
    """Per-layer logit-lens values of the target tokens, in one fused pass.

    Args:
        hidden: ``[L, B, d]`` float32/bfloat16/float16, last dimension contiguous, any layer/row strides (a list of
            ``[B, d]`` rows is stacked first).
        weight: ``[V, d]`` unembedding (float32/bfloat16/float16, last dimension contiguous, any row stride).
        targets: int64 ``[B]`` token ids; ``< 0`` gives a NaN row, ``>= V`` a ValueError. CPU targets for CUDA
            tensors are checked on the host and copied over; CUDA-resident ones are checked with one device sync
            unless ``check_targets=False`` (the kernel then writes NaN for out-of-range ids).
        bias: ``[V]`` head bias, or None.
        norm_weight: ``[d]`` RMSNorm weight; required when ``norm_layers`` is not empty.
        eps: RMSNorm epsilon.
        norm_layers: ``(begin, end)``: RMSNorm is applied to layers ``begin <= l < end``.
        hf_rounding: emulate HF's RMSNorm roundings (see the module docstring).
        out: optional float32 ``[B, L]`` destination (any strides).

    Returns:
        float32 ``[B, L]`` on the device of ``hidden``.

    Raises:
        ValueError: a shape, dtype or device that does not fit, naming the argument.
        RuntimeError: no compiled kernel for this device type.
    """
    import torch

    if isinstance(hidden, (list, tuple)):
        hidden = torch.stack(list(hidden))
    dev = hidden.device
    mod = load(dev.type)
    if mod is None:
        raise RuntimeError(f"no compiled gather kernel for {dev.type} tensors (meds_core._native"
                           f"{'_cuda' if dev.type == 'cuda' else ''} not built, MEDS_DISABLE_NATIVE set, or an "
                           "unsupported device); use the torch path of meds_core.step.capture (_dot_rows) instead.")
    if out is None:
        shape = (hidden.shape[1], hidden.shape[0]) if hidden.dim() == 3 else (0, 0)
        out = torch.empty(shape, dtype=torch.float32, device=dev)
    begin, end = (int(v) for v in norm_layers)
    args = dict(out=_desc(out), hidden=_desc(hidden), weight=_desc(weight), bias=_desc(bias),
                norm_weight=_desc(norm_weight), eps=float(eps), norm_begin=begin, norm_end=end,
                hf_rounding=bool(hf_rounding))
    if dev.type == "cpu":
        mod.gather_dot(targets=_desc(targets), num_threads=torch.get_num_threads(), **args)
        return out
    if isinstance(targets, torch.Tensor) and targets.dim() == 1 and targets.dtype == torch.int64 \
            and weight.dim() == 2 and (check_targets or targets.device.type == "cpu") and targets.numel():
        top = int(targets.max())  # host tensor: free; device tensor: one sync
        if top >= weight.shape[0]:
            raise ValueError(f"targets: token id {top} is >= the vocabulary size {weight.shape[0]} (weight.shape[0])")
    if isinstance(targets, torch.Tensor) and targets.device.type == "cpu":
        targets = targets.to(dev)
    stream = torch.cuda.current_stream(dev).cuda_stream
    mod.gather_dot(targets=_desc(targets), stream=stream, **args)
    return out


def _hf_rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's Qwen2/Llama ``RMSNorm.forward``, op for op (the semantics ``hf_rounding=True`` reproduces)."""
    import torch

    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def hf_rms_norm(norm: nn.Module | None, dtype: torch.dtype) -> tuple[torch.Tensor, float] | None:
    """``(weight, eps)`` if ``norm`` computes HF's Qwen2/Llama RMSNorm on ``dtype`` inputs, else None.

    Checked once per (norm class, input dtype, weight dtype, device type) by running ``norm.forward`` on a few
    random rows and comparing bit for bit with :func:`_hf_rms_norm_reference`: LayerNorm, Gemma's ``(1 + w)`` norm,
    a hub kernel with other roundings all return None (the caller then uses the torch path).
    """
    import torch

    if norm is None or not supported_dtype(dtype):
        return None
    weight = getattr(norm, "weight", None)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if (type(weight) not in (torch.Tensor, torch.nn.Parameter) or weight.dim() != 1 or not weight.numel()
            or not supported_dtype(weight.dtype) or not isinstance(eps, (int, float)) or eps < 0
            or getattr(norm, "bias", None) is not None):
        return None
    key = (type(norm), dtype, weight.dtype, weight.device.type, weight.numel())
    ok = _norm_checks.get(key)
    if ok is None:
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(4, weight.numel(), generator=g) * torch.tensor([[0.01], [1.0], [30.0], [1e3]]))
        x = x.to(device=weight.device, dtype=dtype)
        with torch.no_grad():
            try:
                got = norm.forward(x)
            except Exception:  # not a plain [*, d] -> [*, d] norm
                got = None
            ok = bool(isinstance(got, torch.Tensor) and got.shape == x.shape
                      and torch.equal(got, _hf_rms_norm_reference(x, weight, float(eps))))
        _norm_checks[key] = ok
    return (weight.detach(), float(eps)) if ok else None
