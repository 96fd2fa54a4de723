// CPU fused gather-dot: one pass over the samples; per sample the unembedding row W[t_b] is converted to float32
// once and stays in cache while the sample's L hidden rows stream past it. Inner loops are `omp simd` reductions
// over the feature dimension (vectorised without -ffast-math); samples are split across OpenMP threads.
#include "gather_cpu.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace meds {
namespace {

// Below this many multiply-adds (B * L * d; ~0.5 ms for one core) one thread does the work: a thread team costs
// more than it saves there, and on a busy machine every parallel region can wait a scheduler slice for a thread.
constexpr int64_t kParallelWork = int64_t(1) << 22;

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// float32 -> nearest bfloat16 (ties to even), returned as float32; NaN stays NaN. Same rule as torch's casts.
inline float round_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  const uint32_t is_nan = 0u - static_cast<uint32_t>((u & 0x7fffffffu) > 0x7f800000u);
  return bits_to_float((u & is_nan) | (r & ~is_nan));
}

// float32 -> nearest float16 (ties to even, overflow to inf, float16 subnormals), returned as float32.
inline float round_f16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = u & 0x80000000u, ua = u & 0x7fffffffu;
  uint32_t normal = (ua + 0xfffu + ((ua >> 13) & 1u)) & ~0x1fffu;  // 10 mantissa bits kept
  const uint32_t overflow = 0u - static_cast<uint32_t>(normal > 0x477fe000u);  // above 65504: inf
  normal = (0x7f800000u & overflow) | (normal & ~overflow);
  const uint32_t sub = float_to_bits((bits_to_float(ua) + 0.5f) - 0.5f);  // below 2^-14 the grid is 2^-24
  const uint32_t is_sub = 0u - static_cast<uint32_t>(ua < 0x38800000u);
  uint32_t r = (sub & is_sub) | (normal & ~is_sub);
  const uint32_t is_nan = 0u - static_cast<uint32_t>(ua > 0x7f800000u);
  r = (ua & is_nan) | (r & ~is_nan);
  return bits_to_float(r | sign);
}

// Element types: storage type, exact widening to float32 and rounding of a float32 to the type (all branch-free,
// so loops using them vectorise).
struct F32 {
  using T = float;
  static inline float to_float(float v) { return v; }
  static inline float round(float v) { return v; }
};

struct BF16 {
  using T = uint16_t;
  static inline float to_float(uint16_t v) { return bits_to_float(uint32_t(v) << 16); }
  static inline float round(float v) { return round_bf16(v); }
};

struct F16 {
  using T = uint16_t;
  // IEEE half -> float: exponent/mantissa moved into place and rescaled by 2^112 (exact for normals and
  // subnormals); inf / NaN (exponent 31) get the float exponent 255. Selects are bit masks (vectorisable).
  static inline float to_float(uint16_t v) {
    const uint32_t h = v;
    const uint32_t sign = (h & 0x8000u) << 16;
    const uint32_t em = h & 0x7fffu;
    const uint32_t mag = float_to_bits(bits_to_float(em << 13) * 0x1p112f);
    const uint32_t special = (em << 13) | 0x7f800000u;
    const uint32_t is_special = 0u - static_cast<uint32_t>(em >= 0x7c00u);
    return bits_to_float((special & is_special) | (mag & ~is_special) | sign);
  }
  static inline float round(float v) { return round_f16(v); }
};

// One element of a float tensor whose dtype is only known at run time (bias, norm weight: read once per call).
inline float load_any(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::kBFloat16: return BF16::to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kFloat16: return F16::to_float(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// sum_{i < d} term(i) with kLanes independent float32 partial sums (one dependent add chain would leave the
// loop latency-bound), the lanes vectorised.
template <typename Term>
inline float reduce(int64_t d, const Term& term) {
  constexpr int64_t kLanes = 16;
  float part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) part[j] += term(i + j);
  }
  float acc = 0.0f;
  for (; i < d; ++i) acc += term(i);
  for (int64_t j = 0; j < kLanes; ++j) acc += part[j];
  return acc;
}

// HF RMSNorm row, HF roundings: sum_i R_p(gamma_i * R_h(x_i * r)) * w_i, R_h / R_p rounding to TH's dtype
// (R_p only when the norm weight has TH's dtype too; otherwise the product stays float32 as in torch).
template <typename TH, bool kRoundProduct>
inline float hf_norm_dot(const typename TH::T* x, const float* gamma, const float* w, float r, int64_t d) {
  return reduce(d, [&](int64_t i) {
    const float y = gamma[i] * TH::round(TH::to_float(x[i]) * r);
    return (kRoundProduct ? TH::round(y) : y) * w[i];
  });
}

// hidden [L, B, d] TH, weight [V, d] TW, targets [B] int64 -> out [B, L] float32 (see GatherParams).
template <typename TH, typename TW>
void gather_dot_impl(const GatherParams& p, int num_threads) {
  using SH = typename TH::T;
  using SW = typename TW::T;
  const SH* hidden = static_cast<const SH*>(p.hidden);
  const SW* weight = static_cast<const SW*>(p.weight);
  const int64_t d = p.d, L = p.L, B = p.B;
  const bool has_norm = p.norm_weight != nullptr && p.norm_end > p.norm_begin;
  // The bindings set round_normed to the hidden dtype (bf16 / fp16) or leave both roundings off.
  const bool emulate = p.round_normed != DType::kOther;
  const bool round_product = p.round_product != DType::kOther;
  const float nan = std::numeric_limits<float>::quiet_NaN();

  std::vector<float> gamma(has_norm ? d : 0);  // norm weight [d] as float32 (exact for every supported dtype)
  for (int64_t i = 0; i < static_cast<int64_t>(gamma.size()); ++i) {
    gamma[i] = load_any(p.norm_weight, p.norm_dtype, i * p.norm_stride);
  }
  bool parallel = false;
  int threads = 1;
#ifdef _OPENMP
  threads = num_threads > 0 ? num_threads : omp_get_max_threads();
  if (threads > B) threads = static_cast<int>(B > 0 ? B : 1);
  parallel = threads > 1 && B * L * d >= kParallelWork;
#else
  (void)num_threads;
#endif
  (void)threads;

#pragma omp parallel num_threads(threads) if (parallel)
  {
    std::vector<float> w(d);                              // W[t_b] as float32
    std::vector<float> gw(has_norm && !emulate ? d : 0);  // gamma * W[t_b]
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      float* out = p.out + b * p.out_row_stride;
      const int64_t t = p.targets[b * p.t_stride];
      if (t < 0 || t >= p.V) {
        for (int64_t l = 0; l < L; ++l) out[l * p.out_layer_stride] = nan;
        continue;
      }
      const SW* wrow = weight + t * p.w_row_stride;
      float* wp = w.data();
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) wp[i] = TW::to_float(wrow[i]);
      if (!gw.empty()) {
        float* gwp = gw.data();
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) gwp[i] = gamma[i] * wp[i];
      }
      const float bias = p.bias != nullptr ? load_any(p.bias, p.bias_dtype, t * p.bias_stride) : 0.0f;
      for (int64_t l = 0; l < L; ++l) {
        const SH* x = hidden + l * p.h_layer_stride + b * p.h_row_stride;
        float acc;
        if (!has_norm || l < p.norm_begin || l >= p.norm_end) {
          acc = reduce(d, [&](int64_t i) { return TH::to_float(x[i]) * wp[i]; });
        } else {
          const float ss = reduce(d, [&](int64_t i) {
            const float v = TH::to_float(x[i]);
            return v * v;
          });
          const float r = 1.0f / std::sqrt(ss / static_cast<float>(d) + p.eps);
          if (!emulate) {
            const float* gwp = gw.data();
            acc = r * reduce(d, [&](int64_t i) { return TH::to_float(x[i]) * gwp[i]; });
          } else if (round_product) {
            acc = hf_norm_dot<TH, true>(x, gamma.data(), wp, r, d);
          } else {
            acc = hf_norm_dot<TH, false>(x, gamma.data(), wp, r, d);
          }
        }
        out[l * p.out_layer_stride] = acc + bias;
      }
    }
  }
}

template <typename TH>
void dispatch_weight(const GatherParams& p, int num_threads) {
  switch (p.weight_dtype) {
    case DType::kBFloat16: return gather_dot_impl<TH, BF16>(p, num_threads);
    case DType::kFloat16: return gather_dot_impl<TH, F16>(p, num_threads);
    default: return gather_dot_impl<TH, F32>(p, num_threads);
  }
}

}  // namespace

void gather_dot_cpu(const GatherParams& p, int num_threads) {
  switch (p.hidden_dtype) {
    case DType::kBFloat16: return dispatch_weight<BF16>(p, num_threads);
    case DType::kFloat16: return dispatch_weight<F16>(p, num_threads);
    default: return dispatch_weight<F32>(p, num_threads);
  }
}

bool cpu_has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace meds
