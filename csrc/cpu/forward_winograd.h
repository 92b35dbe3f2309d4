// The forward driver's Winograd path: weight transform, groups of tiles by the Winograd kernels
// (winograd_kernel.h), direct sums where a group meets a non-finite value.
// Member functions of FusedForward (forward.h).
#pragma once

#include "forward.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace simplecnn::cpu {

// Winograd work items: at most this many tiles per call (GEMM rows; measured best, larger
// groups' work space leaves L2), or one row of tiles where a row has more, and the cost of a
// call beyond its tiles (staging, streaming the transformed weights), in tiles. The GEMM takes
// its rows winograd_gemm_rows (kernel_table.h) at a time.
constexpr int64_t kWinograd2x2GroupTiles = 48;
constexpr int64_t kWinograd4x4GroupTiles = 32;
constexpr int64_t kCallOverheadTiles = 8;
// Transformed weights larger than this are streamed to memory (winograd.h: transform_weights).
constexpr int64_t kStreamedWeightBytes = 4 << 20;

template <typename scalar_t, typename acc_t>
void FusedForward<scalar_t, acc_t>::run_winograd() {
  const int m = winograd_m(), window_side = m / 2;
  const int64_t tiles_h = ceil_div(Ho_, window_side), tiles_w = ceil_div(Wo_, window_side);
  const int64_t per_image = tiles_h * tiles_w, threads = at::get_num_threads();
  const int64_t blocks = wino_co() / kWinogradCoBlock;
  const int64_t rows_per_call = kernels_.winograd_gemm_rows;
  int64_t images = 1, rows = tiles_h, splits = 1;
  {
    const int64_t max_tiles = m == 2 ? kWinograd2x2GroupTiles : kWinograd4x4GroupTiles;
    int64_t best = std::numeric_limits<int64_t>::max();
    auto consider = [&](int64_t i, int64_t r, int64_t s) {
      const int64_t items = ceil_div(N_, i) * ceil_div(tiles_h, r) * s;
      const int64_t gemm_rows = ceil_div(i * r * tiles_w, rows_per_call) * rows_per_call;
      const int64_t cost = ceil_div(items, threads) * (gemm_rows + kCallOverheadTiles) *
                           ceil_div(blocks, s);
      if (cost < best) best = cost, images = i, rows = r, splits = s;
    };
    for (int64_t parts = 1; parts <= std::min<int64_t>(blocks, 2 * threads); parts *= 2) {
      const int64_t s = ceil_div(blocks, ceil_div(blocks, parts));  // no item without blocks
      if (per_image >= max_tiles) {
        for (int64_t r = std::clamp<int64_t>(max_tiles / tiles_w, 1, tiles_h); r >= 1; --r)
          consider(1, r, s);
      } else {
        for (int64_t i = std::min(N_, max_tiles / per_image); i >= 1; --i)
          consider(i, tiles_h, s);
      }
    }
  }
  const int64_t row_blocks = ceil_div(tiles_h, rows), blocks_per_item = ceil_div(blocks, splits);
  const int64_t cols = m * tiles_w + 2, ci_p = wino_ci(), co_p = wino_co();
  const int64_t image_stride = (m * rows + 2) * cols * ci_p, tiles = images * rows * tiles_w;
  const int64_t positions = (m + 2) * (m + 2), windows = window_side * window_side;
  const int64_t outputs = pool_ ? windows : m * m;  // per tile

  at::parallel_for(0, ceil_div(N_, images) * row_blocks * splits, 1, [&](int64_t begin,
                                                                          int64_t end) {
    std::vector<float> staged(images * image_stride), v(positions * tiles * ci_p),
        products(positions * tiles * co_p), out(tiles * outputs * co_p);
    std::vector<float> partial;  // for the implicit GEMM, where it redoes windows
    for (int64_t item = begin; item < end; ++item) {
      const int64_t group = item / splits, b0 = item % splits * blocks_per_item;
      const int64_t b1 = std::min(blocks, b0 + blocks_per_item);
      const int64_t n0 = group / row_blocks * images, ty0 = group % row_blocks * rows;
      const int64_t nb = std::min(images, N_ - n0), rb = std::min(rows, tiles_h - ty0);
      for (int64_t i = 0; i < nb; ++i)
        stage_rows_channels_last<scalar_t>(kernels_, input_, n0 + i, m * ty0 - 1, m * rb + 2,
                                           cols, ci_p, staged.data() + i * image_stride);
      const WinogradTilesArgs args{m, staged.data(), image_stride, cols * ci_p, ci_p,
                                   nb, rb, tiles_w, co_p, b0 * kWinogradCoBlock,
                                   b1 * kWinogradCoBlock, u_.get(), wino_bias_.data(),
                                   v.data(), products.data(), out.data(), pool_};
      const int64_t co0 = b0 * kWinogradCoBlock;
      const int64_t count = std::min(b1 * kWinogradCoBlock, C_out_) - co0;
      const int64_t py0 = ty0 * window_side, py1 = std::min(Ho_, (ty0 + rb) * window_side);
      if (kernels_.winograd_tiles(args)) {
        // Output (pooled window or conv value) o of tile t, `side` x `side` per tile; the
        // target skips those past the output's odd sizes.
        const int64_t side = pool_ ? window_side : m;
        if (target_.sC == 1) {  // channels_last: each position's channels are contiguous
          for (int64_t t = 0; t < nb * rb * tiles_w; ++t)
            for (int64_t o = 0; o < outputs; ++o)
              target_.store(n0 + t / (rb * tiles_w), (ty0 + (t / tiles_w) % rb) * side + o / side,
                            t % tiles_w * side + o % side, co0, count,
                            out.data() + (t * outputs + o) * co_p + co0);
          continue;
        }
        // Otherwise row by row of each channel, in the order the output is laid out: position
        // by position (a cache line per value) took the unpooled op at 64 -> 64 32x32 N=64
        // 19.8 ms against 14.5 (Zen 4, 2 threads; the pooled op's 4x smaller output: the same).
        for (int64_t r = 0; r < nb * rb; ++r)  // the group's tile rows
          for (int64_t i = 0; i < side; ++i) {
            const float* row = out.data() + (r * tiles_w * outputs + i * side) * co_p + co0;
            target_.store_row(n0 + r / rb, (ty0 + r % rb) * side + i, co0, count,
                              [&](int64_t x) { return row + (x / side * outputs + x % side) * co_p; });
          }
        continue;
      }
      // A non-finite value somewhere in these tiles: the implicit GEMM, whose direct sums
      // give the stock NaN and Inf, redoes their windows from the same staged input.
      partial.resize((py1 - py0) * Wo_ * 4 * kGemmCoBlock);
      for (int64_t i = 0; i < nb; ++i)
        implicit_gemm_rows(staged.data() + i * image_stride, cols, ci_p, n0 + i, py0,
                           py1 - py0, b0, b1, partial.data());
    }
  });
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
      kernels_.transform_weights(m, g.data(), ci_p, u_.get() + b * ci_p * kWinogradCoBlock,
                                 plane, stream);
    }
  });
}

}  // namespace simplecnn::cpu
