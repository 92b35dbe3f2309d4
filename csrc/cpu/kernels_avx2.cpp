// The "avx2" level (AVX2 + FMA + F16C): the vector-layer kernels stamped out for AVX2 through a
// target pragma, in their own namespace, so no AVX2 code can stand in for a generic function at
// link time; everything they include is included before the pragma. The table is only built
// once the resolver (cpu_capability.cpp) has seen the CPU run AVX2.
#include "kernel_table.h"

#if defined(__x86_64__)

#include <immintrin.h>

#include <cstdint>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

#include "vec/avx2.h"

namespace simplecnn::cpu::avx2 {
#include "backward_kernel.h"
#include "direct_kernel.h"
#include "implicit_gemm_kernel.h"
#include "winograd_kernel.h"
}  // namespace simplecnn::cpu::avx2

#pragma GCC pop_options

namespace simplecnn::cpu {

const CpuKernels& avx2_kernels() {
  static const CpuKernels kernels = [] {
    CpuKernels k{"avx2"};
    // 2 conv rows x 3 channels x 2 vectors = 12 of the 16 ymm registers as accumulators.
    k.direct = avx2::direct_kernels<float, 2, 3>();
    k.window_gemm = avx2::implicit_gemm::window_gemm;
    k.transpose = avx2::implicit_gemm::transpose;
    // 6 tiles x 2 vectors = 12 accumulators.
    k.winograd_tiles = avx2::winograd::compute_tiles<6>;
    k.winograd_gemm_rows = 6;
    k.transform_weights = avx2::winograd::transform_weights;
    k.grad.fill_strips = avx2::backward::fill_strips<float>;
    k.grad.weight = avx2::backward::grad_weight<float>;
    k.grad.input = avx2::backward::grad_input<float>;
    return k;
  }();
  return kernels;
}

}  // namespace simplecnn::cpu

#endif
