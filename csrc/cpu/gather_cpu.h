// CPU implementation of the fused gather-dot kernel (see GatherParams in ../gather.h).
#pragma once

#include "../gather.h"

namespace meds {

// hidden [L, B, d] (f32/bf16/f16) x weight[targets] [B, d] (f32/bf16/f16) -> out [B, L] float32; OpenMP over
// samples (when compiled with OpenMP) using at most num_threads threads (<= 0: the OpenMP default).
void gather_dot_cpu(const GatherParams& p, int num_threads);

// Whether this build was compiled with OpenMP.
bool cpu_has_openmp();

}  // namespace meds
