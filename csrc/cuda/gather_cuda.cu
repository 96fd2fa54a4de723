// CUDA fused gather-dot: one warp per (sample, layer) row, warp-shuffle reduction. Consecutive warps of a block
// take the layers of the same sample, so W[t_b] is read from DRAM once and served from L1/L2 to the others.
// Rows whose addresses are 16-byte aligned (and d % 8 == 0) are read with 16-byte vector loads.
#include "gather_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#define MEDS_STR_(...) #__VA_ARGS__
#define MEDS_STR(...) MEDS_STR_(__VA_ARGS__)
#ifndef MEDS_CUDA_ARCHS
#define MEDS_CUDA_ARCHS unknown
#endif

namespace meds {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;  // 8 warps per block
constexpr int kVec = 8;        // elements per vector step (16 bytes of a 16-bit type, 2 x 16 bytes of float)

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }

// 8 consecutive elements at a 16-byte aligned address -> float32.
__device__ __forceinline__ void load8(const float* p, float (&v)[kVec]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p));
  const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
  v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float (&v)[kVec]) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const __nv_bfloat162* h2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 f = __bfloat1622float2(h2[j]);
    v[2 * j] = f.x;
    v[2 * j + 1] = f.y;
  }
}
__device__ __forceinline__ void load8(const __half* p, float (&v)[kVec]) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const __half2* h2 = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 f = __half22float2(h2[j]);
    v[2 * j] = f.x;
    v[2 * j + 1] = f.y;
  }
}

// One element of a float tensor whose dtype is a run-time value (bias, norm weight); the branch is warp-uniform.
__device__ __forceinline__ float load_any(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case DType::kFloat16: return __half2float(static_cast<const __half*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// float32 rounded to `dt` (round to nearest even) and back; kOther / kFloat32: unchanged.
__device__ __forceinline__ float round_to(float v, DType dt) {
  if (dt == DType::kBFloat16) return __bfloat162float(__float2bfloat16_rn(v));
  if (dt == DType::kFloat16) return __half2float(__float2half_rn(v));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Per-lane partial sums over one row. Mode 0: sum x*w; mode 1: sum x^2 and sum x*gamma*w (plain fp32 norm);
// mode 2: sum round_p(gamma * round_n(x * r)) * w (HF roundings; needs r, i.e. a first pass with mode 1).
template <typename TH, typename TW, int kMode, bool kVecLoads>
__device__ __forceinline__ void row_pass(const TH* x, const TW* w, const GatherParams& p, float r, float& acc,
                                         float& ss, int lane) {
  if (kVecLoads) {
#pragma unroll 2
    for (int64_t i = int64_t(lane) * kVec; i < p.d; i += int64_t(kWarp) * kVec) {
      float xv[kVec], wv[kVec];
      load8(x + i, xv);
      load8(w + i, wv);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        if (kMode == 0) {
          acc = fmaf(xv[j], wv[j], acc);
        } else if (kMode == 1) {
          ss = fmaf(xv[j], xv[j], ss);
          acc = fmaf(xv[j], load_any(p.norm_weight, p.norm_dtype, (i + j) * p.norm_stride) * wv[j], acc);
        } else {
          const float y = round_to(load_any(p.norm_weight, p.norm_dtype, (i + j) * p.norm_stride) *
                                       round_to(xv[j] * r, p.round_normed),
                                   p.round_product);
          acc = fmaf(y, wv[j], acc);
        }
      }
    }
  } else {
#pragma unroll 2
    for (int64_t i = lane; i < p.d; i += kWarp) {
      const float xv = to_float(x[i]), wv = to_float(w[i]);
      if (kMode == 0) {
        acc = fmaf(xv, wv, acc);
      } else if (kMode == 1) {
        ss = fmaf(xv, xv, ss);
        acc = fmaf(xv, load_any(p.norm_weight, p.norm_dtype, i * p.norm_stride) * wv, acc);
      } else {
        const float y = round_to(load_any(p.norm_weight, p.norm_dtype, i * p.norm_stride) *
                                     round_to(xv * r, p.round_normed),
                                 p.round_product);
        acc = fmaf(y, wv, acc);
      }
    }
  }
}

// hidden [L, B, d] TH, weight [V, d] TW, targets [B] int64 -> out [B, L] float32; one warp per (b, l) row.
template <typename TH, typename TW, bool kVecLoads>
__global__ void __launch_bounds__(kThreads) gather_dot_kernel(const GatherParams p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t rows = p.B * p.L;
  const int64_t stride = int64_t(gridDim.x) * (kThreads / kWarp);
  const bool emulate = p.round_normed != DType::kOther || p.round_product != DType::kOther;
  for (int64_t row = int64_t(blockIdx.x) * (kThreads / kWarp) + threadIdx.x / kWarp; row < rows; row += stride) {
    const int64_t b = row / p.L, l = row % p.L;
    float* out = p.out + b * p.out_row_stride + l * p.out_layer_stride;
    const int64_t t = p.targets[b * p.t_stride];
    if (t < 0 || t >= p.V) {
      if (lane == 0) *out = __int_as_float(0x7fc00000);  // NaN
      continue;
    }
    const TH* x = static_cast<const TH*>(p.hidden) + l * p.h_layer_stride + b * p.h_row_stride;
    const TW* w = static_cast<const TW*>(p.weight) + t * p.w_row_stride;
    const bool normed = p.norm_weight != nullptr && l >= p.norm_begin && l < p.norm_end;
    float acc = 0.0f, ss = 0.0f;
    if (!normed) {
      row_pass<TH, TW, 0, kVecLoads>(x, w, p, 0.0f, acc, ss, lane);
      acc = warp_sum(acc);
    } else {
      row_pass<TH, TW, 1, kVecLoads>(x, w, p, 0.0f, acc, ss, lane);
      // as torch on CUDA: mean(x^2) = sum * (1/d), then + eps (no fused multiply-add), then rsqrtf
      const float r = rsqrtf(__fadd_rn(__fmul_rn(warp_sum(ss), 1.0f / static_cast<float>(p.d)), p.eps));
      if (!emulate) {
        acc = r * warp_sum(acc);
      } else {
        acc = 0.0f;
        row_pass<TH, TW, 2, kVecLoads>(x, w, p, r, acc, ss, lane);
        acc = warp_sum(acc);
      }
    }
    if (lane == 0) *out = acc + (p.bias != nullptr ? load_any(p.bias, p.bias_dtype, t * p.bias_stride) : 0.0f);
  }
}

bool aligned16(const void* base, int64_t elem_size, int64_t stride0, int64_t stride1) {
  return reinterpret_cast<std::uintptr_t>(base) % 16 == 0 && (stride0 * elem_size) % 16 == 0 &&
         (stride1 * elem_size) % 16 == 0;
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("meds_core._native_cuda: ") + what + ": " +
                                                   cudaGetErrorString(err));
}

template <typename TH, typename TW>
void launch(const GatherParams& p, cudaStream_t stream) {
  const bool vec = p.d % kVec == 0 && aligned16(p.hidden, sizeof(TH), p.h_layer_stride, p.h_row_stride) &&
                   aligned16(p.weight, sizeof(TW), p.w_row_stride, 0);
  const int64_t rows = p.B * p.L;
  const int64_t warps_per_block = kThreads / kWarp;
  const int64_t blocks = (rows + warps_per_block - 1) / warps_per_block;
  const unsigned grid = static_cast<unsigned>(blocks < (int64_t(1) << 30) ? blocks : (int64_t(1) << 30));
  if (vec) {
    gather_dot_kernel<TH, TW, true><<<grid, kThreads, 0, stream>>>(p);
  } else {
    gather_dot_kernel<TH, TW, false><<<grid, kThreads, 0, stream>>>(p);
  }
  check(cudaGetLastError(), "kernel launch failed");
}

template <typename TH>
void dispatch_weight(const GatherParams& p, cudaStream_t stream) {
  switch (p.weight_dtype) {
    case DType::kBFloat16: return launch<TH, __nv_bfloat16>(p, stream);
    case DType::kFloat16: return launch<TH, __half>(p, stream);
    default: return launch<TH, float>(p, stream);
  }
}

// Makes `device` current for the scope (the caller's current device is restored).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
};

}  // namespace

void gather_dot_cuda(const GatherParams& p, int device, std::uintptr_t stream_handle) {
  if (p.B == 0 || p.L == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  switch (p.hidden_dtype) {
    case DType::kBFloat16: return dispatch_weight<__nv_bfloat16>(p, stream);
    case DType::kFloat16: return dispatch_weight<__half>(p, stream);
    default: return dispatch_weight<float>(p, stream);
  }
}

const char* cuda_archs() { return MEDS_STR(MEDS_CUDA_ARCHS); }

}  // namespace meds
