// The arguments of the backward pass's per-channel gradient loops (backward_kernel.h, run by
// conv3x3_relu_maxpool2d_cpu_backward.cpp). Free of ATen headers, like pooled_chunk.h.
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

}  // namespace simplecnn::cpu
