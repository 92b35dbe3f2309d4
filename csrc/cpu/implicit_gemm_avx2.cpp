// The implicit-GEMM kernel for AVX2+FMA (see implicit_gemm.h for what one call computes).
//
// Compiled for AVX2 through a target pragma, everything after it in an anonymous namespace or
// the avx2 namespace (as kernels_avx2.cpp does), and named in the avx2 and avx512 kernel tables.
#include "implicit_gemm.h"

#if defined(__x86_64__)

#include <immintrin.h>

#include "pooled_chunk.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

#include "vec/avx2.h"

namespace simplecnn::cpu {
namespace {

using VF = avx2::Vec<float>;  // the vector layer: max_keep_nan, relu_keep_nan

// Per tap and input channel: 2 weight loads and 4 input broadcasts feed 8 FMAs, so the two FMA
// units, not the loads, set the pace. The accumulators are named variables: held in an array
// across the tap loop, GCC kept them on the stack and stored all 8 every iteration.
void window_gemm(const WindowGemmArgs& a) {
  static_assert(kGemmCoBlock == 16, "two vectors of output channels per position");
  // Starting from the bias, as stock adds it to every conv value: an infinite bias then gives
  // stock's NaN where a conv value is the opposite infinity.
  __m256 p0l = _mm256_loadu_ps(a.bias), p0h = _mm256_loadu_ps(a.bias + 8), p1l = p0l,
         p1h = p0h, p2l = p0l, p2h = p0h, p3l = p0l, p3h = p0h;
  if (!a.first) {
    p0l = _mm256_loadu_ps(a.partial), p0h = _mm256_loadu_ps(a.partial + 8);
    p1l = _mm256_loadu_ps(a.partial + 16), p1h = _mm256_loadu_ps(a.partial + 24);
    p2l = _mm256_loadu_ps(a.partial + 32), p2h = _mm256_loadu_ps(a.partial + 40);
    p3l = _mm256_loadu_ps(a.partial + 48), p3h = _mm256_loadu_ps(a.partial + 56);
  }
  for (int k = 0; k < 9; ++k) {
    // The window's conv positions (y, x) in max-pool order read input (y + ky, x + kx).
    const float* x0 = a.in + (k / 3) * a.in_row_stride + (k % 3) * a.in_col_stride;
    const float* x1 = x0 + a.in_col_stride;
    const float* x2 = x0 + a.in_row_stride;
    const float* x3 = x2 + a.in_col_stride;
    const float* w = a.weight + k * kGemmCoBlock;
    for (int64_t ci = 0; ci < a.c_in; ++ci) {
      const __m256 wl = _mm256_loadu_ps(w + ci * 9 * kGemmCoBlock);
      const __m256 wh = _mm256_loadu_ps(w + ci * 9 * kGemmCoBlock + 8);
      __m256 x = _mm256_broadcast_ss(x0 + ci);
      p0l = _mm256_fmadd_ps(x, wl, p0l);
      p0h = _mm256_fmadd_ps(x, wh, p0h);
      x = _mm256_broadcast_ss(x1 + ci);
      p1l = _mm256_fmadd_ps(x, wl, p1l);
      p1h = _mm256_fmadd_ps(x, wh, p1h);
      x = _mm256_broadcast_ss(x2 + ci);
      p2l = _mm256_fmadd_ps(x, wl, p2l);
      p2h = _mm256_fmadd_ps(x, wh, p2h);
      x = _mm256_broadcast_ss(x3 + ci);
      p3l = _mm256_fmadd_ps(x, wl, p3l);
      p3h = _mm256_fmadd_ps(x, wh, p3h);
    }
  }
  if (!a.last) {
    _mm256_storeu_ps(a.partial, p0l), _mm256_storeu_ps(a.partial + 8, p0h);
    _mm256_storeu_ps(a.partial + 16, p1l), _mm256_storeu_ps(a.partial + 24, p1h);
    _mm256_storeu_ps(a.partial + 32, p2l), _mm256_storeu_ps(a.partial + 40, p2h);
    _mm256_storeu_ps(a.partial + 48, p3l), _mm256_storeu_ps(a.partial + 56, p3h);
    return;
  }
  const __m256 low = VF::max_keep_nan(VF::max_keep_nan(p0l, p1l), VF::max_keep_nan(p2l, p3l));
  const __m256 high = VF::max_keep_nan(VF::max_keep_nan(p0h, p1h), VF::max_keep_nan(p2h, p3h));
  _mm256_storeu_ps(a.out, VF::relu_keep_nan(low));
  _mm256_storeu_ps(a.out + 8, VF::relu_keep_nan(high));
}

// dst[c][r] = src[r][c] for an 8x8 tile: rows of src `src_stride` apart, of dst `dst_stride`.
void transpose8x8(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {  // interleave row pairs
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // then pairs of pairs
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {  // then the 128-bit halves
    _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

}  // namespace

void window_gemm_avx2(const WindowGemmArgs& args) { window_gemm(args); }

void transpose_avx2(const float* src, int64_t src_stride, int64_t rows, int64_t cols, float* dst,
                    int64_t dst_stride) {
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) {
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8)
      transpose8x8(src + r * src_stride + c, src_stride, dst + c * dst_stride + r, dst_stride);
    for (; c < cols; ++c)
      for (int64_t i = r; i < r + 8; ++i) dst[c * dst_stride + i] = src[i * src_stride + c];
  }
  for (; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * dst_stride + r] = src[r * src_stride + c];
}

}  // namespace simplecnn::cpu

#pragma GCC pop_options

#endif  // x86-64: the kernel table names these only there
