// The forward driver's Winograd path: weight transform, groups of tiles by the Winograd kernels
// (winograd_kernel.h), direct sums where a group meets a non-finite value.
// Member functions of FusedForward (forward.h).
#pragma once

#include "forward.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace simplecnn::cpu {

// Transformed weights larger than this are streamed to memory (winograd.h: transform_weights).
constexpr int64_t kStreamedWeightBytes = 4 << 20;

template <typename scalar_t, typename acc_t>
void FusedForward<scalar_t, acc_t>::run_winograd() {
  const int m = winograd_m(), window_side = m / 2;
  const WinogradItems items(m, N_, Ho_, Wo_, wino_co() / kWinogradCoBlock,
                            kernels_.winograd_gemm_rows, at::get_num_threads());
  const int64_t tiles_w = items.tiles_w, cols = m * tiles_w + 2, ci_p = wino_ci(), co_p = wino_co();
  const int64_t image_stride = (m * items.rows + 2) * cols * ci_p;
  const int64_t tiles = items.images * items.rows * tiles_w, positions = (m + 2) * (m + 2);
  const int64_t outputs = pool_ ? window_side * window_side : m * m;  // per tile

  at::parallel_for(0, items.count, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> staged(items.images * image_stride), v(positions * tiles * ci_p),
        products(positions * tiles * co_p), out(tiles * outputs * co_p);
    std::vector<float> partial;  // for the implicit GEMM, where it redoes windows
    for (int64_t i = begin; i < end; ++i) {
      const WinogradItems::Item item = items[i];
      const int64_t n0 = item.n0, nb = item.images, ty0 = item.ty0, rb = item.rows;
      for (int64_t j = 0; j < nb; ++j)
        stage_rows_channels_last<scalar_t>(kernels_, input_, n0 + j, m * ty0 - 1, m * rb + 2, cols,
                                           ci_p, staged.data() + j * image_stride);
      const WinogradTilesArgs args{m,
                                   staged.data(),
                                   image_stride,
                                   cols * ci_p,
                                   ci_p,
                                   nb,
                                   rb,
                                   tiles_w,
                                   co_p,
                                   item.b0 * kWinogradCoBlock,
                                   item.b1 * kWinogradCoBlock,
                                   u_.get(),
                                   wino_bias_.data(),
                                   v.data(),
                                   products.data(),
                                   out.data(),
                                   pool_};
      if (kernels_.winograd_tiles(args)) {
        const int64_t co0 = item.b0 * kWinogradCoBlock;
        store_winograd_outputs(out.data(), item, tiles_w, co0,
                               std::min(item.b1 * kWinogradCoBlock, C_out_) - co0);
        continue;
      }
      // A non-finite value somewhere in these tiles: the implicit GEMM, whose direct sums
      // give the stock NaN and Inf, redoes their windows from the same staged input.
      const int64_t py0 = ty0 * window_side, py1 = std::min(Ho_, (ty0 + rb) * window_side);
      partial.resize((py1 - py0) * Wo_ * 4 * kGemmCoBlock);
      for (int64_t j = 0; j < nb; ++j)
        implicit_gemm_rows(staged.data() + j * image_stride, cols, ci_p, n0 + j, py0, py1 - py0,
                           item.b0, item.b1, partial.data());
    }
  });
}

template <typename scalar_t, typename acc_t>
void FusedForward<scalar_t, acc_t>::store_winograd_outputs(const float* out,
                                                           const WinogradItems::Item& item,
                                                           int64_t tiles_w, int64_t co0,
                                                           int64_t count) const {
  const int m = winograd_m(), window_side = m / 2;
  const int64_t co_p = wino_co(), outputs = pool_ ? window_side * window_side : m * m;
  const int64_t n0 = item.n0, nb = item.images, ty0 = item.ty0, rb = item.rows;
  // Output (pooled window or conv value) o of tile t, `side` x `side` per tile; the target
  // skips those past the output's odd sizes.
  const int64_t side = pool_ ? window_side : m;
  if (target_.sC == 1) {  // channels_last: each position's channels are contiguous
    for (int64_t t = 0; t < nb * rb * tiles_w; ++t)
      for (int64_t o = 0; o < outputs; ++o)
        target_.store(n0 + t / (rb * tiles_w), (ty0 + (t / tiles_w) % rb) * side + o / side,
                      t % tiles_w * side + o % side, co0, count,
                      out + (t * outputs + o) * co_p + co0);
    return;
  }
  // Otherwise row by row of each channel, in the order the output is laid out: position by
  // position (a cache line per value) took the unpooled op at 64 -> 64 32x32 N=64 19.8 ms
  // against 14.5 (Zen 4, 2 threads; the pooled op's 4x smaller output: the same).
  for (int64_t r = 0; r < nb * rb; ++r)  // the group's tile rows
    for (int64_t i = 0; i < side; ++i) {
      const float* row = out + (r * tiles_w * outputs + i * side) * co_p + co0;
      target_.store_row(n0 + r / rb, (ty0 + r % rb) * side + i, co0, count,
                        [&](int64_t x) { return row + (x / side * outputs + x % side) * co_p; });
    }
}

template <typename scalar_t, typename acc_t>
void FusedForward<scalar_t, acc_t>::transform_weights(const at::Tensor& weight) {
  const int m = winograd_m();
  const int64_t ci_p = wino_ci(), co_p = wino_co(), blocks = co_p / kWinogradCoBlock;
  u_.reset(new (std::align_val_t{64}) float[(m + 2) * (m + 2) * co_p * ci_p]);
  wino_bias_ = padded_bias(co_p);
  const int64_t plane = blocks * ci_p * kWinogradCoBlock;  // floats per tile position
  const bool stream = (m + 2) * (m + 2) * plane * int64_t(sizeof(float)) > kStreamedWeightBytes;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    // The block's weights as [ci_padded][tap][16] floats (pack_gemm_block), transformed.
    std::vector<float> g(ci_p * 9 * kWinogradCoBlock);
    for (int64_t b = begin; b < end; ++b) {
      pack_gemm_block(weight, b, g.data());
      std::fill(g.begin() + C_in_ * 9 * kWinogradCoBlock, g.end(), 0.0f);  // padding: 0
      kernels_.transform_weights(m, g.data(), ci_p, u_.get() + b * ci_p * kWinogradCoBlock, plane,
                                 stream);
    }
  });
}

}  // namespace simplecnn::cpu
