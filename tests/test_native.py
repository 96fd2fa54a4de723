"""The fused gather kernel (meds_core._native on CPU, meds_core._native_cuda on CUDA) against a float64 reference.

Every case comes from one helper, ``_case(dtype, device, final_norm, layout)``. Error bound (flash-attention
style): the kernel's max error against float64 is at most twice that of the plain torch computation in the same
dtype (HF's RMSNorm, then ``lm_head`` matmul in that dtype), plus a tiny absolute floor. CUDA cases skip without a
GPU; the build tests check that the extensions exist where their compilers do.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from meds_core.step import _native_ops
from meds_core.step._native_ops import _hf_rms_norm_reference, gather_dot

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DEVICES = ["cpu", "cuda"]
NORMS = ["none", "last", "all"]
# contiguous [L, B, d]; rows_strided: every other row of a padded buffer; packed: a [B, L, d] buffer seen as
# [L, B, d]; w_strided: W rows with an odd stride (unaligned) and strided targets; odd_d: d not a multiple of 8
LAYOUTS = ["contiguous", "rows_strided", "packed", "w_strided", "odd_d"]
EPS = 1e-6


def _require(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not _native_ops.available(device):
        pytest.skip(f"the {device} kernel is not built here")


def _norm_layers(final_norm: str, n_layers: int) -> tuple[int, int]:
    return {"none": (n_layers, n_layers), "last": (n_layers - 1, n_layers), "all": (0, n_layers)}[final_norm]


def _case(dtype, device, final_norm="none", layout="contiguous", n_layers=5, batch=7, vocab=50, bias=True, seed=0):
    """Kernel arguments for one case: hidden [L, B, d] in the requested layout, weight [V, d], targets [B] with one
    missing (-1), bias [V], norm weight [d]. Rows have mixed magnitudes (x0.05 .. x30) like LLM residual streams."""
    g = torch.Generator().manual_seed(seed)
    d = 203 if layout == "odd_d" else 256
    scale = torch.tensor([0.05, 1.0, 30.0, 2.0, 0.5, 8.0, 1.0])[torch.arange(batch) % 7].view(1, batch, 1)
    full = torch.randn(n_layers, batch, d, generator=g, dtype=torch.float64) * scale
    if layout == "rows_strided":
        buf = torch.zeros(n_layers, 2 * batch, d + 8, dtype=dtype)
        buf[:, ::2, :d] = full.to(dtype)
        hidden = buf[:, ::2, :d]
    elif layout == "packed":
        hidden = full.to(dtype).transpose(0, 1).contiguous().transpose(0, 1)
    else:
        hidden = full.to(dtype)
    w_full = torch.randn(vocab, d, generator=g, dtype=torch.float64) * 0.05
    if layout == "w_strided":
        weight = torch.zeros(vocab, d + 5, dtype=dtype)
        weight[:, 1:d + 1] = w_full.to(dtype)
        weight = weight[:, 1:d + 1]
    else:
        weight = w_full.to(dtype)
    tgt = torch.randint(0, vocab, (batch,), generator=g)
    tgt[batch // 2] = -1
    targets = torch.stack([tgt, tgt]).t().reshape(-1)[::2] if layout == "w_strided" else tgt
    assert layout != "w_strided" or targets.stride(0) == 2
    case = dict(
        hidden=hidden, weight=weight, targets=targets,
        bias=(torch.randn(vocab, generator=g) * 0.5).to(dtype) if bias else None,
        norm_weight=(1.0 + 0.3 * torch.randn(d, generator=g)).to(dtype),
        eps=EPS, norm_layers=_norm_layers(final_norm, n_layers),
    )
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in case.items()}


def _reference64(hidden, weight, targets, bias, norm_weight, eps, norm_layers):
    """float64 reference: exact RMSNorm (no intermediate rounding) and dot products of the given values."""
    h = hidden.detach().cpu().double()
    t = targets.cpu()
    w = weight.detach().cpu().double()[t.clamp(min=0)]
    begin, end = norm_layers
    cols = []
    for layer in range(h.shape[0]):
        x = h[layer]
        if begin <= layer < end:
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.cpu().double()
        cols.append((x * w).sum(-1))
    out = torch.stack(cols, 1)
    if bias is not None:
        out = out + bias.cpu().double()[t.clamp(min=0)].unsqueeze(1)
    out[t < 0] = float("nan")
    return out


def _hf_normed_rows(hidden, norm_weight, eps, norm_layers):
    """[L, B, d] -> list of L [B, d]: HF's RMSNorm on layers begin <= l < end (norm_layers), identity elsewhere."""
    begin, end = norm_layers
    return [_hf_rms_norm_reference(hidden[layer], norm_weight, eps) if begin <= layer < end else hidden[layer]
            for layer in range(hidden.shape[0])]


def _torch_same_dtype(hidden, weight, targets, bias, norm_weight, eps, norm_layers):
    """The plain torch computation in the model dtype: HF's RMSNorm, lm_head in that dtype, pick the target."""
    t = targets.clamp(min=0)
    rows = _hf_normed_rows(hidden, norm_weight, eps, norm_layers)
    logits = torch.einsum("lbd,bd->bl", torch.stack(rows), weight[t])  # [B, L] in the model dtype
    if bias is not None:
        logits = logits + bias[t].unsqueeze(1)
    logits = logits.double().cpu()
    logits[targets.cpu() < 0] = float("nan")
    return logits


def _torch_hf_fp32(hidden, weight, targets, bias, norm_weight, eps, norm_layers):
    """What FeatureCapture's torch path computes: HF's RMSNorm in the model dtype, then float32 dot products."""
    t = targets.clamp(min=0)
    rows = _hf_normed_rows(hidden, norm_weight, eps, norm_layers)
    out = torch.einsum("lbd,bd->bl", torch.stack(rows).float(), weight[t].float())
    if bias is not None:
        out = out + bias[t].float().unsqueeze(1)
    out = out.double().cpu()
    out[targets.cpu() < 0] = float("nan")
    return out


def _max_err(got, ref):
    valid = ~torch.isnan(ref) & ~torch.isnan(got.cpu())
    return float((got.double().cpu()[valid] - ref[valid]).abs().max())


# ----------------------------------------------------------------------------------------------------------------------
# accuracy
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("final_norm", NORMS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
def test_matches_float64_reference(dtype, device, final_norm, layout):
    _require(device)
    case = _case(dtype, device, final_norm, layout)
    ref = _reference64(**case)
    torch_err = _max_err(_torch_same_dtype(**case), ref)
    floor = 1e-5 * max(1.0, float(ref.nan_to_num().abs().max()))
    for hf_rounding in (False, True):
        got = gather_dot(**case, hf_rounding=hf_rounding)
        assert got.dtype == torch.float32 and got.shape == ref.shape and got.device.type == device
        assert torch.equal(torch.isnan(got).cpu(), torch.isnan(ref)), "NaN exactly for the missing target"
        err = _max_err(got, ref)
        assert err <= 2 * torch_err + floor, (hf_rounding, err, torch_err)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_hf_rounding_reproduces_hf_rms_norm(dtype, device):
    """hf_rounding=True gives HF's numbers (RMSNorm rounded as HF does, float32 dots): bit-close, far closer than
    the float32 norm; the float32 norm (hf_rounding=False) is the more accurate one against float64."""
    _require(device)
    case = _case(dtype, device, "all", "contiguous", n_layers=6, batch=14, bias=False)
    hf = _torch_hf_fp32(**case)
    ref = _reference64(**case)
    emulated = gather_dot(**case, hf_rounding=True)
    plain = gather_dot(**case, hf_rounding=False)
    # 1 rounding flip of one element (where the two mean(x^2) sums differ in their last bit) moves a value by
    # ~ulp * |x_i w_i|; allow two of them. The unemulated norm differs from HF by ~sqrt(d) such roundings.
    h = case["hidden"].double().cpu()
    w = case["weight"].double().cpu()[case["targets"].cpu().clamp(min=0)]
    term = float((h / h.pow(2).mean(-1, keepdim=True).sqrt() * w).abs().max()) * 2.0
    ulp = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    emu_err, plain_err = _max_err(emulated, hf), _max_err(plain, hf)
    assert emu_err <= 2 * ulp * term + 1e-5, emu_err
    assert plain_err > 4 * emu_err
    assert _max_err(plain, ref) < _max_err(emulated, ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_16_bit_value_widens_exactly(dtype, device):
    """Row b = [v_b, 0, ..., 0] against W = identity: out[b] is v_b converted to float32 (all 2^16 bit patterns
    but inf / NaN, which would poison the zero products). Checks the branch-free half/bfloat16 decoding."""
    _require(device)
    values = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    values = values[torch.isfinite(values)]
    hidden = torch.zeros(1, values.numel(), 8, dtype=dtype)
    hidden[0, :, 0] = values
    out = gather_dot(hidden.to(device), torch.eye(8, dtype=dtype, device=device),
                     torch.zeros(values.numel(), dtype=torch.int64, device=device))
    assert torch.equal(out[:, 0].cpu(), values.float())


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_dtypes(device):
    """bf16 activations with a float32 head and a float32 norm weight (no product rounding: torch promotes)."""
    _require(device)
    case = _case(torch.bfloat16, device, "all", "contiguous")
    case["weight"] = case["weight"].float()
    case["norm_weight"] = case["norm_weight"].float()
    case["bias"] = case["bias"].float()
    got = gather_dot(**case, hf_rounding=True)
    hf = _torch_hf_fp32(**case)  # weight (f32) * x.to(bf16) -> float32 product, as HF would compute it
    torch.testing.assert_close(got.double().cpu(), hf, rtol=1e-5, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_many_samples_threads_and_out(device):
    """Enough work for the OpenMP path on CPU (B * L * d >= 2^22); a caller-provided strided ``out``."""
    _require(device)
    case = _case(torch.bfloat16, device, "last", "contiguous", n_layers=14, batch=1200, vocab=1000)
    ref = _reference64(**case)
    out = torch.full((14, 1200), 7.0, device=device).t()  # [B, L] with strides (1, B)
    got = gather_dot(**case, out=out)
    assert got is out
    torch.testing.assert_close(got.double().cpu(), ref, rtol=2e-3, atol=2e-3, equal_nan=True)


def test_empty_batch():
    _require("cpu")
    case = _case(torch.float32, "cpu", "all", "contiguous")
    case["hidden"] = case["hidden"][:, :0]
    case["targets"] = case["targets"][:0]
    assert gather_dot(**case).shape == (0, 5)


@pytest.mark.parametrize("device", DEVICES)
def test_list_of_rows_and_no_bias(device):
    _require(device)
    case = _case(torch.float32, device, "none", "contiguous", bias=False)
    ref = _reference64(**case)
    case["hidden"] = list(case["hidden"].unbind(0))
    torch.testing.assert_close(gather_dot(**case).double().cpu(), ref, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_cuda_runs_on_current_stream():
    _require("cuda")
    case = _case(torch.bfloat16, "cuda", "all", "contiguous", batch=64)
    ref = _reference64(**case)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        hidden = case["hidden"] * 1.0  # produced on the side stream; the kernel must run after it on that stream
        got = gather_dot(**{**case, "hidden": hidden})
    stream.synchronize()
    torch.testing.assert_close(got.double().cpu(), ref, rtol=2e-2, atol=2e-2, equal_nan=True)


# ----------------------------------------------------------------------------------------------------------------------
# argument checks: ValueError naming the argument
# ----------------------------------------------------------------------------------------------------------------------

def _bad_cases(device):
    case = _case(torch.bfloat16, device, "all", "contiguous")
    h, w, t, b, g = case["hidden"], case["weight"], case["targets"], case["bias"], case["norm_weight"]
    vocab = w.shape[0]
    return [
        ("hidden", "3-D", dict(case, hidden=h[0])),
        ("hidden", "unsupported dtype", dict(case, hidden=h.double())),
        ("hidden", "stride 1", dict(case, hidden=h.transpose(1, 2).contiguous().transpose(1, 2))),
        ("weight", "dimension 1 must be 256", dict(case, weight=w[:, :100])),
        ("weight", "unsupported dtype", dict(case, weight=w.to(torch.int32))),
        ("targets", "dimension 0 must be 7", dict(case, targets=t[:3])),
        ("targets", "int64", dict(case, targets=t.to(torch.int32))),
        ("targets", f">= the vocabulary size {vocab}", dict(case, targets=torch.where(t == t[0], vocab, t))),
        ("bias", "dimension 0 must be 50", dict(case, bias=b[:10])),
        ("norm_weight", "dimension 0 must be 256", dict(case, norm_weight=g[:10])),
        ("norm_weight", "required", dict(case, norm_weight=None)),
        ("norm_layers", "not a range", dict(case, norm_layers=(0, 9))),
        ("out", "dimension 1 must be 5", dict(case, out=torch.empty(7, 4, device=device))),
        ("out", "float32", dict(case, out=torch.empty(7, 5, device=device, dtype=torch.float64))),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_bad_arguments_name_the_argument(device):
    _require(device)
    for name, message, kwargs in _bad_cases(device):
        with pytest.raises(ValueError, match=name) as info:
            gather_dot(**kwargs)
        assert message in str(info.value), (name, str(info.value))


def test_device_mismatch_names_the_argument():
    _require("cuda")
    case = _case(torch.float32, "cuda", "none", "contiguous")
    with pytest.raises(ValueError, match="weight: is on cpu"):
        gather_dot(**dict(case, weight=case["weight"].cpu()))
    with pytest.raises(ValueError, match="hidden: is on cuda"):
        importlib.import_module("meds_core._native").gather_dot(
            out=_native_ops._desc(torch.empty(7, 5)), hidden=_native_ops._desc(case["hidden"]),
            weight=_native_ops._desc(case["weight"].cpu()), targets=_native_ops._desc(case["targets"].cpu()))


# ----------------------------------------------------------------------------------------------------------------------
# RMSNorm detection and FeatureCapture dispatch
# ----------------------------------------------------------------------------------------------------------------------

class _GemmaStyleRMSNorm(torch.nn.Module):
    """(1 + weight) scaling and the product in float32: NOT HF Llama/Qwen2 semantics."""

    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(d))
        self.eps = 1e-6

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).to(x.dtype)


def test_hf_rms_norm_detection():
    transformers = pytest.importorskip("transformers")
    qwen = transformers.models.qwen2.modeling_qwen2.Qwen2RMSNorm(16, eps=1e-5)
    for dtype in (torch.float32, torch.bfloat16):
        params = _native_ops.hf_rms_norm(qwen.to(dtype), dtype)
        assert params is not None and params[1] == 1e-5 and params[0] is not None
    assert _native_ops.hf_rms_norm(torch.nn.LayerNorm(16), torch.float32) is None
    assert _native_ops.hf_rms_norm(_GemmaStyleRMSNorm(16), torch.float32) is None
    assert _native_ops.hf_rms_norm(None, torch.float32) is None
    assert _native_ops.hf_rms_norm(qwen.float(), torch.float64) is None


def _tiny_qwen2(dtype, device):
    pytest.importorskip("transformers")
    from meds_core.testing import tiny_qwen2

    return tiny_qwen2(97, weight_std=0.15, norm_weight_range=(0.5, 1.5), dtype=dtype, device=device, eval_mode=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("final_norm", NORMS)
def test_feature_capture_uses_kernel(device, final_norm, monkeypatch):
    """FeatureCapture runs the kernel (CPU tensors -> C++, CUDA -> CUDA) and gives the torch path's values."""
    _require(device)
    from meds_core import MEDSConfig, extract_features

    model = _tiny_qwen2(torch.bfloat16, device)
    config = MEDSConfig(use_last_n_layers=3, final_norm=final_norm)
    ids = torch.randint(0, 97, (3, 10), generator=torch.Generator().manual_seed(1)).to(device)
    calls = []
    real = _native_ops.gather_dot
    monkeypatch.setattr(_native_ops, "gather_dot", lambda *a, **k: calls.append(k) or real(*a, **k))
    got = extract_features(model, ids, None, [4, 9, -1], config)
    assert len(calls) == 1 and calls[0]["hf_rounding"]
    assert torch.isnan(got[2]).all() and torch.isfinite(got[:2]).all()

    monkeypatch.setenv("MEDS_DISABLE_NATIVE", "1")
    expected = extract_features(model, ids, None, [4, 9, -1], config)
    assert len(calls) == 1  # the torch path did not call the kernel
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_missing_extension_warns_once_and_falls_back(monkeypatch):
    pytest.importorskip("transformers")
    from meds_core import MEDSConfig, extract_features

    model = _tiny_qwen2(torch.float32, "cpu")
    config = MEDSConfig(use_last_n_layers=3, final_norm="all")
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(2))
    expected = extract_features(model, ids, None, [3, 7], config)

    real_import = importlib.import_module

    def no_native(name, *args, **kwargs):
        if name in _native_ops.MODULE_NAMES.values():
            raise ImportError(f"No module named {name!r} (simulated)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(_native_ops.importlib, "import_module", no_native)
    monkeypatch.setattr(_native_ops, "_loaded", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = extract_features(model, ids, None, [3, 7], config)
        second = extract_features(model, ids, None, [3, 7], config)
    native_warnings = [w for w in caught if issubclass(w.category, _native_ops.NativeKernelWarning)]
    assert len(native_warnings) == 1, [str(w.message) for w in caught]
    assert "pure-torch path" in str(native_warnings[0].message)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="no compiled gather kernel"):
        gather_dot(**_case(torch.float32, "cpu"))


def test_kernel_failure_at_run_time_falls_back(monkeypatch):
    """A kernel that fails when launched (e.g. a CUDA build without this GPU's architecture) is switched off with
    one warning; the features come from the torch path."""
    _require("cpu")
    from meds_core import MEDSConfig, extract_features

    model = _tiny_qwen2(torch.float32, "cpu")
    config = MEDSConfig(use_last_n_layers=3, final_norm="all")
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(3))
    expected = extract_features(model, ids, None, [3, 7], config)

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device (simulated)")

    monkeypatch.setattr(_native_ops, "_loaded", dict(_native_ops._loaded))
    monkeypatch.setattr(_native_ops, "gather_dot", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = extract_features(model, ids, None, [3, 7], config)
        second = extract_features(model, ids, None, [3, 7], config)
    native_warnings = [w for w in caught if issubclass(w.category, _native_ops.NativeKernelWarning)]
    assert len(native_warnings) == 1 and "no kernel image" in str(native_warnings[0].message)
    assert not _native_ops.available("cpu")
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# build and import
# ----------------------------------------------------------------------------------------------------------------------

def test_import_does_not_load_torch_or_the_extension():
    code = ("import sys, meds_core, meds_core.step.capture, meds_core.step._native_ops; "
            "print(sorted(m for m in sys.modules if m in ('torch', 'meds_core._native', 'meds_core._native_cuda')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler on PATH")
def test_cpu_extension_built():
    mod = importlib.import_module("meds_core._native")
    assert mod.device == "cpu" and isinstance(mod.openmp, bool)
