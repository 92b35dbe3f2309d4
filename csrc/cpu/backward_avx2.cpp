// AVX2+FMA versions of the backward gradient loops (backward_grad.h). Compiled for AVX2 through
// a target pragma, everything after it intrinsics only, and named in the avx2 and avx512
// kernel tables.
#include "backward_grad.h"

#if defined(__x86_64__)

#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

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
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  float total = _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
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

void grad_weight_avx2(const ChannelGradArgs<float>& a) {
  {
    const float* in = a.rows;
    __m256 acc[9];
#pragma GCC unroll 9
    for (int k = 0; k < 9; ++k) acc[k] = _mm256_setzero_ps();
    for (int64_t py = 0; py < a.ho; ++py) {
      const float* top = a.strips + py * 2 * a.strip_stride;  // conv row 2*py
      const float* bottom = top + a.strip_stride;             // conv row 2*py + 1
      const float* row0 = in + 2 * py * a.row_stride;    // input row 2*py - 1
      for (int64_t x = 0; x < a.strip_w; x += 8) {
        const __m256 g0 = _mm256_loadu_ps(top + x), g1 = _mm256_loadu_ps(bottom + x);
        // Input row j (0..3 below row0) meets conv row 2*py through ky = j and conv row
        // 2*py + 1 through ky = j - 1: each loaded segment feeds both.
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const float* row = row0 + j * a.row_stride + x;
#pragma GCC unroll 3
          for (int kx = 0; kx < 3; ++kx) {
            const __m256 v = _mm256_loadu_ps(row + kx);
            if (j < 3) acc[j * 3 + kx] = _mm256_fmadd_ps(g0, v, acc[j * 3 + kx]);
            if (j > 0) acc[(j - 1) * 3 + kx] = _mm256_fmadd_ps(g1, v, acc[(j - 1) * 3 + kx]);
          }
        }
      }
    }
#pragma GCC unroll 9
    for (int k = 0; k < 9; ++k) {
      const __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[k]), _mm256_extractf128_ps(acc[k], 1));
      const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
      a.grad_weight[k] += _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
    }
  }
}

void grad_input_avx2(const ChannelGradArgs<float>& a) {
  __m256 w[9];
#pragma GCC unroll 9
  for (int k = 0; k < 9; ++k) w[k] = _mm256_set1_ps(a.weight[k]);
  for (int64_t py = 0; py < a.ho; ++py) {
    const float* top = a.strips + py * 2 * a.strip_stride;
    const float* bottom = top + a.strip_stride;
    float* row0 = a.grad_rows + 2 * py * a.grad_row_stride;  // input row 2*py - 1
    for (int64_t c = 0; c < a.grad_w; c += 8) {
      // Staged column c takes strip column c - kx: three shifted reads per strip row (the
      // margins hold zeros), summed in registers, then one read-modify-write per output row.
      const __m256 t0 = _mm256_loadu_ps(top + c), t1 = _mm256_loadu_ps(top + c - 1),
                   t2 = _mm256_loadu_ps(top + c - 2);
      const __m256 b0 = _mm256_loadu_ps(bottom + c), b1 = _mm256_loadu_ps(bottom + c - 1),
                   b2 = _mm256_loadu_ps(bottom + c - 2);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {  // input row 2*py - 1 + j: ky = j for t, ky = j - 1 for b
        float* out = row0 + j * a.grad_row_stride + c;
        __m256 v = _mm256_loadu_ps(out);
        if (j < 3) {
          v = _mm256_fmadd_ps(w[j * 3 + 0], t0, v);
          v = _mm256_fmadd_ps(w[j * 3 + 1], t1, v);
          v = _mm256_fmadd_ps(w[j * 3 + 2], t2, v);
        }
        if (j > 0) {
          v = _mm256_fmadd_ps(w[(j - 1) * 3 + 0], b0, v);
          v = _mm256_fmadd_ps(w[(j - 1) * 3 + 1], b1, v);
          v = _mm256_fmadd_ps(w[(j - 1) * 3 + 2], b2, v);
        }
        _mm256_storeu_ps(out, v);
      }
    }
  }
}

}  // namespace simplecnn::cpu

#pragma GCC pop_options

#endif  // x86-64: the kernel table names these only there
