// Winograd F(2x2, 3x3) and F(4x4, 3x3) kernels for AVX2+FMA (see winograd.h for the method).
//
// Compiled for AVX2 through a target pragma, everything after it in an anonymous namespace or
// the avx2 namespace (as kernels_avx2.cpp does), and named in the avx2 and avx512 kernel tables.
#include "winograd.h"

#if defined(__x86_64__)

#include <immintrin.h>

#include <algorithm>

#include "pooled_chunk.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

#include "vec/avx2.h"

namespace simplecnn::cpu {
namespace {

using VF = avx2::Vec<float>;  // the vector layer: max_keep_nan, relu_keep_nan

// True when any lane of `check` is NaN. The checks accumulate fma(value, 0, check), which turns
// NaN as soon as one value is infinite or NaN.
inline bool any_nan(__m256 check) {
  return _mm256_movemask_ps(_mm256_cmp_ps(check, check, _CMP_UNORD_Q)) != 0;
}

int64_t tiles(const WinogradTilesArgs& a) { return a.images * a.rows * a.cols; }

// The 1-D transforms along one line of a tile, on 8 channels at once.
// F(2, 3): B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], A^T = [1 1 1 0; 0 1 -1 -1].
// F(4, 3) (Lavin & Gray's points 0, +-1, +-2):
//   B^T = [4  0 -5  0 1 0;   A^T = [1 1  1 1  1 0;
//          0 -4 -4  1 1 0;          0 1 -1 2 -2 0;
//          0  4 -4 -1 1 0;          0 1  1 4  4 0;
//          0 -2 -1  2 1 0;          0 1 -1 8 -8 1]
//          0  2 -1 -2 1 0;
//          0  4  0 -5 0 1]
template <int M>
inline void input_line(const __m256 (&d)[M + 2], __m256 (&t)[M + 2]) {
  if constexpr (M == 2) {
    t[0] = _mm256_sub_ps(d[0], d[2]);
    t[1] = _mm256_add_ps(d[1], d[2]);
    t[2] = _mm256_sub_ps(d[2], d[1]);
    t[3] = _mm256_sub_ps(d[1], d[3]);
  } else {
    const __m256 four = _mm256_set1_ps(4.0f), five = _mm256_set1_ps(5.0f);
    const __m256 two = _mm256_set1_ps(2.0f);
    const __m256 d4_d2 = _mm256_sub_ps(d[4], d[2]), d3_d1 = _mm256_sub_ps(d[3], d[1]);
    t[0] = _mm256_fnmadd_ps(five, d[2], _mm256_fmadd_ps(four, d[0], d[4]));
    t[1] = _mm256_fnmadd_ps(four, _mm256_add_ps(d[1], d[2]), _mm256_add_ps(d[3], d[4]));
    t[2] = _mm256_fmadd_ps(four, _mm256_sub_ps(d[1], d[2]), _mm256_sub_ps(d[4], d[3]));
    t[3] = _mm256_fmadd_ps(two, d3_d1, d4_d2);
    t[4] = _mm256_fnmadd_ps(two, d3_d1, d4_d2);
    t[5] = _mm256_fnmadd_ps(five, d[3], _mm256_fmadd_ps(four, d[1], d[5]));
  }
}

template <int M>
inline void output_line(const __m256 (&m)[M + 2], __m256 (&y)[M]) {
  if constexpr (M == 2) {
    y[0] = _mm256_add_ps(_mm256_add_ps(m[0], m[1]), m[2]);
    y[1] = _mm256_sub_ps(_mm256_sub_ps(m[1], m[2]), m[3]);
  } else {
    const __m256 sum12 = _mm256_add_ps(m[1], m[2]), diff12 = _mm256_sub_ps(m[1], m[2]);
    const __m256 sum34 = _mm256_add_ps(m[3], m[4]), diff34 = _mm256_sub_ps(m[3], m[4]);
    y[0] = _mm256_add_ps(_mm256_add_ps(m[0], sum12), sum34);
    y[1] = _mm256_fmadd_ps(_mm256_set1_ps(2.0f), diff34, diff12);
    y[2] = _mm256_fmadd_ps(_mm256_set1_ps(4.0f), sum34, sum12);
    y[3] = _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.0f), diff34, diff12), m[5]);
  }
}

// V = B^T d B for every tile, 8 input channels at a time, stored as v[position][tiles][ci].
template <int M>
bool input_transform(const WinogradTilesArgs& a) {
  constexpr int A = M + 2;  // input tile side
  const __m256 zero = _mm256_setzero_ps();
  __m256 check = zero;
  const int64_t plane = tiles(a) * a.ci_padded;  // floats per tile position in v
  for (int64_t t = 0; t < tiles(a); ++t) {
    const int64_t image = t / (a.rows * a.cols), row = (t / a.cols) % a.rows, col = t % a.cols;
    const float* tile = a.in + image * a.in_image_stride + M * row * a.in_row_stride +
                        M * col * a.ci_padded;
    float* v = a.v + t * a.ci_padded;
    for (int64_t ci = 0; ci < a.ci_padded; ci += 8) {
      __m256 s[A][A];  // B^T d, column by column
      for (int j = 0; j < A; ++j) {
        __m256 d[A], t_col[A];
        for (int k = 0; k < A; ++k)
          d[k] = _mm256_loadu_ps(tile + k * a.in_row_stride + j * a.ci_padded + ci);
        input_line<M>(d, t_col);
        for (int k = 0; k < A; ++k) s[k][j] = t_col[k];
      }
      for (int i = 0; i < A; ++i) {  // (B^T d) B, row by row
        __m256 out[A];
        input_line<M>(s[i], out);
        for (int j = 0; j < A; ++j) {
          _mm256_storeu_ps(v + (i * A + j) * plane + ci, out[j]);
          check = _mm256_fmadd_ps(out[j], zero, check);
        }
      }
    }
  }
  return !any_nan(check);
}

// m[p][t0 .. t0+ROWS)[co0 .. co0+16) = v[p][t0 .. t0+ROWS) x u[p][co block]: the sgemm
// micro-kernel, ROWS tiles x 16 output channels in 2*ROWS accumulators (12 at ROWS = 6, enough
// independent FMA chains for both FMA units); per input channel 2 loads of u, ROWS broadcasts.
template <int ROWS>
void gemm_tiles(const float* v, int64_t ci_padded, const float* u, float* m, int64_t co_padded,
                const float* next_u) {
  __m256 acc[ROWS][2];
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t ci = 0; ci < ci_padded; ++ci) {
    _mm_prefetch(reinterpret_cast<const char*>(next_u + ci * kWinogradCoBlock), _MM_HINT_T0);
    const __m256 u0 = _mm256_loadu_ps(u + ci * kWinogradCoBlock);
    const __m256 u1 = _mm256_loadu_ps(u + ci * kWinogradCoBlock + 8);
#pragma GCC unroll 6
    for (int r = 0; r < ROWS; ++r) {
      const __m256 x = _mm256_broadcast_ss(v + r * ci_padded + ci);
      acc[r][0] = _mm256_fmadd_ps(x, u0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x, u1, acc[r][1]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r) {
    _mm256_storeu_ps(m + r * co_padded, acc[r][0]);
    _mm256_storeu_ps(m + r * co_padded + 8, acc[r][1]);
  }
}

using GemmTiles = void (*)(const float*, int64_t, const float*, float*, int64_t, const float*);
constexpr GemmTiles kGemmTiles[kWinogradGemmRows] = {gemm_tiles<1>, gemm_tiles<2>, gemm_tiles<3>,
                                             gemm_tiles<4>, gemm_tiles<5>, gemm_tiles<6>};

// Rows of the next GEMM call when `left` tiles remain: 6, but 7 to 9 go as 3 to 5 and 4, not
// as 6 and 1 to 3: a call of R rows keeps 2R FMA chains busy, of the 8 the two FMA units need.
int gemm_rows(int64_t left) {
  if (left > kWinogradGemmRows && left < kWinogradGemmRows + 4) return static_cast<int>(left - 4);
  return static_cast<int>(std::min<int64_t>(kWinogradGemmRows, left));
}

void multiply(const WinogradTilesArgs& a) {
  const int64_t co_blocks = a.co_padded / kWinogradCoBlock;
  const int positions = (a.m + 2) * (a.m + 2);
  for (int p = 0; p < positions; ++p) {
    const float* v = a.v + p * tiles(a) * a.ci_padded;
    float* m = a.products + p * tiles(a) * a.co_padded;
    for (int64_t b = a.co_begin / kWinogradCoBlock; b < a.co_end / kWinogradCoBlock; ++b) {
      const float* u = a.u + (p * co_blocks + b) * a.ci_padded * kWinogradCoBlock;
      for (int64_t t = 0, rows; t < tiles(a); t += rows) {
        rows = gemm_rows(tiles(a) - t);
        // The first call of a block fetches the weights that follow in U (the next block, or
        // the next position's first; wasted only at the end of a channel range) into L1 while
        // it works: from 60 to 96 GFLOP/s per core at 256 -> 256 channels, where U is read from
        // memory. The block's other calls prefetch its own lines, already in L1.
        const bool last = p == positions - 1 && b == co_blocks - 1;
        const float* next_u = t == 0 && !last ? u + a.ci_padded * kWinogradCoBlock : u;
        kGemmTiles[rows - 1](v + t * a.ci_padded, a.ci_padded, u,
                             m + t * a.co_padded + b * kWinogradCoBlock, a.co_padded, next_u);
      }
    }
  }
}

// Y = A^T M A gives the tile's conv values (without bias); then per pool window the max,
// bias, ReLU. False when any conv value is not finite (an overflow in the products or the
// sums, which the direct sums may not have): direct sums then decide those windows.
template <int M>
bool output_transform(const WinogradTilesArgs& a) {
  constexpr int A = M + 2, W = M / 2;  // input tile side, pool windows per tile side
  const __m256 zero = _mm256_setzero_ps();
  __m256 check = zero;
  const int64_t plane = tiles(a) * a.co_padded;
  for (int64_t t = 0; t < tiles(a); ++t) {
    const float* m = a.products + t * a.co_padded;
    float* pooled = a.pooled + t * W * W * a.co_padded;
    for (int64_t co = a.co_begin; co < a.co_end; co += 8) {
      __m256 r[M][A];  // A^T M, column by column
      for (int j = 0; j < A; ++j) {
        __m256 column[A], y[M];
        for (int k = 0; k < A; ++k) column[k] = _mm256_loadu_ps(m + (k * A + j) * plane + co);
        output_line<M>(column, y);
        for (int i = 0; i < M; ++i) r[i][j] = y[i];
      }
      __m256 y[M][M];  // (A^T M) A, row by row
      for (int i = 0; i < M; ++i) {
        output_line<M>(r[i], y[i]);
        for (int j = 0; j < M; ++j) check = _mm256_fmadd_ps(y[i][j], zero, check);
      }
      const __m256 bias = _mm256_loadu_ps(a.bias + co);
      for (int wy = 0; wy < W; ++wy)
        for (int wx = 0; wx < W; ++wx) {
          const __m256 top = VF::max_keep_nan(y[2 * wy][2 * wx], y[2 * wy][2 * wx + 1]);
          const __m256 bottom = VF::max_keep_nan(y[2 * wy + 1][2 * wx], y[2 * wy + 1][2 * wx + 1]);
          const __m256 window = VF::max_keep_nan(top, bottom);
          _mm256_storeu_ps(pooled + (wy * W + wx) * a.co_padded + co,
                           VF::relu_keep_nan(_mm256_add_ps(window, bias)));
        }
    }
  }
  return !any_nan(check);
}

// One line of the weight transform, G t, in double for 16 output channels. G for F(2, 3):
// [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]; for F(4, 3): [1/4 0 0; -1/6 -1/6 -1/6;
// -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1], with the rows' shared terms formed
// once. Plain loops over the channels, which GCC vectorizes.
constexpr int kC = kWinogradCoBlock;
template <int M>
inline void weight_line(const double* t0, const double* t1, const double* t2,
                        double (&out)[M + 2][kC]) {
  for (int j = 0; j < kC; ++j) {
    const double outer = t0[j] + t2[j];
    out[0][j] = M == 2 ? t0[j] : t0[j] * (1.0 / 4);
    out[M + 1][j] = t2[j];
    if constexpr (M == 2) {
      out[1][j] = 0.5 * (outer + t1[j]);
      out[2][j] = 0.5 * (outer - t1[j]);
    } else {
      const double q = t0[j] * (1.0 / 24) + t2[j] * (1.0 / 6), r = t1[j] * (1.0 / 12);
      out[1][j] = (outer + t1[j]) * (-1.0 / 6);
      out[2][j] = (outer - t1[j]) * (-1.0 / 6);
      out[3][j] = q + r;
      out[4][j] = q - r;
    }
  }
}

// U = G g G^T: along the filter's rows, then its columns; rounded to float once.
template <int M, bool kStream>
void transform_weights(const float* g, float* u, int64_t position_stride) {
  constexpr int A = M + 2;
  double gd[9][kC], columns[3][A][kC], line[A][kC];  // g; G g per filter column
  for (int k = 0; k < 9; ++k)
    for (int j = 0; j < kC; ++j) gd[k][j] = g[k * kC + j];
  for (int x = 0; x < 3; ++x) weight_line<M>(gd[x], gd[3 + x], gd[6 + x], columns[x]);
  for (int y = 0; y < A; ++y) {  // (G g) G^T, row y
    weight_line<M>(columns[0][y], columns[1][y], columns[2][y], line);
    for (int x = 0; x < A; ++x) {
      float* dst = u + (y * A + x) * position_stride;
      for (int j = 0; j < kC; j += 8) {
        const __m256 lo = _mm256_castps128_ps256(_mm256_cvtpd_ps(_mm256_loadu_pd(&line[x][j])));
        const __m128 hi = _mm256_cvtpd_ps(_mm256_loadu_pd(&line[x][j + 4]));
        const __m256 line8 = _mm256_insertf128_ps(lo, hi, 1);
        if constexpr (kStream) {
          _mm256_stream_ps(dst + j, line8);
        } else {
          _mm256_storeu_ps(dst + j, line8);
        }
      }
    }
  }
}

template <int M>
bool tiles_of(const WinogradTilesArgs& args) {
  if (!input_transform<M>(args)) return false;
  multiply(args);
  return output_transform<M>(args);
}

}  // namespace

void transform_weights_avx2(int m, const float* g, int64_t channels, float* u,
                            int64_t position_stride, bool stream) {
  using Transform = void (*)(const float*, float*, int64_t);
  const Transform transform =
      m == 2 ? (stream ? transform_weights<2, true> : transform_weights<2, false>)
             : (stream ? transform_weights<4, true> : transform_weights<4, false>);
  for (int64_t ci = 0; ci < channels; ++ci)
    transform(g + ci * 9 * kC, u + ci * kC, position_stride);
  if (stream) _mm_sfence();  // the streamed stores are visible before the GEMMs read U
}

bool winograd_tiles_avx2(const WinogradTilesArgs& args) {
  return args.m == 2 ? tiles_of<2>(args) : tiles_of<4>(args);
}

}  // namespace simplecnn::cpu

#pragma GCC pop_options

#endif  // x86-64: the kernel table names these only there
