// The "avx2" level (AVX2 + FMA + F16C): the vector-layer kernels stamped out for AVX2 through a
// target pragma, in their own namespace, so no AVX2 code can stand in for a generic function at
// link time; everything they include is included before the pragma. The table is only built
// once the resolver (cpu_capability.cpp) has seen the CPU run AVX2.
#include "kernel_table.h"

#if defined(__x86_64__)

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

#include "vec/avx2.h"

namespace simplecnn::cpu::avx2 {
#include "backward_kernel.h"
#include "convert_kernel.h"
#include "direct_kernel.h"
#include "implicit_gemm_kernel.h"
#include "winograd_kernel.h"
// After the kernels it tables.
#include "level_kernels.h"
}  // namespace simplecnn::cpu::avx2

#pragma GCC pop_options

namespace simplecnn::cpu {

const CpuKernels& avx2_kernels() {
  // Direct: 2 x 3 x 2 = 12 of the 16 ymm registers as accumulators; Winograd: 6 tiles x 2
  // vectors = 12.
  static const CpuKernels kernels = avx2::level_kernels<3, 6>("avx2");
  return kernels;
}

}  // namespace simplecnn::cpu

#endif
