// The implicit-GEMM kernel for wide layers on small images: the interface of its kernels
// (implicit_gemm_kernel.h, one per instruction-set level in the kernel table).
//
// The direct kernel vectorizes over 16 or 32 conv columns (AVX2, AVX-512); on a 4x4 or 8x8
// image most of those lanes fall outside the image. This kernel vectorizes over output channels
// instead: one call computes one pooled window for 16 output channels as a tiny GEMM, rows = the
// window's 4 conv positions, K = 9 taps x C_in, in registers (4 positions x 16 channels) that
// start from the bias, then max and ReLU. Only the pooled values are stored. The sums are direct
// sums (no transform), so NaN and Inf behave as in the direct kernel, with no fallback.
#pragma once

#include <cstdint>

namespace simplecnn::cpu {

constexpr int kGemmCoBlock = 16;  // output channels per call

// in_t: the staged input's and packed weights' element, float (one channel per step), or
// uint16_t for bfloat16 channel pairs (the avx512_bf16 level's vdpbf16ps kernel: channels 2u and
// 2u + 1 side by side, in the input as channels-last has them, in the weights as
// [pair][ky][kx][kGemmCoBlock][2]).
template <typename in_t = float>
struct WindowGemmArgs {
  // Channels-last staged input ([row][column][channel], channel stride 1) at the window's
  // top-left input pixel (row 2*py - 1, column 2*px - 1), zeros outside the image.
  const in_t* in;
  int64_t in_row_stride;  // elements between staged rows
  int64_t in_col_stride;  // elements between staged columns (>= the channels, even for pairs)
  int64_t c_in;           // steps (channels, or pairs) of this call (`in`, `weight` at the first)
  const in_t* weight;     // this block's weights, [step][ky][kx][kGemmCoBlock][channel in step]
  const float* bias;      // kGemmCoBlock values (read by the first call)
  float* out;             // kGemmCoBlock pooled values (unpooled: [4][kGemmCoBlock])
  // A call may cover only a block of the input channels: `partial` keeps the window's conv sums
  // between calls, [4][kGemmCoBlock]. The first call starts from the bias, calls but the last store
  // to `partial`, the last one pools and stores `out`.
  float* partial;
  bool first;
  bool last;
  // False: no pool; the last call stores relu of the window's 4 conv values (conv3x3_relu2d).
  bool pool = true;
};

// The kernels (kernel_table.h: CpuKernels::window_gemm, transpose):
// - window_gemm(args): one window, 16 output channels (see above); window_gemm_bf16 the same
//   over bfloat16 pairs (the avx512_bf16 level's).
// - transpose(src, src_stride, rows, cols, dst, dst_stride): dst[c * dst_stride + r] =
//   src[r * src_stride + c] for r < rows, c < cols. Packs weight blocks ([16 channels][9 C_in]
//   to [9 C_in][16]) and stages NCHW input rows channels-last ([C][W] to [W][C]).

}  // namespace simplecnn::cpu
