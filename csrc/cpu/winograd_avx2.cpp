// Winograd F(2x2, 3x3) kernel for AVX2+FMA (see winograd.h for the method).
//
// Like chunk_avx2.cpp this file is compiled for AVX2 through a target pragma, with everything
// after it in an anonymous namespace.
#include "winograd.h"

#if defined(__x86_64__)

#include <immintrin.h>

#include "avx2_helpers.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace simplecnn::cpu {
namespace {

using avx2::max_keep_nan;
using avx2::relu_keep_nan;

// True when any lane of `check` is NaN. The checks accumulate fma(value, 0, check), which turns
// NaN as soon as one value is infinite or NaN.
inline bool any_nan(__m256 check) {
  return _mm256_movemask_ps(_mm256_cmp_ps(check, check, _CMP_UNORD_Q)) != 0;
}

int64_t tiles(const WinogradTilesArgs& a) { return a.images * a.rows * a.cols; }

// V = B^T d B for every tile, 8 input channels at a time, stored as v[16][tiles][ci_padded].
// B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
bool input_transform(const WinogradTilesArgs& a) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 check = zero;
  const int64_t plane = tiles(a) * a.ci_padded;  // floats per tile position in v
  for (int64_t t = 0; t < tiles(a); ++t) {
    const int64_t image = t / (a.rows * a.cols), row = (t / a.cols) % a.rows, col = t % a.cols;
    // The 4x4 input tile starts at input row 2*py - 1, column 2*px - 1.
    const float* tile = a.in + image * a.in_image_stride + 2 * row * a.in_row_stride +
                        2 * col * a.ci_padded;
    float* v = a.v + t * a.ci_padded;
    for (int64_t ci = 0; ci < a.ci_padded; ci += 8) {
      __m256 s[4][4];  // B^T d
      for (int j = 0; j < 4; ++j) {
        const float* col = tile + j * a.ci_padded + ci;
        const __m256 d0 = _mm256_loadu_ps(col);
        const __m256 d1 = _mm256_loadu_ps(col + a.in_row_stride);
        const __m256 d2 = _mm256_loadu_ps(col + 2 * a.in_row_stride);
        const __m256 d3 = _mm256_loadu_ps(col + 3 * a.in_row_stride);
        s[0][j] = _mm256_sub_ps(d0, d2);
        s[1][j] = _mm256_add_ps(d1, d2);
        s[2][j] = _mm256_sub_ps(d2, d1);
        s[3][j] = _mm256_sub_ps(d1, d3);
      }
      for (int i = 0; i < 4; ++i) {  // (B^T d) B
        const __m256 out[4] = {_mm256_sub_ps(s[i][0], s[i][2]), _mm256_add_ps(s[i][1], s[i][2]),
                               _mm256_sub_ps(s[i][2], s[i][1]), _mm256_sub_ps(s[i][1], s[i][3])};
        for (int j = 0; j < 4; ++j) {
          _mm256_storeu_ps(v + (i * 4 + j) * plane + ci, out[j]);
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
void gemm_tiles(const float* v, int64_t ci_padded, const float* u, float* m, int64_t co_padded) {
  __m256 acc[ROWS][2];
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t ci = 0; ci < ci_padded; ++ci) {
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

constexpr int kGemmRows = 6;
using GemmTiles = void (*)(const float*, int64_t, const float*, float*, int64_t);
constexpr GemmTiles kGemmTiles[kGemmRows] = {gemm_tiles<1>, gemm_tiles<2>, gemm_tiles<3>,
                                             gemm_tiles<4>, gemm_tiles<5>, gemm_tiles<6>};

void multiply(const WinogradTilesArgs& a) {
  const int64_t co_blocks = a.co_padded / kWinogradCoBlock;
  for (int p = 0; p < 16; ++p) {
    const float* v = a.v + p * tiles(a) * a.ci_padded;
    float* m = a.m + p * tiles(a) * a.co_padded;
    for (int64_t b = 0; b < co_blocks; ++b) {
      const float* u = a.u + (p * co_blocks + b) * a.ci_padded * kWinogradCoBlock;
      for (int64_t t = 0; t < tiles(a); t += kGemmRows) {
        const int rows = static_cast<int>(tiles(a) - t < kGemmRows ? tiles(a) - t : kGemmRows);
        kGemmTiles[rows - 1](v + t * a.ci_padded, a.ci_padded, u,
                             m + t * a.co_padded + b * kWinogradCoBlock, a.co_padded);
      }
    }
  }
}

// Y = A^T M A (A^T = [1 1 1 0; 0 1 -1 -1]) gives the window's four conv values (without bias);
// then max over the window, bias, ReLU. False when any of the four conv values is not finite
// (an overflow in the products or the sums, which the direct sums may not have): the direct
// kernel then decides those windows.
bool output_transform(const WinogradTilesArgs& a) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 check = zero;
  const int64_t plane = tiles(a) * a.co_padded;
  for (int64_t t = 0; t < tiles(a); ++t) {
    const float* m = a.m + t * a.co_padded;
    for (int64_t co = 0; co < a.co_padded; co += 8) {
      __m256 r[2][4];  // A^T M
      for (int j = 0; j < 4; ++j) {
        const __m256 m0 = _mm256_loadu_ps(m + (0 * 4 + j) * plane + co);
        const __m256 m1 = _mm256_loadu_ps(m + (1 * 4 + j) * plane + co);
        const __m256 m2 = _mm256_loadu_ps(m + (2 * 4 + j) * plane + co);
        const __m256 m3 = _mm256_loadu_ps(m + (3 * 4 + j) * plane + co);
        r[0][j] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
        r[1][j] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
      }
      __m256 window = _mm256_setzero_ps();
      for (int i = 0; i < 2; ++i) {  // (A^T M) A
        const __m256 y0 = _mm256_add_ps(_mm256_add_ps(r[i][0], r[i][1]), r[i][2]);
        const __m256 y1 = _mm256_sub_ps(_mm256_sub_ps(r[i][1], r[i][2]), r[i][3]);
        check = _mm256_fmadd_ps(y0, zero, _mm256_fmadd_ps(y1, zero, check));
        const __m256 row_max = max_keep_nan(y0, y1);
        window = i == 0 ? row_max : max_keep_nan(window, row_max);
      }
      const __m256 out = relu_keep_nan(_mm256_add_ps(window, _mm256_loadu_ps(a.bias + co)));
      _mm256_storeu_ps(a.pooled + t * a.co_padded + co, out);
    }
  }
  return !any_nan(check);
}

}  // namespace

void transform_weights_avx2(const float* g, float (&u)[16][kWinogradCoBlock]) {
  // Plain loops over the channels, which GCC vectorizes (4 doubles per AVX2 register); the
  // operations are those of the scalar formula, so U is the same to the bit.
  double gd[9][kWinogradCoBlock], gg[4][3][kWinogradCoBlock];  // g, G g
  for (int k = 0; k < 9; ++k)
    for (int j = 0; j < kWinogradCoBlock; ++j) gd[k][j] = g[k * kWinogradCoBlock + j];
  for (int x = 0; x < 3; ++x)
    for (int j = 0; j < kWinogradCoBlock; ++j) {
      gg[0][x][j] = gd[x][j];
      gg[1][x][j] = 0.5 * (gd[x][j] + gd[3 + x][j] + gd[6 + x][j]);
      gg[2][x][j] = 0.5 * (gd[x][j] - gd[3 + x][j] + gd[6 + x][j]);
      gg[3][x][j] = gd[6 + x][j];
    }
  for (int y = 0; y < 4; ++y)  // (G g) G^T
    for (int j = 0; j < kWinogradCoBlock; ++j) {
      u[y * 4 + 0][j] = static_cast<float>(gg[y][0][j]);
      u[y * 4 + 1][j] = static_cast<float>(0.5 * (gg[y][0][j] + gg[y][1][j] + gg[y][2][j]));
      u[y * 4 + 2][j] = static_cast<float>(0.5 * (gg[y][0][j] - gg[y][1][j] + gg[y][2][j]));
      u[y * 4 + 3][j] = static_cast<float>(gg[y][2][j]);
    }
}

bool winograd_tiles_avx2(const WinogradTilesArgs& args) {
  if (!input_transform(args)) return false;
  multiply(args);
  return output_transform(args);
}

}  // namespace simplecnn::cpu

#pragma GCC pop_options

#else  // not x86-64: the driver never takes the Winograd path

namespace simplecnn::cpu {
bool winograd_tiles_avx2(const WinogradTilesArgs&) { return false; }
void transform_weights_avx2(const float*, float (&)[16][kWinogradCoBlock]) {}
}  // namespace simplecnn::cpu

#endif
