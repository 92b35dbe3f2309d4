// The forward driver's call object: shapes, weights, the output and the level's kernels of one
// call, and the algorithm it takes. Each algorithm's work is in its own file: forward_direct.h,
// forward_winograd.h, forward_implicit_gemm.h; conv3x3_relu_maxpool2d_cpu.cpp is the op.
#pragma once

#include "forward_algorithm.h"
#include "kernel_table.h"
#include "staging.h"
#include "work_items.h"

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <type_traits>
#include <vector>

namespace simplecnn::cpu {

// Outputs of the direct kernel larger than this are written past the caches (OutputTarget).
constexpr int64_t kStreamedOutputBytes = 2 << 20;

// One call of the op: shapes, weights and the output, and the three ways to compute pooled
// windows (direct, Winograd, implicit GEMM). Unpooled (conv3x3_relu2d), the same windows cover
// the conv output, and each stores its four ReLU'd conv values instead of their max.
template <typename scalar_t, typename acc_t>
class FusedForward {
 public:
  FusedForward(const at::Tensor& input, const at::Tensor& weight,
               const std::optional<at::Tensor>& bias, const at::Tensor& out, bool pool)
      : input_(input), weight_(weight), kernels_(cpu_kernels()), pool_(pool), N_(input.size(0)),
        C_in_(input.size(1)), C_out_(weight.size(0)),
        Ho_(pool ? out.size(2) : ceil_div(out.size(2), 2)),
        Wo_(pool ? out.size(3) : ceil_div(out.size(3), 2)),
        bias_(read_bias<scalar_t, acc_t>(bias, weight.size(0))), target_(out, pool, kernels_) {
    algorithm_ = choose_algorithm<acc_t>(kernels_, input, weight);
    if (algorithm_ == Algorithm::kWinograd2x2 || algorithm_ == Algorithm::kWinograd4x4)
      transform_weights(weight);
  }

  void run() {
    switch (algorithm_) {
      case Algorithm::kWinograd2x2:
      case Algorithm::kWinograd4x4: return run_winograd();
      case Algorithm::kImplicitGemm: return run_implicit_gemm();
      case Algorithm::kDirect: return run_direct();
    }
  }

 private:
  // Where the direct kernel's pooled (or unpooled: conv) values go (direct_row's target):
  // outputs with contiguous rows are written in place, by the kernel (float16 and bfloat16
  // converted as it stores them: ChunkArgs::out_16bit); other layouts go through a small tile
  // that is converted and scattered.
  struct OutputTarget {
    // The kernels store float32 / float64 as they are, float16 / bfloat16 from float32.
    static_assert(std::is_same_v<scalar_t, acc_t> ||
                  (std::is_same_v<acc_t, float> &&
                   storage_type<scalar_t>() != StorageType::kFloat));
    OutputTarget(const at::Tensor& out, bool pool, const CpuKernels& k)
        : k(k), ptr(out.mutable_data_ptr<scalar_t>()), sN(out.stride(0)), sC(out.stride(1)),
          sH(out.stride(2)), sW(out.stride(3)), H(out.size(2)), W(out.size(3)), pool(pool),
          in_place(sW == 1),
          // Outputs larger than the threads' L2 caches are streamed past them: the write then
          // needs no read of the line first. Measured on the seed layer (3 -> 18, 32x32, Zen 4,
          // 2 threads): N=256 (4.7 MB) 1.8 -> 1.45 ms, N=1024 7.5 -> 6.1; SimpleCNN N=256 the
          // same (its next layer reads the output from memory instead of L3).
          stream(pool && in_place && std::is_same_v<scalar_t, acc_t> &&
                 out.numel() * int64_t(sizeof(scalar_t)) > kStreamedOutputBytes) {}
    // Per thread: the image and pooled row being written (unpooled: its first conv row and how
    // many of the two are inside the output), the conversion tile.
    struct Row {
      Row(const OutputTarget& out, scalar_t* row, int rows) : out(out), row(row), rows(rows) {}
      const OutputTarget& out;
      scalar_t* row;
      int rows;
      // [channel][row][column]; pooled, [channel][column]. Not initialised: every value read
      // was written by the kernel first.
      acc_t tile[kMaxCoBlock * 2 * kMaxChunkCols];
      static constexpr int64_t kTileRow = kMaxChunkCols, kTileChannel = 2 * kMaxChunkCols;
      // The output's column of the chunk at conv column x.
      int64_t column(int64_t x) const { return out.pool ? x / 2 : x; }
      template <typename in_t>
      void prepare(ChunkArgs<acc_t, in_t>& args, int64_t co0, int64_t x) {
        args.out = tile;
        args.out_ch_stride = kTileChannel;
        args.out_row_stride = rows == 2 ? kTileRow : 0;
        if (!out.in_place) return;
        scalar_t* dst = row + co0 * out.sC + column(x);
        args.out_ch_stride = out.sC;
        args.out_row_stride = rows == 2 ? out.sH : 0;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          args.out = dst;
          args.stream_out = out.stream;
        } else {
          args.out_16bit = reinterpret_cast<uint16_t*>(dst);
          args.storage = storage_type<scalar_t>();
        }
      }
      template <typename in_t>
      void finish(const ChunkArgs<acc_t, in_t>& args, int64_t co0, int cob, int64_t x) {
        if (out.in_place) return;
        scalar_t* dst = row + co0 * out.sC + column(x) * out.sW;
        if (out.sW == 1) {  // NCHW: runs of columns
          for (int j = 0; j < cob; ++j)
            for (int r = 0; r < rows; ++r)
              store_run(out.k, tile + j * kTileChannel + r * kTileRow, args.n_out,
                        dst + j * out.sC + r * out.sH);
          return;
        }
        // Else converted run by run (store_run: float16 / bfloat16 through the level's
        // conversions), then written pixel by pixel: channels_last gets runs of channels.
        scalar_t stored[kMaxCoBlock * 2 * kMaxChunkCols];
        for (int j = 0; j < cob; ++j)
          for (int r = 0; r < rows; ++r) {
            const int64_t at = j * kTileChannel + r * kTileRow;
            store_run(out.k, tile + at, args.n_out, stored + at);
          }
        for (int r = 0; r < rows; ++r)
          for (int i = 0; i < args.n_out; ++i) {
            scalar_t* to = dst + r * out.sH + i * out.sW;
            for (int j = 0; j < cob; ++j)
              to[j * out.sC] = stored[j * kTileChannel + r * kTileRow + i];
          }
      }
    };
    // Pooled row py (unpooled: conv rows 2 py and 2 py + 1) of image n.
    Row row(int64_t n, int64_t py) const {
      if (pool) return Row(*this, ptr + n * sN + py * sH, 1);
      return Row(*this, ptr + n * sN + 2 * py * sH,
                 static_cast<int>(std::min<int64_t>(2, H - 2 * py)));
    }
    // Channels [co0, co0 + count) of output (n, y, x) (pooled or conv), from the float
    // kernels; nothing outside the output (windows and tiles reach past odd sizes).
    void store(int64_t n, int64_t y, int64_t x, int64_t co0, int64_t count,
               const float* values) const {
      if (y >= H || x >= W) return;
      scalar_t* dst = ptr + n * sN + y * sH + x * sW + co0 * sC;
      if (sC == 1) return store_run(k, values, count, dst);
      for (int64_t j = 0; j < count; ++j) dst[j * sC] = static_cast<scalar_t>(values[j]);
    }
    // Channels [co0, co0 + count) of output row (n, y), every column x from values at(x)[j]
    // (j the channel within the block): channel by channel, along the rows.
    template <typename ValuesAt>
    void store_row(int64_t n, int64_t y, int64_t co0, int64_t count, ValuesAt at) const {
      if (y >= H) return;
      for (int64_t j = 0; j < count; ++j) {
        scalar_t* dst = ptr + n * sN + (co0 + j) * sC + y * sH;
        if (std::is_same_v<scalar_t, float> || sW != 1) {
          for (int64_t x = 0; x < W; ++x) dst[x * sW] = static_cast<scalar_t>(at(x)[j]);
          continue;
        }
        constexpr int64_t kLine = 64;  // float16 / bfloat16: gathered, then converted at once
        float line[kLine];
        for (int64_t x0 = 0; x0 < W; x0 += kLine) {
          const int64_t m = std::min(kLine, W - x0);
          for (int64_t x = 0; x < m; ++x) line[x] = at(x0 + x)[j];
          store_run(k, line, m, dst + x0);
        }
      }
    }
    const CpuKernels& k;  // its conversions (staging.h: store_run)
    scalar_t* ptr;
    int64_t sN, sC, sH, sW, H, W;
    bool pool, in_place, stream;
  };

  // Each algorithm's driver, over its work items (work_items.h). The direct one runs the
  // kernels `direct` over input staged as their in_t (float32 values, or bfloat16 pairs).
  void run_direct();
  template <typename in_t>
  void run_direct(const DirectKernels<acc_t, in_t>& direct);
  void run_winograd();

  // The outputs of a Winograd item's tiles (`out`: WinogradTilesArgs::out) for channels
  // [co0, co0 + count), stored in the output's layout.
  void store_winograd_outputs(const float* out, const WinogradItems::Item& item, int64_t tiles_w,
                              int64_t co0, int64_t count) const;

  // The bias in float32, zeros up to `size` (the channels padded to whole blocks).
  std::vector<float> padded_bias(int64_t size) const {
    std::vector<float> padded(size, 0.0f);
    for (int64_t co = 0; co < C_out_; ++co) padded[co] = static_cast<float>(bias_[co]);
    return padded;
  }

  // Output channels [16 b, 16 b + 16) of the weights as [ci][ky][kx][16] floats, zeros past
  // C_out: the implicit GEMM's layout, and the Winograd transform's input.
  void pack_gemm_block(const at::Tensor& weight, int64_t b, float* dst) const;

  // An implicit-GEMM item stages its rows channels-last, then runs every window for each of
  // its channel blocks.
  void run_implicit_gemm();

  // Pooled rows [py0, py0 + rows) of image n, output channel blocks [b0, b1), by the implicit
  // GEMM: `staged` holds the image's input from row 2*py0 - 1 and column -1 channels-last,
  // `cols` columns of `col_stride` in_t (float, or bfloat16 pairs: an even count); `partial` has
  // room for rows x Wo x 4 x 16 floats.
  template <typename in_t>
  void implicit_gemm_rows(const in_t* staged, int64_t cols, int64_t col_stride, int64_t n,
                          int64_t py0, int64_t rows, int64_t b0, int64_t b1, float* partial);

  // The implicit GEMM's packed weights and padded bias, made by whichever thread first needs
  // them (the Winograd path needs them only to redo windows with non-finite values). Every
  // packed value is written: no zero-filling 4.7 MB first (256 -> 512 channels).
  template <typename in_t>
  const in_t* gemm_weights();

  // U = G g G^T per (co, ci) (the level's transform_weights), stored as
  // [(m+2)^2][co_padded / 16][ci_padded][16] with zeros in the padding. Filled block by block
  // of 16 output channels, in parallel: at 256 -> 512 channels it is 19 MB per call for F(4x4).
  void transform_weights(const at::Tensor& weight);

  int winograd_m() const { return algorithm_ == Algorithm::kWinograd4x4 ? 4 : 2; }
  int64_t wino_ci() const { return ceil_div(C_in_, kWinogradCiAlign) * kWinogradCiAlign; }
  int64_t wino_co() const { return ceil_div(C_out_, kWinogradCoBlock) * kWinogradCoBlock; }

  const at::Tensor& input_;
  const at::Tensor& weight_;
  const CpuKernels& kernels_;  // the level's, read once per call
  const bool pool_;            // false: conv3x3_relu2d
  // Ho_ x Wo_ pool windows: the pooled output's size; unpooled, the windows that cover the
  // output (ceil(H / 2) x ceil(W / 2)).
  const int64_t N_, C_in_, C_out_, Ho_, Wo_;
  const std::vector<acc_t> bias_;
  const OutputTarget target_;
  Algorithm algorithm_ = Algorithm::kDirect;
  std::once_flag gemm_once_;
  std::unique_ptr<float[]> gemm_weights_;          // implicit GEMM
  std::unique_ptr<uint16_t[]> gemm_weights_bf16_;  // bfloat16 pairs ([block][pair][k][16][2])
  std::vector<float> gemm_bias_;
  struct AlignedDelete {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  std::unique_ptr<float[], AlignedDelete> u_;  // Winograd kernel, 64-byte aligned
  std::vector<float> wino_bias_;
};

}  // namespace simplecnn::cpu
