// The "avx512" level (AVX-512 F/BW/DQ/VL): the vector-layer kernels stamped out for AVX-512, as
// kernels_avx2.cpp does for AVX2. The "avx512_bf16" level is the same table plus the direct
// kernel and the implicit GEMM over bfloat16 channel pairs (vec/avx512.h: Bf16Pairs, whose one
// AVX512_BF16 instruction is written in asm).
#include "kernel_table.h"

#if defined(__x86_64__)

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() and warn about it at -O3
// (GCC bug 105593, fixed in GCC 13): -Wuninitialized from _mm512_reduce_add_ps (Vec::sum).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")

#include "vec/avx512.h"

namespace simplecnn::cpu::avx512 {
#include "backward_kernel.h"
#include "convert_kernel.h"
#include "direct_kernel.h"
#include "implicit_gemm_kernel.h"
#include "winograd_kernel.h"
// After the kernels it tables.
#include "level_kernels.h"
}  // namespace simplecnn::cpu::avx512

#pragma GCC pop_options
#pragma GCC diagnostic pop

namespace simplecnn::cpu {

const CpuKernels& avx512_kernels() {
  // Direct: 2 x 6 x 2 = 24 of the 32 zmm registers as accumulators; Winograd: 16 tiles x 1
  // vector = 16 (measured on Zen 4, 64 -> 64 32x32 N=64: 8 tiles 10.7-12.0 ms, 12 10.8-10.9,
  // 16 10.5-10.9; 24 spills: 15.5).
  static const CpuKernels kernels = avx512::level_kernels<6, 16>("avx512");
  return kernels;
}

const CpuKernels& avx512_bf16_kernels() {
  static const CpuKernels kernels = [] {
    CpuKernels k = avx512_kernels();
    k.name = "avx512_bf16";
    // The float32 kernel's blocking: 24 zmm accumulators, two zmm of input pairs per kx.
    k.direct_bf16 = avx512::direct_kernels<float, 2, 6, avx512::Bf16Pairs>();
    k.window_gemm_bf16 = avx512::implicit_gemm::window_gemm<avx512::Bf16Pairs>;
    k.interleave_bf16 = avx512::convert::interleave_bf16;
    return k;
  }();
  return kernels;
}

}  // namespace simplecnn::cpu

#endif
