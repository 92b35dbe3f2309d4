// The implicit-GEMM kernel (see implicit_gemm.h for what one call computes), written once
// against the vector layer and stamped out per instruction set by kernels_*.cpp, which include
// this file inside their ISA's namespace after its Vec (no #include here, as in
// direct_kernel.h).
namespace implicit_gemm {

using VF = Vec<float>;
using V = VF::V;
constexpr int kL = VF::size;
constexpr int kNV = kGemmCoBlock / kL;  // vectors per block of output channels

// Per tap and input step: kNV weight loads and 4 input broadcasts feed 4 * kNV FMAs (AVX2:
// 8 accumulators; AVX-512: 4). In: OneChannel<float> (direct_kernel.h, included before this
// file) or, at avx512_bf16, Bf16Pairs (vec/avx512.h): there the weights are the vector operand
// (16 channels x a pair) and the input pair the broadcast one.
template <typename In = OneChannel<float>>
void window_gemm(const WindowGemmArgs<typename In::Elem>& a) {
  using Elem = typename In::Elem;
  constexpr int P = In::channels;
  V acc[4][kNV];  // [window position in max-pool order][vector of channels]
#pragma GCC unroll 4
  for (int p = 0; p < 4; ++p)
#pragma GCC unroll 2
    for (int h = 0; h < kNV; ++h)
      // Starting from the bias, as stock adds it to every conv value: an infinite bias then
      // gives stock's NaN where a conv value is the opposite infinity.
      acc[p][h] = a.first ? VF::load(a.bias + h * kL)
                          : VF::load(a.partial + p * kGemmCoBlock + h * kL);
  for (int k = 0; k < 9; ++k) {
    // The window's conv positions (y, x) in max-pool order read input (y + ky, x + kx).
    const Elem* x0 = a.in + (k / 3) * a.in_row_stride + (k % 3) * a.in_col_stride;
    const Elem* x[4] = {x0, x0 + a.in_col_stride, x0 + a.in_row_stride,
                        x0 + a.in_row_stride + a.in_col_stride};
    const Elem* w = a.weight + k * kGemmCoBlock * P;
    for (int64_t ci = 0; ci < a.c_in; ++ci) {
      typename In::X wv[kNV];
#pragma GCC unroll 2
      for (int h = 0; h < kNV; ++h) wv[h] = In::load(w + (ci * 9 * kGemmCoBlock + h * kL) * P);
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const auto xb = In::broadcast(x[p] + ci * P);
#pragma GCC unroll 2
        for (int h = 0; h < kNV; ++h) acc[p][h] = In::madd(xb, wv[h], acc[p][h]);
      }
    }
  }
  if (!a.last) {
#pragma GCC unroll 4
    for (int p = 0; p < 4; ++p)
#pragma GCC unroll 2
      for (int h = 0; h < kNV; ++h) VF::store(a.partial + p * kGemmCoBlock + h * kL, acc[p][h]);
    return;
  }
  if (!a.pool) {  // conv3x3_relu2d
#pragma GCC unroll 4
    for (int p = 0; p < 4; ++p)
#pragma GCC unroll 2
      for (int h = 0; h < kNV; ++h)
        VF::store(a.out + p * kGemmCoBlock + h * kL, VF::relu_keep_nan(acc[p][h]));
    return;
  }
#pragma GCC unroll 2
  for (int h = 0; h < kNV; ++h) {
    const V top = VF::max_keep_nan(acc[0][h], acc[1][h]);
    const V bottom = VF::max_keep_nan(acc[2][h], acc[3][h]);
    VF::store(a.out + h * kL, VF::relu_keep_nan(VF::max_keep_nan(top, bottom)));
  }
}

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols, in the vector
// layer's blocks (Vec::transpose_block: 16x16 at AVX-512, 8x8 at AVX2). Packs weight blocks
// ([16 channels][9 C_in] to [9 C_in][16]) and stages NCHW input rows channels-last ([C][W] to
// [W][C]).
inline void transpose(const float* src, int64_t src_stride, int64_t rows, int64_t cols, float* dst,
                      int64_t dst_stride) {
  constexpr int64_t B = VF::transpose_size;
  for (int64_t r = 0; r < rows; r += B)
    for (int64_t c = 0; c < cols; c += B)
      VF::transpose_block(
          src + r * src_stride + c, src_stride, static_cast<int>(std::min(B, rows - r)),
          static_cast<int>(std::min(B, cols - c)), dst + c * dst_stride + r, dst_stride);
}

}  // namespace implicit_gemm
