// Winograd F(2x2, 3x3) and F(4x4, 3x3) (see winograd.h for the method), written once against
// the vector layer and stamped out per instruction set by kernels_*.cpp, which include this file
// inside their ISA's namespace after its Vec (no #include here, as in direct_kernel.h).
namespace winograd {

using VF = Vec<float>;
using V = VF::V;
constexpr int kL = VF::size;
constexpr int kNV = kWinogradCoBlock / kL;  // vectors per block of output channels

inline int64_t tiles(const WinogradTilesArgs& a) { return a.images * a.rows * a.cols; }

// The 1-D transforms along one line of a tile, on a vector of channels at once.
// F(2, 3): B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], A^T = [1 1 1 0; 0 1 -1 -1].
// F(4, 3) (Lavin & Gray's points 0, +-1, +-2):
//   B^T = [4  0 -5  0 1 0;   A^T = [1 1  1 1  1 0;
//          0 -4 -4  1 1 0;          0 1 -1 2 -2 0;
//          0  4 -4 -1 1 0;          0 1  1 4  4 0;
//          0 -2 -1  2 1 0;          0 1 -1 8 -8 1]
//          0  2 -1 -2 1 0;
//          0  4  0 -5 0 1]
template <int M>
inline void input_line(const V (&d)[M + 2], V (&t)[M + 2]) {
  if constexpr (M == 2) {
    t[0] = VF::sub(d[0], d[2]);
    t[1] = VF::add(d[1], d[2]);
    t[2] = VF::sub(d[2], d[1]);
    t[3] = VF::sub(d[1], d[3]);
  } else {
    const V four = VF::set1(4.0f), five = VF::set1(5.0f), two = VF::set1(2.0f);
    const V d4_d2 = VF::sub(d[4], d[2]), d3_d1 = VF::sub(d[3], d[1]);
    t[0] = VF::fnmadd(five, d[2], VF::fmadd(four, d[0], d[4]));
    t[1] = VF::fnmadd(four, VF::add(d[1], d[2]), VF::add(d[3], d[4]));
    t[2] = VF::fmadd(four, VF::sub(d[1], d[2]), VF::sub(d[4], d[3]));
    t[3] = VF::fmadd(two, d3_d1, d4_d2);
    t[4] = VF::fnmadd(two, d3_d1, d4_d2);
    t[5] = VF::fnmadd(five, d[3], VF::fmadd(four, d[1], d[5]));
  }
}

template <int M>
inline void output_line(const V (&m)[M + 2], V (&y)[M]) {
  if constexpr (M == 2) {
    y[0] = VF::add(VF::add(m[0], m[1]), m[2]);
    y[1] = VF::sub(VF::sub(m[1], m[2]), m[3]);
  } else {
    const V sum12 = VF::add(m[1], m[2]), diff12 = VF::sub(m[1], m[2]);
    const V sum34 = VF::add(m[3], m[4]), diff34 = VF::sub(m[3], m[4]);
    y[0] = VF::add(VF::add(m[0], sum12), sum34);
    y[1] = VF::fmadd(VF::set1(2.0f), diff34, diff12);
    y[2] = VF::fmadd(VF::set1(4.0f), sum34, sum12);
    y[3] = VF::add(VF::fmadd(VF::set1(8.0f), diff34, diff12), m[5]);
  }
}

// V = B^T d B for every tile, a vector of input channels at a time, stored as
// v[position][tiles][ci]. False when a transformed value is not finite. The check accumulates
// fma(value, 0, check), which turns NaN as soon as one value is infinite or NaN.
template <int M>
bool input_transform(const WinogradTilesArgs& a) {
  constexpr int A = M + 2;  // input tile side
  const V zero = VF::zero();
  V check = zero;
  const int64_t plane = tiles(a) * a.ci_padded;  // floats per tile position in v
  for (int64_t t = 0; t < tiles(a); ++t) {
    const int64_t image = t / (a.rows * a.cols), row = (t / a.cols) % a.rows, col = t % a.cols;
    const float* tile = a.in + image * a.in_image_stride + M * row * a.in_row_stride +
                        M * col * a.ci_padded;
    float* v = a.v + t * a.ci_padded;
    for (int64_t ci = 0; ci < a.ci_padded; ci += kL) {
      V s[A][A];  // B^T d, column by column
      for (int j = 0; j < A; ++j) {
        V d[A], t_col[A];
        for (int k = 0; k < A; ++k)
          d[k] = VF::load(tile + k * a.in_row_stride + j * a.ci_padded + ci);
        input_line<M>(d, t_col);
        for (int k = 0; k < A; ++k) s[k][j] = t_col[k];
      }
      for (int i = 0; i < A; ++i) {  // (B^T d) B, row by row
        V out[A];
        input_line<M>(s[i], out);
        for (int j = 0; j < A; ++j) {
          VF::store(v + (i * A + j) * plane + ci, out[j]);
          check = VF::fmadd(out[j], zero, check);
        }
      }
    }
  }
  return !VF::any_nan(check);
}

// m[p][t0 .. t0+ROWS)[co0 .. co0+16) = v[p][t0 .. t0+ROWS) x u[p][co block]: the sgemm
// micro-kernel, ROWS tiles x 16 output channels in ROWS * kNV accumulators (AVX2 6 x 2, AVX-512
// 16 x 1: enough independent FMA chains for two FMA units); per input channel kNV loads of u
// and ROWS broadcasts of v.
// Not inlined into its dispatcher: one function per tile count, whose register allocation a
// test checks (tests/test_cpu_kernel.py).
template <int ROWS>
__attribute__((noinline)) void gemm_tiles(const float* v, int64_t ci_padded, const float* u,
                                          float* m, int64_t co_padded, const float* next_u) {
  V acc[ROWS][kNV];
#pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 2
    for (int h = 0; h < kNV; ++h) acc[r][h] = VF::zero();
  for (int64_t ci = 0; ci < ci_padded; ++ci) {
    __builtin_prefetch(next_u + ci * kWinogradCoBlock, 0, 3);
    V w[kNV];
#pragma GCC unroll 2
    for (int h = 0; h < kNV; ++h) w[h] = VF::load(u + ci * kWinogradCoBlock + h * kL);
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      const auto x = VF::broadcast(v + r * ci_padded + ci);
#pragma GCC unroll 2
      for (int h = 0; h < kNV; ++h) acc[r][h] = VF::fmadd(x, w[h], acc[r][h]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 2
    for (int h = 0; h < kNV; ++h) VF::store(m + r * co_padded + h * kL, acc[r][h]);
}

// gemm_tiles<rows> for 1 <= rows <= R.
template <int R>
void gemm_tiles_of(int rows, const float* v, int64_t ci_padded, const float* u, float* m,
                   int64_t co_padded, const float* next_u) {
  if constexpr (R > 0) {
    if (rows == R) return gemm_tiles<R>(v, ci_padded, u, m, co_padded, next_u);
    gemm_tiles_of<R - 1>(rows, v, ci_padded, u, m, co_padded, next_u);
  }
}

// Rows of the next GEMM call when `left` tiles remain: R, but a remainder that would leave a
// last call of fewer than 2R/3 rows is split evenly (AVX2's 7 to 9 as 3 to 5 and 4): a call of
// r rows keeps r * kNV FMA chains busy, of the 8 that two FMA units need.
template <int R>
int gemm_rows(int64_t left) {
  constexpr int kMinRows = 2 * R / 3;
  if (left > R && left < R + kMinRows) return static_cast<int>(left - kMinRows);
  return static_cast<int>(left < R ? left : R);
}

template <int R>
void multiply(const WinogradTilesArgs& a) {
  const int64_t co_blocks = a.co_padded / kWinogradCoBlock;
  const int positions = (a.m + 2) * (a.m + 2);
  for (int p = 0; p < positions; ++p) {
    const float* v = a.v + p * tiles(a) * a.ci_padded;
    float* m = a.products + p * tiles(a) * a.co_padded;
    for (int64_t b = a.co_begin / kWinogradCoBlock; b < a.co_end / kWinogradCoBlock; ++b) {
      const float* u = a.u + (p * co_blocks + b) * a.ci_padded * kWinogradCoBlock;
      for (int64_t t = 0, rows; t < tiles(a); t += rows) {
        rows = gemm_rows<R>(tiles(a) - t);
        // The first call of a block fetches the weights that follow in U (the next block, or
        // the next position's first; wasted only at the end of a channel range) into L1 while
        // it works: from 60 to 96 GFLOP/s per core at 256 -> 256 channels (AVX2), where U is
        // read from memory. The block's other calls prefetch its own lines, already in L1.
        const bool last = p == positions - 1 && b == co_blocks - 1;
        const float* next_u = t == 0 && !last ? u + a.ci_padded * kWinogradCoBlock : u;
        gemm_tiles_of<R>(static_cast<int>(rows), v + t * a.ci_padded, a.ci_padded, u,
                         m + t * a.co_padded + b * kWinogradCoBlock, a.co_padded, next_u);
      }
    }
  }
}

// Y = A^T M A gives the tile's conv values (without bias); then per pool window the max,
// bias, ReLU (unpooled: bias and ReLU per value). False when any conv value is not finite (an
// overflow in the products or the sums, which the direct sums may not have): direct sums then
// decide those windows.
template <int M>
bool output_transform(const WinogradTilesArgs& a) {
  constexpr int A = M + 2, W = M / 2;  // input tile side, pool windows per tile side
  const V zero = VF::zero();
  V check = zero;
  const int64_t plane = tiles(a) * a.co_padded;
  for (int64_t t = 0; t < tiles(a); ++t) {
    const float* m = a.products + t * a.co_padded;
    float* out = a.out + t * (a.pool ? W * W : M * M) * a.co_padded;
    for (int64_t co = a.co_begin; co < a.co_end; co += kL) {
      V r[M][A];  // A^T M, column by column
      for (int j = 0; j < A; ++j) {
        V column[A], y[M];
        for (int k = 0; k < A; ++k) column[k] = VF::load(m + (k * A + j) * plane + co);
        output_line<M>(column, y);
        for (int i = 0; i < M; ++i) r[i][j] = y[i];
      }
      V y[M][M];  // (A^T M) A, row by row
      for (int i = 0; i < M; ++i) {
        output_line<M>(r[i], y[i]);
        for (int j = 0; j < M; ++j) check = VF::fmadd(y[i][j], zero, check);
      }
      const V bias = VF::load(a.bias + co);
      if (!a.pool) {  // conv3x3_relu2d
        for (int i = 0; i < M; ++i)
          for (int j = 0; j < M; ++j)
            VF::store(out + (i * M + j) * a.co_padded + co,
                      VF::relu_keep_nan(VF::add(y[i][j], bias)));
        continue;
      }
      for (int wy = 0; wy < W; ++wy)
        for (int wx = 0; wx < W; ++wx) {
          const V top = VF::max_keep_nan(y[2 * wy][2 * wx], y[2 * wy][2 * wx + 1]);
          const V bottom = VF::max_keep_nan(y[2 * wy + 1][2 * wx], y[2 * wy + 1][2 * wx + 1]);
          VF::store(out + (wy * W + wx) * a.co_padded + co,
                    VF::relu_keep_nan(VF::add(VF::max_keep_nan(top, bottom), bias)));
        }
    }
  }
  return !VF::any_nan(check);
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
void transform_weights_of(const float* g, float* u, int64_t position_stride) {
  constexpr int A = M + 2;
  double gd[9][kC], columns[3][A][kC], line[A][kC];  // g; G g per filter column
  for (int k = 0; k < 9; ++k)
    for (int j = 0; j < kC; ++j) gd[k][j] = g[k * kC + j];
  for (int x = 0; x < 3; ++x) weight_line<M>(gd[x], gd[3 + x], gd[6 + x], columns[x]);
  for (int y = 0; y < A; ++y) {  // (G g) G^T, row y
    weight_line<M>(columns[0][y], columns[1][y], columns[2][y], line);
    for (int x = 0; x < A; ++x) {
      float* dst = u + (y * A + x) * position_stride;
      float rounded[kC];
      for (int j = 0; j < kC; ++j) rounded[j] = static_cast<float>(line[x][j]);
      for (int j = 0; j < kC; j += kL) {
        if constexpr (kStream) {
          VF::stream(dst + j, VF::load(rounded + j));
        } else {
          VF::store(dst + j, VF::load(rounded + j));
        }
      }
    }
  }
}

template <int M, int R>
bool tiles_of(const WinogradTilesArgs& args) {
  if (!input_transform<M>(args)) return false;
  multiply<R>(args);
  return output_transform<M>(args);
}

// The table's entries (kernel_table.h), for GEMM calls of up to R tiles.
template <int R>
bool compute_tiles(const WinogradTilesArgs& args) {
  return args.m == 2 ? tiles_of<2, R>(args) : tiles_of<4, R>(args);
}

inline void transform_weights(int m, const float* g, int64_t channels, float* u,
                              int64_t position_stride, bool stream) {
  using Transform = void (*)(const float*, float*, int64_t);
  const Transform transform =
      m == 2 ? (stream ? transform_weights_of<2, true> : transform_weights_of<2, false>)
             : (stream ? transform_weights_of<4, true> : transform_weights_of<4, false>);
  for (int64_t ci = 0; ci < channels; ++ci)
    transform(g + ci * 9 * kC, u + ci * kC, position_stride);
  if (stream) VF::stream_fence();  // the streamed stores are visible before the GEMMs read U
}

}  // namespace winograd
