// How each forward driver splits a call into work items (at::parallel_for's indices), as pure
// arithmetic on the call's sizes and the thread count: the drivers (forward_direct.h,
// forward_winograd.h, forward_implicit_gemm.h) read their items from here, and the private op
// _cpu_work_items lists them for a test that every output is written by exactly one item
// (overlapping items would write identical values, which no test of the values can see).
#pragma once

#include "implicit_gemm.h"
#include "staging.h"

#include <algorithm>
#include <cstdint>
#include <limits>

namespace simplecnn::cpu {

// The direct path's work items: (image, block of window rows). Whole images while there are
// enough of them to keep every thread busy; smaller blocks for small batches, and for wide
// inputs so the staged rows (2 per window row and 2 halo rows, `row_bytes` each) stay in L2.
// Each block re-stages its 2 halo rows.
struct DirectItems {
  DirectItems(int64_t n, int64_t ho, int64_t row_bytes, int64_t threads) : ho(ho), block_rows(ho) {
    constexpr int64_t kScratchBudget = 256 * 1024;
    while (block_rows > 1 && (n * ceil_div(ho, block_rows) < 4 * threads ||
                              (2 * block_rows + 2) * row_bytes > kScratchBudget)) {
      block_rows = ceil_div(block_rows, 2);
    }
    blocks_per_image = ceil_div(ho, block_rows);
    count = n * blocks_per_image;
  }

  // Item `item`: window rows [py0, py1) of image n, every output channel.
  struct Item {
    int64_t n, py0, py1;
  };
  Item operator[](int64_t item) const {
    const int64_t py0 = item % blocks_per_image * block_rows;
    return {item / blocks_per_image, py0, std::min(ho, py0 + block_rows)};
  }

  int64_t ho, block_rows, blocks_per_image, count;
};

// The implicit GEMM's work items: (image, block of window rows, range of 16-channel output
// blocks): with few windows the output channels give the threads their work. An item stages
// its rows channels-last (whole images but for tall ones, within kStagedBudget).
struct ImplicitGemmItems {
  ImplicitGemmItems(int64_t n, int64_t ho, int64_t wo, int64_t c_in, int64_t c_out, int64_t threads)
      : ho(ho), cols(2 * wo + 2), blocks(ceil_div(c_out, kGemmCoBlock)) {
    constexpr int64_t kStagedBudget = 512 * 1024;  // bytes of staged input per item
    rows = std::clamp<int64_t>(kStagedBudget / (2 * cols * c_in * int64_t(sizeof(float))) - 1, 1,
                               ho);
    row_blocks = ceil_div(ho, rows);
    blocks_per_item = ceil_div(blocks, std::min(blocks, ceil_div(4 * threads, n * row_blocks)));
    splits = ceil_div(blocks, blocks_per_item);  // no item without blocks
    count = n * row_blocks * splits;
  }

  // Item `item`: window rows [py0, py0 + rows) of image n, output blocks [b0, b1).
  struct Item {
    int64_t n, py0, rows, b0, b1;
  };
  Item operator[](int64_t item) const {
    const int64_t py0 = item / splits % row_blocks * rows, b0 = item % splits * blocks_per_item;
    return {item / (row_blocks * splits), py0, std::min(rows, ho - py0), b0,
            std::min(blocks, b0 + blocks_per_item)};
  }

  int64_t ho;
  int64_t cols;    // staged columns: 2 per window and the two borders
  int64_t blocks;  // 16-channel output blocks
  int64_t rows;    // window rows per item, at most
  int64_t row_blocks, blocks_per_item, splits, count;
};

// Winograd work items: at most this many tiles per call (GEMM rows; measured best, larger
// groups' work space leaves L2), or one row of tiles where a row has more, and the cost of a
// call beyond its tiles (staging, streaming the transformed weights), in tiles. The GEMM takes
// its rows winograd_gemm_rows (kernel_table.h) at a time.
constexpr int64_t kWinograd2x2GroupTiles = 48;
constexpr int64_t kWinograd4x4GroupTiles = 32;
constexpr int64_t kCallOverheadTiles = 8;
// The Winograd path's work items: groups of tiles (several tile rows of one image, or several
// whole images when images are small), times ranges of 16-channel output blocks. A group's
// GEMMs read each transformed weight once from memory (4 MB at 256 channels for F(2x2), 9 MB
// for F(4x4)) and reuse it for every tile of the group, up to a group size whose work space
// still fits L2. Output channels are split when there are too few groups to keep the threads
// busy. The items' shape minimizes the busiest thread's work, in tiles x blocks:
// ceil(items / threads) x (GEMM rows + kCallOverheadTiles) x blocks per item.
struct WinogradItems {
  // m: F(m x m, 3x3); n images of ho x wo pool windows; `blocks` 16-channel output blocks;
  // GEMM calls of up to rows_per_call tiles.
  WinogradItems(int m, int64_t n, int64_t ho, int64_t wo, int64_t blocks, int64_t rows_per_call,
                int64_t threads)
      : n(n), tiles_h(ceil_div(ho, m / 2)), tiles_w(ceil_div(wo, m / 2)), blocks(blocks),
        rows(tiles_h) {
    const int64_t per_image = tiles_h * tiles_w;
    const int64_t max_tiles = m == 2 ? kWinograd2x2GroupTiles : kWinograd4x4GroupTiles;
    int64_t best = std::numeric_limits<int64_t>::max();
    auto consider = [&](int64_t i, int64_t r, int64_t s) {
      const int64_t items = ceil_div(n, i) * ceil_div(tiles_h, r) * s;
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
        for (int64_t i = std::min(n, max_tiles / per_image); i >= 1; --i) consider(i, tiles_h, s);
      }
    }
    row_blocks = ceil_div(tiles_h, rows);
    blocks_per_item = ceil_div(blocks, splits);
    count = ceil_div(n, images) * row_blocks * splits;
  }

  // Item `item`: images [n0, n0 + images), tile rows [ty0, ty0 + rows), every tile column,
  // output blocks [b0, b1).
  struct Item {
    int64_t n0, images, ty0, rows, b0, b1;
  };
  Item operator[](int64_t item) const {
    const int64_t group = item / splits, b0 = item % splits * blocks_per_item;
    const int64_t n0 = group / row_blocks * images, ty0 = group % row_blocks * rows;
    const int64_t b1 = std::min(blocks, b0 + blocks_per_item);
    return {n0, std::min(images, n - n0), ty0, std::min(rows, tiles_h - ty0), b0, b1};
  }

  int64_t n, tiles_h, tiles_w, blocks;
  // A group: `images` whole images, or `rows` tile rows of one image; its blocks split
  // `splits` ways.
  int64_t images = 1, rows, splits = 1;
  int64_t row_blocks, blocks_per_item, count;
};

}  // namespace simplecnn::cpu
