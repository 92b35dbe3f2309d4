// The CPU kernel of simplecnn::_fused_forward: a driver that picks an algorithm per call
// (direct, Winograd, implicit GEMM), stages input rows and runs the kernels of the current
// instruction-set level (kernel_table.h) in parallel.
//
// float32, float16 and bfloat16 accumulate in float32; float64 accumulates in float64 with the
// generic direct kernel.
#include "../conv3x3_relu_maxpool2d.h"
#include "kernel_table.h"
#include "staging.h"
#include "implicit_gemm.h"
#include "winograd.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace simplecnn {
namespace cpu {
namespace {

// Copies input rows [y0, y0 + rows) of image n into `scratch` channels-last for the Winograd
// and implicit-GEMM kernels: [row][column][ci_padded], column c holding input column c - 1,
// zeros elsewhere. `transpose` is the level's (kernel_table.h).
template <typename scalar_t>
void stage_rows_channels_last(const CpuKernels& k, const at::Tensor& input, int64_t n, int64_t y0,
                              int64_t rows, int64_t cols, int64_t ci_padded, float* scratch) {
  const int64_t C = input.size(1), H = input.size(2), W = std::min(input.size(3), cols - 1);
  const int64_t sN = input.stride(0), sC = input.stride(1), sH = input.stride(2),
                sW = input.stride(3);
  const scalar_t* base = input.const_data_ptr<scalar_t>() + n * sN;
  std::fill(scratch, scratch + rows * cols * ci_padded, 0.0f);
  const int64_t y_begin = std::max<int64_t>(y0, 0), y_end = std::min(y0 + rows, H);
  if (sC == 1) {  // channels_last input: copy runs of channels
    for (int64_t y = y_begin; y < y_end; ++y)
      for (int64_t x = 0; x < W; ++x) {
        const scalar_t* src = base + y * sH + x * sW;
        float* dst = scratch + ((y - y0) * cols + 1 + x) * ci_padded;
        for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<float>(src[c]);
      }
    return;
  }
  if (sW == 1) {  // rows of NCHW input: [C][W] transposed, 8x8 at a time
    std::vector<float> converted;  // float16 / bfloat16 rows, in float32 first
    for (int64_t y = y_begin; y < y_end; ++y) {
      float* dst = scratch + ((y - y0) * cols + 1) * ci_padded;
      if constexpr (std::is_same_v<scalar_t, float>) {
        k.transpose(base + y * sH, sC, C, W, dst, ci_padded);
      } else {  // converted row by row, then transposed: 64 -> 64 32x32 bfloat16 N=64
                // 12.6 -> 10.4 ms against converting column by column
        converted.resize(C * W);
        for (int64_t c = 0; c < C; ++c)
          for (int64_t x = 0; x < W; ++x)
            converted[c * W + x] = static_cast<float>(base[c * sC + y * sH + x]);
        k.transpose(converted.data(), W, C, W, dst, ci_padded);
      }
    }
    return;
  }
  for (int64_t c = 0; c < C; ++c)  // channel by channel, as stage_rows reads
    for (int64_t y = y_begin; y < y_end; ++y) {
      const scalar_t* src = base + c * sC + y * sH;
      float* dst = scratch + ((y - y0) * cols + 1) * ci_padded + c;
      for (int64_t x = 0; x < W; ++x) dst[x * ci_padded] = static_cast<float>(src[x * sW]);
    }
}

// Which kernel computes the pooled windows of a call.
//  - Wide layers (16 channels in and out and more) take the Winograd path, measured faster
//    there, when the call has enough pooled windows to repay the weight transform (about 55
//    cycles per channel pair, against a gain of about one cycle per pair and window) and the
//    weights are finite (inf - inf in the weight transform would give NaN where the direct
//    sum gives +-inf): F(4x4, 3x3) where it has enough whole tiles, else F(2x2, 3x3).
//  - Other wide layers (batch 1 of a deep layer: 8x8, 4x4 images) take the implicit GEMM,
//    which fills its vector lanes with output channels, when the direct kernel would leave 10%
//    or more of its column chunks (16 at AVX2, 32 at AVX-512) outside the image. Measured
//    (AVX2) at batch 1: 256 -> 512, 4x4:
//    0.30 ms against the direct kernel's 1.35; 256 -> 256, 8x8: 0.53 against 1.17; 64 -> 64,
//    14x14: 0.11 against 0.14; with whole chunks the direct kernel wins (16 -> 32, 64x64: 0.21
//    against 0.28; 64 -> 128, 16x16, batch 16: 2.8 against 3.2).
//  - Everything else, and float64 (on every level), the direct kernel.
enum class Algorithm { kDirect, kWinograd2x2, kWinograd4x4, kImplicitGemm };

constexpr int64_t kWideMinChannels = 16;
// Input channels per implicit-GEMM call: the block's weights for them, 9 x 48 x 16 floats
// (27 KB), stay in L1 while every window of the image reads them.
constexpr int64_t kGemmCiBlock = 48;
constexpr int64_t kWinogradMinWindows = 64;
constexpr int64_t kWinograd4x4MinTiles = 64;

// How far Winograd may go (simplecnn_kernels.set_cpu_winograd, read per call): "4x4" allows
// F(4x4, 3x3) where it pays, "2x2" keeps to F(2x2, 3x3), "off" to the direct sums: the
// transforms' rounding error is larger than the direct sums' (winograd.h), which a user may
// not want to trade. The default comes from SIMPLECNN_CPU_WINOGRAD ("0" is "off"; unset: "4x4").
enum class WinogradSetting : int { kOff, k2x2Only, kAny };
constexpr const char* kWinogradSettingNames[] = {"off", "2x2", "4x4"};

WinogradSetting parse_winograd_setting(const std::string& text, const char* source) {
  for (int i = 0; i < 3; ++i)
    if (text == kWinogradSettingNames[i]) return static_cast<WinogradSetting>(i);
  TORCH_CHECK(false, source, "'", text, "': expected \"4x4\", \"2x2\" or \"off\"");
}

std::atomic<int> winograd_setting_now{-1};  // -1: not yet read from the environment

WinogradSetting winograd_setting() {
  const int now = winograd_setting_now.load(std::memory_order_relaxed);
  if (now >= 0) return static_cast<WinogradSetting>(now);
  const char* value = std::getenv("SIMPLECNN_CPU_WINOGRAD");
  const std::string text = value == nullptr || *value == '\0' ? "4x4" : value;
  const WinogradSetting from_env =
      text == "0" ? WinogradSetting::kOff : parse_winograd_setting(text, "SIMPLECNN_CPU_WINOGRAD=");
  int expected = -1;  // unless set_cpu_winograd came first
  winograd_setting_now.compare_exchange_strong(expected, static_cast<int>(from_env));
  return static_cast<WinogradSetting>(winograd_setting_now.load(std::memory_order_relaxed));
}

template <typename acc_t>
Algorithm choose_algorithm(const CpuKernels& k, const at::Tensor& input, const at::Tensor& weight) {
  if constexpr (!std::is_same_v<acc_t, float>) {
    return Algorithm::kDirect;
  } else {
    if (input.size(1) < kWideMinChannels || weight.size(0) < kWideMinChannels)
      return Algorithm::kDirect;
    const int64_t pooled_h = input.size(2) / 2, pooled_w = input.size(3) / 2;
    const int64_t windows = input.size(0) * pooled_h * pooled_w;
    const WinogradSetting setting = winograd_setting();
    if (windows >= kWinogradMinWindows && setting != WinogradSetting::kOff &&
        all_finite(weight)) {
      // F(4x4) where its GEMM work (36 products per 4x4 tile against F(2x2)'s 16 per window,
      // per channel pair) is at least 20% less, odd sizes' partial tiles included, and there
      // are enough tiles to repay its larger weight transform (36 positions against 16; at
      // 256 -> 512 channels 19 MB, which made 16 tiles 20% slower than F(2x2), 64 tiles 7%
      // faster). Otherwise F(2x2), which is also the more accurate.
      const int64_t tiles_4x4 = input.size(0) * ceil_div(pooled_h, 2) * ceil_div(pooled_w, 2);
      if (setting == WinogradSetting::kAny && tiles_4x4 >= kWinograd4x4MinTiles &&
          5 * 36 * tiles_4x4 <= 4 * 16 * windows)
        return Algorithm::kWinograd4x4;
      return Algorithm::kWinograd2x2;
    }
    // The direct kernel computes chunk_cols columns per call: the share inside the image.
    const int64_t chunk = k.direct.chunk_cols;
    const int64_t cols = 2 * pooled_w, lanes = ceil_div(cols, chunk) * chunk;
    return 10 * cols < 9 * lanes ? Algorithm::kImplicitGemm : Algorithm::kDirect;
  }
}

// Winograd work items: at most this many tiles per call (GEMM rows; measured best, larger
// groups' work space leaves L2), or one row of tiles where a row has more, and the cost of a
// call beyond its tiles (staging, streaming the transformed weights), in tiles. The GEMM takes
// its rows winograd_gemm_rows (kernel_table.h) at a time.
constexpr int64_t kWinograd2x2GroupTiles = 48;
constexpr int64_t kWinograd4x4GroupTiles = 32;
constexpr int64_t kCallOverheadTiles = 8;
// Transformed weights larger than this are streamed to memory (winograd.h: transform_weights).
constexpr int64_t kStreamedWeightBytes = 4 << 20;

// One call of the op: shapes, weights and the output, and the three ways to compute pooled
// windows (direct, Winograd, implicit GEMM).
template <typename scalar_t, typename acc_t>
class FusedForward {
 public:
  FusedForward(const at::Tensor& input, const at::Tensor& weight,
               const std::optional<at::Tensor>& bias, const at::Tensor& out)
      : input_(input),
        weight_(weight),
        kernels_(cpu_kernels()),
        direct_(direct_kernels<acc_t>(kernels_)),
        geometry_(input, weight, direct_),
        N_(input.size(0)), C_in_(input.size(1)), C_out_(weight.size(0)),
        Ho_(out.size(2)), Wo_(out.size(3)),
        bias_(read_bias<scalar_t, acc_t>(bias, weight.size(0))),
        target_(out) {
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
  // Where the direct kernel's pooled values go (direct_row's target): float32 and float64
  // outputs with contiguous rows are written in place; other dtypes and layouts go through a
  // small tile that is converted and scattered.
  struct OutputTarget {
    explicit OutputTarget(const at::Tensor& out)
        : ptr(out.mutable_data_ptr<scalar_t>()), sN(out.stride(0)), sC(out.stride(1)),
          sH(out.stride(2)), sW(out.stride(3)), in_place(std::is_same_v<scalar_t, acc_t> && sW == 1) {}
    // Per thread: the image and pooled row being written, the conversion tile.
    struct Row {
      const OutputTarget& out;
      scalar_t* row;
      acc_t tile[kMaxCoBlock * kMaxChunkPooled];
      void prepare(ChunkArgs<acc_t>& args, int64_t co0, int64_t x) {
        args.out = tile;
        args.out_ch_stride = kMaxChunkPooled;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          if (out.in_place) {
            args.out = row + co0 * out.sC + (x / 2) * out.sW;
            args.out_ch_stride = out.sC;
          }
        }
      }
      void finish(const ChunkArgs<acc_t>& args, int64_t co0, int cob, int64_t x) {
        if (out.in_place) return;
        scalar_t* dst = row + co0 * out.sC + (x / 2) * out.sW;
        for (int j = 0; j < cob; ++j)
          for (int i = 0; i < args.n_out; ++i)
            dst[j * out.sC + i * out.sW] = static_cast<scalar_t>(tile[j * kMaxChunkPooled + i]);
      }
    };
    Row row(int64_t n, int64_t py) const { return Row{*this, ptr + n * sN + py * sH, {}}; }
    // Channels [co0, co0 + count) of pooled output (n, py, px), from the float kernels.
    void store(int64_t n, int64_t py, int64_t px, int64_t co0, int64_t count,
               const float* values) const {
      scalar_t* dst = ptr + n * sN + py * sH + px * sW + co0 * sC;
      for (int64_t j = 0; j < count; ++j) dst[j * sC] = static_cast<scalar_t>(values[j]);
    }
    scalar_t* ptr;
    int64_t sN, sC, sH, sW;
    bool in_place;
  };

  // Per-thread buffers of the direct kernel.
  struct Workspace {
    Workspace(const FusedForward& f, int64_t scratch_rows)
        : scratch(scratch_rows * f.geometry_.row_stride),
          partial(2 * f.C_out_ * f.geometry_.chunk_cols) {}
    std::vector<acc_t> scratch;  // [row][channel][column]
    std::vector<acc_t> partial;  // partial sums across input-channel blocks
  };

  // Pooled row py of image n with the direct kernel; `rows` is the scratch at its top halo row.
  void direct_pooled_row(int64_t n, int64_t py, const acc_t* rows, Workspace& ws) {
    auto row = target_.row(n, py);
    direct_row(geometry_, direct_, rows, packed_.data(), bias_.data(), ws.partial.data(), row);
  }

  // Work items are (image, block of pooled rows). Whole images while there are enough of them
  // to keep every thread busy; smaller blocks for small batches, and for wide inputs so the
  // staged rows stay in L2. Each block re-stages its 2 halo rows.
  void run_direct() {
    packed_ = pack_direct_weights<scalar_t, acc_t>(weight_, geometry_.co_block);
    constexpr int64_t kScratchBudget = 256 * 1024;
    const int64_t want_items = 4 * at::get_num_threads();
    const int64_t row_stride = geometry_.row_stride;
    int64_t block_rows = Ho_;
    while (block_rows > 1 &&
           (N_ * ceil_div(Ho_, block_rows) < want_items ||
            (2 * block_rows + 2) * row_stride * int64_t(sizeof(acc_t)) > kScratchBudget)) {
      block_rows = ceil_div(block_rows, 2);
    }
    const int64_t blocks_per_image = ceil_div(Ho_, block_rows);
    at::parallel_for(0, N_ * blocks_per_image, 1, [&](int64_t begin, int64_t end) {
      Workspace ws(*this, 2 * block_rows + 2);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / blocks_per_image;
        const int64_t py0 = (item % blocks_per_image) * block_rows;
        const int64_t py1 = std::min(Ho_, py0 + block_rows);
        stage_rows<scalar_t, acc_t>(input_, n, 2 * py0 - 1, 2 * (py1 - py0) + 2,
                                    geometry_.padded_w, ws.scratch.data());
        for (int64_t py = py0; py < py1; ++py)
          direct_pooled_row(n, py, ws.scratch.data() + 2 * (py - py0) * row_stride, ws);
      }
    });
  }

  // Work items are (group of tiles, range of 16-channel output blocks). A group is several
  // tile rows of one image, or several whole images when images are small; its GEMMs read
  // each transformed weight once from memory (4 MB at 256 channels for F(2x2), 9 MB for
  // F(4x4)) and reuse it for every tile of the group, up to a group size whose work space
  // still fits L2. Output channels are split when there are too few groups to keep the
  // threads busy. The items' shape minimizes the busiest thread's work, in tiles x blocks:
  // ceil(items / threads) x (GEMM rows + kCallOverheadTiles) x blocks per item.
  void run_winograd() {
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

    at::parallel_for(0, ceil_div(N_, images) * row_blocks * splits, 1, [&](int64_t begin,
                                                                            int64_t end) {
      std::vector<float> staged(images * image_stride), v(positions * tiles * ci_p),
          products(positions * tiles * co_p), pooled(tiles * windows * co_p);
      std::vector<float> partial;  // for the implicit GEMM, where it redoes windows
      for (int64_t item = begin; item < end; ++item) {
        const int64_t group = item / splits, b0 = item % splits * blocks_per_item;
        const int64_t b1 = std::min(blocks, b0 + blocks_per_item);
        const int64_t n0 = group / row_blocks * images, ty0 = group % row_blocks * rows;
        const int64_t nb = std::min(images, N_ - n0), rb = std::min(rows, tiles_h - ty0);
        for (int64_t i = 0; i < nb; ++i)
          stage_rows_channels_last<scalar_t>(kernels_, input_, n0 + i, m * ty0 - 1, m * rb + 2, cols, ci_p,
                                             staged.data() + i * image_stride);
        const WinogradTilesArgs args{m, staged.data(), image_stride, cols * ci_p, ci_p,
                                     nb, rb, tiles_w, co_p, b0 * kWinogradCoBlock,
                                     b1 * kWinogradCoBlock, u_.get(), wino_bias_.data(),
                                     v.data(), products.data(), pooled.data()};
        const int64_t co0 = b0 * kWinogradCoBlock;
        const int64_t count = std::min(b1 * kWinogradCoBlock, C_out_) - co0;
        const int64_t py0 = ty0 * window_side, py1 = std::min(Ho_, (ty0 + rb) * window_side);
        if (kernels_.winograd_tiles(args)) {
          for (int64_t t = 0; t < nb * rb * tiles_w; ++t)
            for (int64_t w = 0; w < windows; ++w) {
              const int64_t py = py0 + (t / tiles_w) % rb * window_side + w / window_side;
              const int64_t px = t % tiles_w * window_side + w % window_side;
              if (py < py1 && px < Wo_)  // tiles may reach past odd pooled sizes
                target_.store(n0 + t / (rb * tiles_w), py, px, co0, count,
                              pooled.data() + (t * windows + w) * co_p + co0);
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

  // The bias in float32, zeros up to `size` (the channels padded to whole blocks).
  std::vector<float> padded_bias(int64_t size) const {
    std::vector<float> padded(size, 0.0f);
    for (int64_t co = 0; co < C_out_; ++co) padded[co] = static_cast<float>(bias_[co]);
    return padded;
  }

  // Output channels [16 b, 16 b + 16) of the weights as [ci][ky][kx][16] floats, zeros past
  // C_out: the implicit GEMM's layout, and the Winograd transform's input.
  void pack_gemm_block(const at::Tensor& weight, int64_t b, float* dst) const {
    static_assert(kGemmCoBlock == kWinogradCoBlock);
    const int64_t cob = std::min<int64_t>(kGemmCoBlock, C_out_ - b * kGemmCoBlock);
    const int64_t s0 = weight.stride(0), s1 = weight.stride(1), s2 = weight.stride(2),
                  s3 = weight.stride(3);
    const scalar_t* src = weight.const_data_ptr<scalar_t>() + b * kGemmCoBlock * s0;
    if (cob == kGemmCoBlock && weight.is_contiguous()) {  // rows of (ci, ky, kx)
      if constexpr (std::is_same_v<scalar_t, float>) {
        kernels_.transpose(src, s0, kGemmCoBlock, 9 * C_in_, dst, kGemmCoBlock);
      } else {  // float16 / bfloat16: the rows in float32 first, then transposed (512 -> 512
                // 4x4 bf16 N=1: 1.03 -> 0.71 ms against converting column by column)
        std::vector<float> rows(kGemmCoBlock * 9 * C_in_);
        for (int64_t i = 0; i < kGemmCoBlock * 9 * C_in_; ++i) rows[i] = static_cast<float>(src[i]);
        kernels_.transpose(rows.data(), 9 * C_in_, kGemmCoBlock, 9 * C_in_, dst, kGemmCoBlock);
      }
      return;
    }
    for (int64_t ci = 0; ci < C_in_; ++ci)  // the destination in order, 16 rows side by side
      for (int64_t k = 0; k < 9; ++k) {
        float* line = dst + (ci * 9 + k) * kGemmCoBlock;
        const scalar_t* column = src + ci * s1 + (k / 3) * s2 + (k % 3) * s3;
        for (int64_t j = 0; j < cob; ++j) line[j] = static_cast<float>(column[j * s0]);
        std::fill(line + cob, line + kGemmCoBlock, 0.0f);
      }
  }

  // Work items are (image, block of pooled rows, range of 16-channel blocks): with few windows
  // the output channels give the threads their work. An item stages its rows channels-last
  // (whole images but for tall ones), then runs every window for each of its channel blocks.
  void run_implicit_gemm() {
    constexpr int64_t kStagedBudget = 512 * 1024;  // bytes of staged input per item
    const int64_t blocks = ceil_div(C_out_, kGemmCoBlock), cols = 2 * Wo_ + 2;
    const int64_t rows = std::clamp<int64_t>(
        kStagedBudget / (2 * cols * C_in_ * int64_t(sizeof(float))) - 1, 1, Ho_);
    const int64_t row_blocks = ceil_div(Ho_, rows);
    const int64_t blocks_per_item =
        ceil_div(blocks, std::min(blocks, ceil_div(4 * at::get_num_threads(), N_ * row_blocks)));
    const int64_t splits = ceil_div(blocks, blocks_per_item);  // no item without blocks
    gemm_weights();  // before the threads start
    at::parallel_for(0, N_ * row_blocks * splits, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> staged((2 * rows + 2) * cols * C_in_);
      std::vector<float> partial(rows * Wo_ * 4 * kGemmCoBlock);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / (row_blocks * splits), py0 = (item / splits) % row_blocks * rows;
        const int64_t b0 = (item % splits) * blocks_per_item, rb = std::min(rows, Ho_ - py0);
        stage_rows_channels_last<scalar_t>(kernels_, input_, n, 2 * py0 - 1, 2 * rb + 2, cols, C_in_,
                                           staged.data());
        implicit_gemm_rows(staged.data(), cols, C_in_, n, py0, rb,
                           b0, std::min(blocks, b0 + blocks_per_item), partial.data());
      }
    });
  }

  // Pooled rows [py0, py0 + rows) of image n, output channel blocks [b0, b1), by the implicit
  // GEMM: `staged` holds the image's input from row 2*py0 - 1 and column -1 channels-last,
  // `cols` columns of `col_stride` floats; `partial` has room for rows x Wo x 4 x 16 floats.
  void implicit_gemm_rows(const float* staged, int64_t cols, int64_t col_stride, int64_t n,
                          int64_t py0, int64_t rows, int64_t b0, int64_t b1, float* partial) {
    const float* weights = gemm_weights();
    float pooled[kGemmCoBlock];
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t c0 = 0; c0 < C_in_; c0 += kGemmCiBlock) {
        const int64_t cib = std::min(kGemmCiBlock, C_in_ - c0);
        for (int64_t t = 0; t < rows * Wo_; ++t) {
          const int64_t py = t / Wo_, px = t % Wo_;  // py within the block
          const WindowGemmArgs args{staged + (2 * py * cols + 2 * px) * col_stride + c0,
                                    cols * col_stride,
                                    col_stride,
                                    cib,
                                    weights + (b * C_in_ + c0) * 9 * kGemmCoBlock,
                                    gemm_bias_.data() + b * kGemmCoBlock,
                                    pooled,
                                    partial + t * 4 * kGemmCoBlock,
                                    c0 == 0,
                                    c0 + cib == C_in_};
          kernels_.window_gemm(args);
          if (args.last)
            target_.store(n, py0 + py, px, b * kGemmCoBlock,
                          std::min<int64_t>(kGemmCoBlock, C_out_ - b * kGemmCoBlock), pooled);
        }
      }
  }

  // The implicit GEMM's packed weights and padded bias, made by whichever thread first needs
  // them (the Winograd path needs them only to redo windows with non-finite values). Every
  // packed value is written: no zero-filling 4.7 MB first (256 -> 512 channels).
  const float* gemm_weights() {
    std::call_once(gemm_once_, [&] {
      const int64_t blocks = ceil_div(C_out_, kGemmCoBlock);
      gemm_weights_.reset(new float[blocks * kGemmCoBlock * 9 * C_in_]);
      gemm_bias_ = padded_bias(blocks * kGemmCoBlock);
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b)
          pack_gemm_block(weight_, b, gemm_weights_.get() + b * 9 * C_in_ * kGemmCoBlock);
      });
    });
    return gemm_weights_.get();
  }

  // U = G g G^T per (co, ci) (the level's transform_weights), stored as
  // [(m+2)^2][co_padded / 16][ci_padded][16] with zeros in the padding. Filled block by block
  // of 16 output channels, in parallel: at 256 -> 512 channels it is 19 MB per call for F(4x4).
  void transform_weights(const at::Tensor& weight) {
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

  int winograd_m() const { return algorithm_ == Algorithm::kWinograd4x4 ? 4 : 2; }
  int64_t wino_ci() const { return ceil_div(C_in_, kWinogradCiAlign) * kWinogradCiAlign; }
  int64_t wino_co() const { return ceil_div(C_out_, kWinogradCoBlock) * kWinogradCoBlock; }

  const at::Tensor& input_;
  const at::Tensor& weight_;
  const CpuKernels& kernels_;  // the level's, read once per call
  const DirectKernels<acc_t>& direct_;
  const DirectGeometry geometry_;
  const int64_t N_, C_in_, C_out_, Ho_, Wo_;
  const std::vector<acc_t> bias_;
  const OutputTarget target_;
  Algorithm algorithm_ = Algorithm::kDirect;
  std::vector<acc_t> packed_;         // direct kernel
  std::once_flag gemm_once_;
  std::unique_ptr<float[]> gemm_weights_;  // implicit GEMM
  std::vector<float> gemm_bias_;
  struct AlignedDelete {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  std::unique_ptr<float[], AlignedDelete> u_;  // Winograd kernel, 64-byte aligned
  std::vector<float> wino_bias_;
};

std::string cpu_capability() { return cpu_kernels().name; }

std::string cpu_winograd() { return kWinogradSettingNames[static_cast<int>(winograd_setting())]; }

void set_cpu_winograd(const std::string& setting) {
  winograd_setting_now.store(static_cast<int>(parse_winograd_setting(setting, "Winograd setting ")),
                             std::memory_order_relaxed);
}

std::vector<std::string> cpu_capabilities() { return supported_capabilities(); }

void set_capability(const std::string& level) { set_cpu_capability(level); }

// The algorithm a call takes and the level of the kernel that computes it, as "winograd_4x4/avx2".
std::string cpu_algorithm(const at::Tensor& input, const at::Tensor& weight) {
  check_inputs(input, weight, std::nullopt);
  const CpuKernels& k = cpu_kernels();
  const bool f64 = input.scalar_type() == at::kDouble;
  const Algorithm algorithm =
      f64 ? choose_algorithm<double>(k, input, weight) : choose_algorithm<float>(k, input, weight);
  switch (algorithm) {
    case Algorithm::kWinograd2x2: return std::string("winograd_2x2/") + k.name;
    case Algorithm::kWinograd4x4: return std::string("winograd_4x4/") + k.name;
    case Algorithm::kImplicitGemm: return std::string("implicit_gemm/") + k.name;
    case Algorithm::kDirect: break;
  }
  return std::string("direct/") + (f64 ? "generic" : k.name);
}

}  // namespace
}  // namespace cpu

at::Tensor fused_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias) {
  check_inputs(input, weight, bias);
  cpu::winograd_setting();  // a bad SIMPLECNN_CPU_WINOGRAD fails every call, not only wide ones
  at::Tensor out = empty_output(input, weight);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "conv3x3_relu_maxpool2d_cpu", [&] {
                                    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>,
                                                                     double, float>;
                                    cpu::FusedForward<scalar_t, acc_t>(input, weight, bias, out).run();
                                  });
  return out;
}

}  // namespace simplecnn

TORCH_LIBRARY_FRAGMENT(simplecnn, m) {
  // The instruction-set level CPU calls take now ("avx512", "avx2" or "generic"), the levels
  // this CPU runs (best first), and a way to switch (for tests and benchmarks).
  m.def("_cpu_capability() -> str", &simplecnn::cpu::cpu_capability);
  m.def("_cpu_capabilities() -> str[]", &simplecnn::cpu::cpu_capabilities);
  m.def("_set_cpu_capability(str level) -> ()", &simplecnn::cpu::set_capability);
  // How far the CPU kernel may use Winograd: "4x4", "2x2" or "off".
  m.def("_cpu_winograd() -> str", &simplecnn::cpu::cpu_winograd);
  m.def("_set_cpu_winograd(str setting) -> ()", &simplecnn::cpu::set_cpu_winograd);
  // Which algorithm the CPU kernel picks for these arguments and the level of its kernel:
  // "direct", "winograd_4x4", "winograd_2x2" or "implicit_gemm", then "/" and the level.
  m.def("_cpu_algorithm(Tensor input, Tensor weight) -> str");
}

TORCH_LIBRARY_IMPL(simplecnn, CPU, m) {
  m.impl("_fused_forward", &simplecnn::fused_forward_cpu);
  m.impl("_cpu_algorithm", &simplecnn::cpu::cpu_algorithm);
}
