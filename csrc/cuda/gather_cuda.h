// CUDA implementation of the fused gather-dot kernel (see GatherParams in ../gather.h). This header needs no
// CUDA headers: the stream is passed as an opaque handle (a cudaStream_t, e.g. torch's current stream).
#pragma once

#include <cstdint>

#include "../gather.h"

namespace meds {

// hidden [L, B, d] (f32/bf16/f16) x weight[targets] [B, d] (f32/bf16/f16) -> out [B, L] float32, all on CUDA
// device `device`; launched asynchronously on `stream` (0: the legacy default stream). Throws
// std::runtime_error if the launch fails.
void gather_dot_cuda(const GatherParams& p, int device, std::uintptr_t stream);

// The architectures this object was compiled for (as given to nvcc), e.g. "sm_90".
const char* cuda_archs();

}  // namespace meds
