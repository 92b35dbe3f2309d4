// The backward pass's per-channel gradient loops (conv3x3_relu_maxpool2d_cpu_backward.cpp):
// their arguments, and the portable strip filling (AVX2's in backward_avx2.cpp); the loops
// themselves are in backward_kernel.h. Free of ATen headers, like pooled_chunk.h.
#pragma once

#include <cstdint>

namespace simplecnn::cpu {

// Strip widths are padded to a multiple of this (one zmm); each strip row has this many zeros
// before and after it, for shifted and whole-vector reads.
constexpr int kStripAlign = 16;
constexpr int kStripMargin = 16;

// One (output channel, input channel) pair of one image. The strips hold the gradient of the
// output channel's conv output under each pooled row (conv rows 2*py and 2*py + 1), zero except
// where a window sends its gradient.
template <typename acc_t>
struct ChannelGradArgs {
  const acc_t* rows;   // the input channel's staged rows; row 0 = input row -1, column 0 = -1
  int64_t row_stride;  // elements between staged input rows
  acc_t* grad_rows;    // its staged gradient rows (same origin), added to
  int64_t grad_row_stride, grad_w;  // grad_w: columns to update, a multiple of kStripAlign
  const acc_t* strips;  // [ho][2] rows of strip_w values, strip_stride apart, with margins
  int64_t strip_stride, strip_w, ho;
  const acc_t* weight;  // the pair's 3x3 weights
  acc_t* grad_weight;   // the pair's 3x3 weight gradient, added to
};

// The strips of one pooled row from its gradient (`grad`, wo contiguous values) and window
// indices: conv row 2*py (strip) and 2*py + 1 (strip + stride) get the gradient at the window
// position the index names, zeros elsewhere, up to strip_w. Returns the sum of the gradient that
// flows (the bias gradient's share).
template <typename acc_t>
acc_t fill_strips(const acc_t* grad, const int8_t* index, int64_t wo, acc_t* strip,
                  int64_t stride, int64_t strip_w) {
  acc_t sum = 0;
  for (int64_t px = 0; px < wo; ++px) {
    const int8_t k = index[px];
    const acc_t v = k >= 0 ? grad[px] : acc_t(0);
    strip[2 * px] = k == 0 ? v : acc_t(0);
    strip[2 * px + 1] = k == 1 ? v : acc_t(0);
    strip[stride + 2 * px] = k == 2 ? v : acc_t(0);
    strip[stride + 2 * px + 1] = k == 3 ? v : acc_t(0);
    sum += v;
  }
  for (int64_t x = 2 * wo; x < strip_w; ++x) strip[x] = strip[stride + x] = acc_t(0);
  return sum;
}

// fill_strips without branches (the positions are data-dependent: branches mispredict).
float fill_strips_avx2(const float* grad, const int8_t* index, int64_t wo, float* strip,
                       int64_t stride, int64_t strip_w);

}  // namespace simplecnn::cpu
