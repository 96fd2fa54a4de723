// Python bindings of the fused gather-dot kernel. Built twice by setup.py:
//   meds_core._native       (CPU kernel, always)
//   meds_core._native_cuda  (CUDA kernel, with -DMEDS_WITH_CUDA, when nvcc is found)
// Plain pybind11, no torch C++ API: tensors arrive as descriptors (data_ptr, dtype name, shape, strides,
// device), so one build works with any torch version. The input checks live here and name the bad argument.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "checks.h"
#include "gather.h"

#ifdef MEDS_WITH_CUDA
#include "cuda/gather_cuda.h"
#define MEDS_MODULE_NAME _native_cuda
#else
#include "cpu/gather_cpu.h"
#define MEDS_MODULE_NAME _native
#endif

namespace py = pybind11;

namespace meds {
namespace {

// (data_ptr, dtype name without "torch.", shape, strides in elements, device: -1 CPU / CUDA index)
using Desc = std::tuple<std::uintptr_t, std::string, std::vector<int64_t>, std::vector<int64_t>, int>;

TensorArg parse(const std::optional<Desc>& desc, const char* name) {
  TensorArg t;
  t.name = name;
  if (!desc) return t;
  t.defined = true;
  t.ptr = std::get<0>(*desc);
  t.dtype_name = std::get<1>(*desc);
  t.dtype = dtype_from_name(t.dtype_name);
  t.shape = std::get<2>(*desc);
  t.strides = std::get<3>(*desc);
  t.device = std::get<4>(*desc);
  MEDS_CHECK(t.shape.size() == t.strides.size(), name, ": descriptor has ", t.shape.size(), " sizes but ",
             t.strides.size(), " strides");
  return t;
}

// Validates every argument against hidden [L, B, d] and builds the kernel parameters.
GatherParams make_params(const TensorArg& out, const TensorArg& hidden, const TensorArg& weight,
                         const TensorArg& targets, const TensorArg& bias, const TensorArg& norm_weight, double eps,
                         int64_t norm_begin, int64_t norm_end, bool hf_rounding) {
  CHECK_DIM(hidden, 3, "[L, B, d] (layers, samples, hidden size)");
  CHECK_FLOAT(hidden);
  CHECK_UNIT_STRIDE(hidden, 2);
  const int64_t L = hidden.size(0), B = hidden.size(1), d = hidden.size(2);
  MEDS_CHECK(d >= 1, "hidden: hidden size (dimension 2) must be >= 1, got shape ", shape_str(hidden));
  const int device = hidden.device;

  CHECK_DIM(weight, 2, "[V, d] (vocabulary, hidden size)");
  CHECK_FLOAT(weight);
  CHECK_SIZE(weight, 1, d, "the hidden size, hidden.shape[2]");
  CHECK_UNIT_STRIDE(weight, 1);
  CHECK_DEVICE(weight, device);
  const int64_t V = weight.size(0);

  CHECK_DIM(targets, 1, "[B] (one token id per sample)");
  CHECK_DTYPE(targets, DType::kInt64, "int64");
  CHECK_SIZE(targets, 0, B, "the number of samples, hidden.shape[1]");
  CHECK_DEVICE(targets, device);

  CHECK_DIM(out, 2, "[B, L]");
  CHECK_DTYPE(out, DType::kFloat32, "float32");
  CHECK_SIZE(out, 0, B, "the number of samples, hidden.shape[1]");
  CHECK_SIZE(out, 1, L, "the number of layers, hidden.shape[0]");
  CHECK_DEVICE(out, device);

  GatherParams p;
  p.hidden = reinterpret_cast<const void*>(hidden.ptr);
  p.hidden_dtype = hidden.dtype;
  p.L = L;
  p.B = B;
  p.d = d;
  p.h_layer_stride = hidden.stride(0);
  p.h_row_stride = hidden.stride(1);
  p.weight = reinterpret_cast<const void*>(weight.ptr);
  p.weight_dtype = weight.dtype;
  p.V = V;
  p.w_row_stride = weight.stride(0);
  p.targets = reinterpret_cast<const int64_t*>(targets.ptr);
  p.t_stride = targets.stride(0);
  p.out = reinterpret_cast<float*>(out.ptr);
  p.out_row_stride = out.stride(0);
  p.out_layer_stride = out.stride(1);

  if (bias.defined) {
    CHECK_DIM(bias, 1, "[V] (one value per vocabulary entry)");
    CHECK_FLOAT(bias);
    CHECK_SIZE(bias, 0, V, "the vocabulary size, weight.shape[0]");
    CHECK_DEVICE(bias, device);
    p.bias = reinterpret_cast<const void*>(bias.ptr);
    p.bias_dtype = bias.dtype;
    p.bias_stride = bias.stride(0);
  }

  MEDS_CHECK(0 <= norm_begin && norm_begin <= norm_end && norm_end <= L, "norm_layers: (", norm_begin, ", ",
             norm_end, ") is not a range of layers inside [0, ", L, "]");
  if (norm_end > norm_begin) {
    MEDS_CHECK(norm_weight.defined, "norm_weight: required to normalise layers [", norm_begin, ", ", norm_end,
               "); pass the RMSNorm weight or an empty norm_layers range");
    MEDS_CHECK(eps >= 0.0, "eps: must be >= 0, got ", eps);
  }
  if (norm_weight.defined) {
    CHECK_DIM(norm_weight, 1, "[d] (the RMSNorm weight)");
    CHECK_FLOAT(norm_weight);
    CHECK_SIZE(norm_weight, 0, d, "the hidden size, hidden.shape[2]");
    CHECK_DEVICE(norm_weight, device);
    p.norm_weight = reinterpret_cast<const void*>(norm_weight.ptr);
    p.norm_dtype = norm_weight.dtype;
    p.norm_stride = norm_weight.stride(0);
    p.norm_begin = norm_begin;
    p.norm_end = norm_end;
    p.eps = static_cast<float>(eps);
    if (hf_rounding) {
      // HF RMSNorm: normalised x cast back to the input dtype; weight * x in torch's promoted dtype.
      const bool half_like = hidden.dtype != DType::kFloat32;
      p.round_normed = half_like ? hidden.dtype : DType::kOther;
      p.round_product = half_like && norm_weight.dtype == hidden.dtype ? hidden.dtype : DType::kOther;
    }
  }
  return p;
}

constexpr const char* kDoc =
    "out[b, l] = dot(norm_l(hidden[l, b, :]), weight[targets[b], :]) (+ bias[targets[b]]), float32 accumulation.\n\n"
    "Tensors are passed as descriptors (data_ptr, dtype name, shape, strides, device). hidden [L, B, d] and\n"
    "weight [V, d] are float32/bfloat16/float16 with a contiguous last dimension; targets [B] int64 (< 0: NaN\n"
    "row); out [B, L] float32; bias [V] and norm_weight [d] optional. norm_l is RMSNorm(norm_weight, eps) for\n"
    "norm_begin <= l < norm_end, else the identity. hf_rounding=True reproduces HF's Qwen2/Llama RMSNorm\n"
    "roundings (normalised x cast to the input dtype, then norm_weight * x in the promoted dtype).";

#ifdef MEDS_WITH_CUDA
void gather_dot_py(const Desc& out, const Desc& hidden, const Desc& weight, const Desc& targets,
                   const std::optional<Desc>& bias, const std::optional<Desc>& norm_weight, double eps,
                   int64_t norm_begin, int64_t norm_end, bool hf_rounding, std::uintptr_t stream) {
  const TensorArg o = parse(out, "out"), h = parse(hidden, "hidden"), w = parse(weight, "weight"),
                  t = parse(targets, "targets"), bi = parse(bias, "bias"), g = parse(norm_weight, "norm_weight");
  MEDS_CHECK(h.device >= 0, "hidden: is on cpu; this is the CUDA kernel (meds_core._native_cuda)");
  const GatherParams p = make_params(o, h, w, t, bi, g, eps, norm_begin, norm_end, hf_rounding);
  if (p.B == 0 || p.L == 0) return;
  py::gil_scoped_release release;
  gather_dot_cuda(p, h.device, stream);
}
#else
// targets live in host memory here: reject ids >= V before the kernel reads W[t].
void check_targets_on_host(const GatherParams& p, const TensorArg& targets) {
  for (int64_t b = 0; b < p.B; ++b) {
    const int64_t t = p.targets[b * p.t_stride];
    MEDS_CHECK(t < p.V, targets.name, ": token id ", t, " (sample ", b, ") is >= the vocabulary size ", p.V,
               " (weight.shape[0])");
  }
}

void gather_dot_py(const Desc& out, const Desc& hidden, const Desc& weight, const Desc& targets,
                   const std::optional<Desc>& bias, const std::optional<Desc>& norm_weight, double eps,
                   int64_t norm_begin, int64_t norm_end, bool hf_rounding, int num_threads) {
  const TensorArg o = parse(out, "out"), h = parse(hidden, "hidden"), w = parse(weight, "weight"),
                  t = parse(targets, "targets"), bi = parse(bias, "bias"), g = parse(norm_weight, "norm_weight");
  CHECK_DEVICE(h, -1);
  const GatherParams p = make_params(o, h, w, t, bi, g, eps, norm_begin, norm_end, hf_rounding);
  check_targets_on_host(p, t);
  if (p.B == 0 || p.L == 0) return;
  py::gil_scoped_release release;
  gather_dot_cpu(p, num_threads);
}
#endif

}  // namespace
}  // namespace meds

PYBIND11_MODULE(MEDS_MODULE_NAME, m) {
  m.doc() = "meds_core native kernels: fused gather of per-layer logit-lens values (pybind11, raw pointers).";
#ifdef MEDS_WITH_CUDA
  m.def("gather_dot", &meds::gather_dot_py, meds::kDoc, py::arg("out"), py::arg("hidden"), py::arg("weight"),
        py::arg("targets"), py::arg("bias") = py::none(), py::arg("norm_weight") = py::none(),
        py::arg("eps") = 1e-6, py::arg("norm_begin") = 0, py::arg("norm_end") = 0, py::arg("hf_rounding") = false,
        py::arg("stream") = 0);
  m.attr("device") = "cuda";
  m.attr("cuda_archs") = meds::cuda_archs();
#else
  m.def("gather_dot", &meds::gather_dot_py, meds::kDoc, py::arg("out"), py::arg("hidden"), py::arg("weight"),
        py::arg("targets"), py::arg("bias") = py::none(), py::arg("norm_weight") = py::none(),
        py::arg("eps") = 1e-6, py::arg("norm_begin") = 0, py::arg("norm_end") = 0, py::arg("hf_rounding") = false,
        py::arg("num_threads") = 0);
  m.attr("device") = "cpu";
  m.attr("openmp") = meds::cpu_has_openmp();
#endif
}
