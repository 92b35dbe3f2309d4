// Small AVX2 helpers shared by the AVX2 kernels. Each function carries its own target attribute
// and internal linkage, so including this header adds no AVX2 code to any other file's symbols.
#pragma once

#if defined(__x86_64__)

#include <immintrin.h>

namespace simplecnn::cpu::avx2 {

#define SIMPLECNN_AVX2 __attribute__((target("avx2,fma"), always_inline))

// Max that propagates NaN from either side, as the stock max-pool does. _mm256_max_ps returns
// its second operand when either is NaN, so put the first operand's NaNs back.
static inline SIMPLECNN_AVX2 __m256 max_keep_nan(__m256 a, __m256 b) {
  const __m256 m = _mm256_max_ps(a, b);
  return _mm256_blendv_ps(m, a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
}

// ReLU that passes NaN through: with zero as the first operand, _mm256_max_ps returns the
// second one when it is NaN.
static inline SIMPLECNN_AVX2 __m256 relu_keep_nan(__m256 v) {
  return _mm256_max_ps(_mm256_setzero_ps(), v);
}

#undef SIMPLECNN_AVX2

}  // namespace simplecnn::cpu::avx2

#endif
