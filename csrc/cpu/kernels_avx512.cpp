// The "avx512" level (AVX-512 F/BW/DQ/VL): the vector-layer kernels stamped out for AVX-512, as
// kernels_avx2.cpp does for AVX2. The transpose, an AVX2 primitive of the vector layer, is the
// AVX2 level's.
#include "kernel_table.h"

#if defined(__x86_64__)

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() and warn about it at -O3
// (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")

#include "vec/avx512.h"

namespace simplecnn::cpu::avx512 {
#include "backward_kernel.h"
#include "direct_kernel.h"
#include "implicit_gemm_kernel.h"
#include "winograd_kernel.h"
}  // namespace simplecnn::cpu::avx512

#pragma GCC pop_options
#pragma GCC diagnostic pop

namespace simplecnn::cpu {

const CpuKernels& avx512_kernels() {
  static const CpuKernels kernels = [] {
    CpuKernels k = avx2_kernels();
    k.name = "avx512";
    // 2 conv rows x 6 channels x 2 vectors = 24 of the 32 zmm registers as accumulators.
    k.direct = avx512::direct_kernels<float, 2, 6>();
    k.window_gemm = avx512::implicit_gemm::window_gemm;
    // 12 tiles x 1 vector = 12 accumulators.
    k.winograd_tiles = avx512::winograd::compute_tiles<12>;
    k.winograd_gemm_rows = 12;
    k.transform_weights = avx512::winograd::transform_weights;
    k.grad.fill_strips = avx512::backward::fill_strips<float>;
    k.grad.weight = avx512::backward::grad_weight<float>;
    k.grad.input = avx512::backward::grad_input<float>;
    return k;
  }();
  return kernels;
}

}  // namespace simplecnn::cpu

#endif
