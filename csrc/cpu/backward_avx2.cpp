// AVX2 strip filling for the backward pass (backward_grad.h: fill_strips, without branches).
// Compiled for AVX2 through a target pragma, everything after it intrinsics only, and named in
// the avx2 and avx512 kernel tables.
#include "backward_grad.h"

#if defined(__x86_64__)

#include <immintrin.h>

#include "pooled_chunk.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

#include "vec/avx2.h"

namespace simplecnn::cpu {

float fill_strips_avx2(const float* grad, const int8_t* index, int64_t wo, float* strip,
                       int64_t stride, int64_t strip_w) {
  __m256 sum = _mm256_setzero_ps();
  int64_t px = 0;
  for (; px + 8 <= wo; px += 8) {
    const __m256i k = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(index + px)));
    const __m256 g = _mm256_loadu_ps(grad + px);
    // v_p: the gradient where the index is p, else 0 (bit masks: no 0 * inf = NaN).
    __m256 v[4];
    for (int p = 0; p < 4; ++p)
      v[p] = _mm256_and_ps(g, _mm256_castsi256_ps(_mm256_cmpeq_epi32(k, _mm256_set1_epi32(p))));
    sum = _mm256_add_ps(sum, _mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3])));
    // Interleave positions (., 0) and (., 1) into conv columns 2*px, 2*px + 1.
    for (int r = 0; r < 2; ++r) {
      const __m256 lo = _mm256_unpacklo_ps(v[2 * r], v[2 * r + 1]);
      const __m256 hi = _mm256_unpackhi_ps(v[2 * r], v[2 * r + 1]);
      float* dst = strip + r * stride + 2 * px;
      _mm256_storeu_ps(dst, _mm256_permute2f128_ps(lo, hi, 0x20));
      _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
  }
  float total = avx2::Vec<float>::sum(sum);
  for (; px < wo; ++px) {  // the last columns
    const int8_t k = index[px];
    const float v = k >= 0 ? grad[px] : 0.0f;
    strip[2 * px] = k == 0 ? v : 0.0f;
    strip[2 * px + 1] = k == 1 ? v : 0.0f;
    strip[stride + 2 * px] = k == 2 ? v : 0.0f;
    strip[stride + 2 * px + 1] = k == 3 ? v : 0.0f;
    total += v;
  }
  for (int64_t x = 2 * wo; x < strip_w; ++x) strip[x] = strip[stride + x] = 0.0f;
  return total;
}

}  // namespace simplecnn::cpu

#pragma GCC pop_options

#endif  // x86-64: the kernel table names these only there
