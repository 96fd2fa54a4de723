// GatherParams: the validated arguments of the fused gather-dot kernel, shared by the CPU and CUDA
// implementations (plain data: raw pointers, sizes and element strides; no framework types).
#pragma once

#include <cstdint>

#include "checks.h"

namespace meds {

// out[b, l] = dot(norm_l(hidden[l, b, :]), weight[targets[b], :]) (+ bias[targets[b]]), accumulated in float32.
// norm_l is RMSNorm (norm_weight, eps) for norm_begin <= l < norm_end and the identity otherwise; rows whose
// target is < 0 give NaN (targets >= V are rejected by the bindings; the kernels write NaN for them too).
struct GatherParams {
  // hidden [L, B, d]: float32 / bfloat16 / float16; feature dimension contiguous, any layer / row stride.
  const void* hidden = nullptr;
  DType hidden_dtype = DType::kFloat32;
  int64_t L = 0, B = 0, d = 0;
  int64_t h_layer_stride = 0, h_row_stride = 0;
  // weight [V, d]: the unembedding; feature dimension contiguous, any row stride.
  const void* weight = nullptr;
  DType weight_dtype = DType::kFloat32;
  int64_t V = 0, w_row_stride = 0;
  // targets [B] int64, any stride.
  const int64_t* targets = nullptr;
  int64_t t_stride = 1;
  // bias [V] (nullptr: none), any float dtype and stride.
  const void* bias = nullptr;
  DType bias_dtype = DType::kFloat32;
  int64_t bias_stride = 1;
  // norm_weight [d] (nullptr: no norm), any float dtype and stride; RMSNorm over layers [norm_begin, norm_end).
  const void* norm_weight = nullptr;
  DType norm_dtype = DType::kFloat32;
  int64_t norm_stride = 1;
  float eps = 1e-6f;
  int64_t norm_begin = 0, norm_end = 0;
  // HF rounding emulation (kOther: none): round x * rsqrt(mean(x^2) + eps) to `round_normed`, then
  // norm_weight * that product to `round_product` (the dtypes HF's RMSNorm produces them in).
  DType round_normed = DType::kOther;
  DType round_product = DType::kOther;
  // out [B, L] float32, any strides.
  float* out = nullptr;
  int64_t out_row_stride = 0, out_layer_stride = 0;
};

}  // namespace meds
