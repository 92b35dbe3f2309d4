// The CPU kernel of simplecnn::_fused_forward: a driver that stages padded input rows and
// runs a micro-kernel (pooled_chunk.h) per chunk of pooled outputs, in parallel over
// (image, block of pooled rows).
//
// float32, float16 and bfloat16 accumulate in float32 (the AVX2 kernel where the CPU has it,
// else the generic one); float64 accumulates in float64 with the generic kernel.
#include "../conv3x3_relu_maxpool2d.h"
#include "pooled_chunk.h"
#include "staging.h"
#include "implicit_gemm.h"
#include "winograd.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace simplecnn {
namespace cpu {
namespace {

// Copies input rows [y0, y0 + rows) of image n into `scratch` channels-last for the Winograd
// kernel: [row][column][ci_padded], column c holding input column c - 1, zeros elsewhere.
template <typename scalar_t>
void stage_rows_channels_last(const at::Tensor& input, int64_t n, int64_t y0, int64_t rows,
                              int64_t cols, int64_t ci_padded, float* scratch) {
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
//    sum gives +-inf).
//  - Other wide layers (batch 1 of a deep layer: 8x8, 4x4 images) take the implicit GEMM,
//    which fills its vector lanes with output channels, when the direct kernel would leave 10%
//    or more of its 16-column chunks outside the image. Measured at batch 1: 256 -> 512, 4x4:
//    0.30 ms against the direct kernel's 1.35; 256 -> 256, 8x8: 0.53 against 1.17; 64 -> 64,
//    14x14: 0.11 against 0.14; with whole chunks the direct kernel wins (16 -> 32, 64x64: 0.21
//    against 0.28; 64 -> 128, 16x16, batch 16: 2.8 against 3.2).
//  - Everything else, and every call without AVX2 or in float64, the direct kernel.
enum class Algorithm { kDirect, kWinograd, kImplicitGemm };

constexpr int64_t kWideMinChannels = 16;
// Input channels per implicit-GEMM call: the block's weights for them, 9 x 48 x 16 floats
// (27 KB), stay in L1 while every window of the image reads them.
constexpr int64_t kGemmCiBlock = 48;
constexpr int64_t kWinogradMinWindows = 64;

// SIMPLECNN_CPU_WINOGRAD=0 (read once) keeps every layer on the direct sums: Winograd's error
// bound is a few times the direct one (winograd.h), which a user may not want to trade.
bool winograd_allowed() {
  static const bool allowed = [] {
    const char* setting = std::getenv("SIMPLECNN_CPU_WINOGRAD");
    return setting == nullptr || std::string(setting) != "0";
  }();
  return allowed;
}

template <typename scalar_t, typename acc_t>
Algorithm choose_algorithm(const at::Tensor& input, const at::Tensor& weight) {
  if constexpr (!std::is_same_v<acc_t, float>) {
    return Algorithm::kDirect;
  } else {
    if (!use_avx2() || input.size(1) < kWideMinChannels || weight.size(0) < kWideMinChannels)
      return Algorithm::kDirect;
    const int64_t pooled_w = input.size(3) / 2;
    if (input.size(0) * (input.size(2) / 2) * pooled_w >= kWinogradMinWindows &&
        winograd_allowed() && all_finite(weight))
      return Algorithm::kWinograd;
    // The direct kernel computes kChunkCols columns per call: the share inside the image.
    const int64_t cols = 2 * pooled_w, lanes = ceil_div(cols, kChunkCols) * kChunkCols;
    return 10 * cols < 9 * lanes ? Algorithm::kImplicitGemm : Algorithm::kDirect;
  }
}
constexpr int64_t kWinogradTiles = 48;  // pooled windows per Winograd call (GEMM rows)

// One call of the op: shapes, weights and the output, and the three ways to compute pooled
// windows (direct, Winograd, implicit GEMM).
template <typename scalar_t, typename acc_t>
class FusedForward {
 public:
  FusedForward(const at::Tensor& input, const at::Tensor& weight,
               const std::optional<at::Tensor>& bias, const at::Tensor& out)
      : input_(input),
        weight_(weight),
        geometry_(input, weight),
        N_(input.size(0)), C_in_(input.size(1)), C_out_(weight.size(0)),
        Ho_(out.size(2)), Wo_(out.size(3)),
        bias_(read_bias<scalar_t, acc_t>(bias, weight.size(0))),
        target_(out) {
    algorithm_ = choose_algorithm<scalar_t, acc_t>(input, weight);
    if (algorithm_ == Algorithm::kWinograd) transform_weights(weight);
  }

  void run() {
    switch (algorithm_) {
      case Algorithm::kWinograd: return run_winograd();
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
      acc_t tile[kMaxChannelBlock * kChunkPooled];
      void prepare(ChunkArgs<acc_t>& args, int64_t co0, int64_t x) {
        args.out = tile;
        args.out_ch_stride = kChunkPooled;
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
            dst[j * out.sC + i * out.sW] = static_cast<scalar_t>(tile[j * kChunkPooled + i]);
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
        : scratch(scratch_rows * f.geometry_.row_stride), partial(2 * f.C_out_ * kChunkCols) {}
    std::vector<acc_t> scratch;  // [row][channel][column]
    std::vector<acc_t> partial;  // partial sums across input-channel blocks
  };

  // Pooled row py of image n with the direct kernel; `rows` is the scratch at its top halo row.
  void direct_pooled_row(int64_t n, int64_t py, const acc_t* rows, Workspace& ws) {
    auto row = target_.row(n, py);
    direct_row(geometry_, rows, packed().data(), bias_.data(), ws.partial.data(), row);
  }

  // Work items are (image, block of pooled rows). Whole images while there are enough of them
  // to keep every thread busy; smaller blocks for small batches, and for wide inputs so the
  // staged rows stay in L2. Each block re-stages its 2 halo rows.
  void run_direct() {
    packed();  // before the threads start
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

  // Work items are groups of about kWinogradTiles pooled windows: several pooled rows of one
  // image, or several whole images when images are small, so each GEMM has enough rows to
  // reuse the transformed weights (4 MB at 256 channels) across many windows.
  void run_winograd() {
    const int64_t threads = at::get_num_threads();
    int64_t images = 1, rows = Ho_;
    if (Ho_ * Wo_ >= kWinogradTiles) {
      rows = std::min(Ho_, ceil_div(kWinogradTiles, Wo_));
    } else {
      images = std::min(N_, ceil_div(kWinogradTiles, Ho_ * Wo_));
    }
    auto items = [&] { return ceil_div(N_, images) * ceil_div(Ho_, rows); };
    while (images > 1 && items() < 2 * threads) images = ceil_div(images, 2);
    while (rows > 1 && items() < 2 * threads) rows = ceil_div(rows, 2);
    const int64_t row_blocks = ceil_div(Ho_, rows);
    const int64_t cols = wino_cols(), ci_p = wino_ci(), co_p = wino_co();
    const int64_t image_stride = (2 * rows + 2) * cols * ci_p, tiles = images * rows * Wo_;

    at::parallel_for(0, items(), 1, [&](int64_t begin, int64_t end) {
      std::vector<float> staged(images * image_stride), v(16 * tiles * ci_p),
          m(16 * tiles * co_p), pooled(tiles * co_p);
      std::optional<Workspace> fallback;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n0 = (item / row_blocks) * images, py0 = (item % row_blocks) * rows;
        const int64_t nb = std::min(images, N_ - n0), rb = std::min(rows, Ho_ - py0);
        for (int64_t i = 0; i < nb; ++i)
          stage_rows_channels_last<scalar_t>(input_, n0 + i, 2 * py0 - 1, 2 * rb + 2, cols, ci_p,
                                             staged.data() + i * image_stride);
        const WinogradTilesArgs args{staged.data(), image_stride, cols * ci_p, ci_p, nb, rb,
                                     Wo_, co_p, u_.get(), wino_bias_.data(), v.data(),
                                     m.data(), pooled.data()};
        if (winograd_tiles_avx2(args)) {
          for (int64_t t = 0; t < nb * rb * Wo_; ++t)
            target_.store(n0 + t / (rb * Wo_), py0 + (t / Wo_) % rb, t % Wo_, 0, C_out_,
                          pooled.data() + t * co_p);
          continue;
        }
        // A non-finite value somewhere in these windows: the direct kernel redoes them.
        if (!fallback) fallback.emplace(*this, 4);
        for (int64_t n = n0; n < n0 + nb; ++n)
          for (int64_t py = py0; py < py0 + rb; ++py) {
            stage_rows<scalar_t, acc_t>(input_, n, 2 * py - 1, 4, geometry_.padded_w,
                                        fallback->scratch.data());
            direct_pooled_row(n, py, fallback->scratch.data(), *fallback);
          }
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
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (cob == kGemmCoBlock && weight.is_contiguous()) {  // rows of (ci, ky, kx)
        pack_gemm_block_avx2(src, s0, 9 * C_in_, dst);
        return;
      }
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
    const int64_t blocks = ceil_div(C_out_, kGemmCoBlock), cols = wino_cols();
    const int64_t rows = std::clamp<int64_t>(
        kStagedBudget / (2 * cols * C_in_ * int64_t(sizeof(float))) - 1, 1, Ho_);
    const int64_t row_blocks = ceil_div(Ho_, rows);
    const int64_t splits = std::min(blocks, ceil_div(4 * at::get_num_threads(), N_ * row_blocks));
    const int64_t blocks_per_item = ceil_div(blocks, splits);
    // Every packed value is written below: no zero-filling 4.7 MB first (256 -> 512 channels).
    const std::unique_ptr<float[]> weights(new float[blocks * kGemmCoBlock * 9 * C_in_]);
    const std::vector<float> bias = padded_bias(blocks * kGemmCoBlock);
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b)
        pack_gemm_block(weight_, b, weights.get() + b * 9 * C_in_ * kGemmCoBlock);
    });

    at::parallel_for(0, N_ * row_blocks * splits, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> staged((2 * rows + 2) * cols * C_in_);
      std::vector<float> partial(rows * Wo_ * 4 * kGemmCoBlock);
      float pooled[kGemmCoBlock];
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / (row_blocks * splits), py0 = (item / splits) % row_blocks * rows;
        const int64_t b0 = (item % splits) * blocks_per_item, rb = std::min(rows, Ho_ - py0);
        stage_rows_channels_last<scalar_t>(input_, n, 2 * py0 - 1, 2 * rb + 2, cols, C_in_,
                                           staged.data());
        for (int64_t b = b0; b < std::min(blocks, b0 + blocks_per_item); ++b)
          for (int64_t c0 = 0; c0 < C_in_; c0 += kGemmCiBlock) {
            const int64_t cib = std::min(kGemmCiBlock, C_in_ - c0);
            for (int64_t t = 0; t < rb * Wo_; ++t) {
              const int64_t py = t / Wo_, px = t % Wo_;  // py within the block
              const WindowGemmArgs args{staged.data() + (2 * py * cols + 2 * px) * C_in_ + c0,
                                        cols * C_in_,
                                        C_in_,
                                        cib,
                                        weights.get() + (b * C_in_ + c0) * 9 * kGemmCoBlock,
                                        bias.data() + b * kGemmCoBlock,
                                        pooled,
                                        partial.data() + t * 4 * kGemmCoBlock,
                                        c0 == 0,
                                        c0 + cib == C_in_};
              window_gemm_avx2(args);
              if (args.last)
                target_.store(n, py0 + py, px, b * kGemmCoBlock,
                              std::min<int64_t>(kGemmCoBlock, C_out_ - b * kGemmCoBlock), pooled);
            }
          }
      }
    });
  }

  // The direct kernel's packed weights, made by whichever thread first needs them (the
  // Winograd path needs them only to redo windows with non-finite values).
  const std::vector<acc_t>& packed() {
    std::call_once(packed_once_, [&] { packed_ = pack_direct_weights<scalar_t, acc_t>(weight_); });
    return packed_;
  }

  // U = G g G^T per (co, ci) (transform_weights_avx2), stored as
  // [16][co_padded / 16][ci_padded][16] with zeros in the padding. Filled block by block of 16
  // output channels, in parallel: at 256 -> 512 channels it is 8.4 MB per call.
  void transform_weights(const at::Tensor& weight) {
    const int64_t ci_p = wino_ci(), co_p = wino_co(), blocks = co_p / kWinogradCoBlock;
    u_.reset(new float[16 * co_p * ci_p]);  // every line is written below, padding included
    wino_bias_ = padded_bias(co_p);
    const int64_t plane = blocks * ci_p * kWinogradCoBlock;  // floats per tile position
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      // The block's weights as [ci_padded][tap][16] floats (pack_gemm_block), then per input
      // channel: the 16 positions of one (co, ci) lie a plane apart, all in one L1 set, so
      // transform 16 output channels into `lines` first and write each position's whole line.
      std::vector<float> g(ci_p * 9 * kWinogradCoBlock);
      float lines[16][kWinogradCoBlock];
      for (int64_t b = begin; b < end; ++b) {
        pack_gemm_block(weight, b, g.data());
        std::fill(g.begin() + C_in_ * 9 * kWinogradCoBlock, g.end(), 0.0f);  // padding: 0
        for (int64_t ci = 0; ci < ci_p; ++ci) {
          transform_weights_avx2(g.data() + ci * 9 * kWinogradCoBlock, lines);
          float* dst = u_.get() + (b * ci_p + ci) * kWinogradCoBlock;
          for (int p = 0; p < 16; ++p)
            std::copy(lines[p], lines[p] + kWinogradCoBlock, dst + p * plane);
        }
      }
    });
  }

  int64_t wino_ci() const { return ceil_div(C_in_, kWinogradCiAlign) * kWinogradCiAlign; }
  int64_t wino_co() const { return ceil_div(C_out_, kWinogradCoBlock) * kWinogradCoBlock; }
  int64_t wino_cols() const { return 2 * Wo_ + 2; }  // input columns -1 .. 2*Wo

  const at::Tensor& input_;
  const at::Tensor& weight_;
  const DirectGeometry geometry_;
  const int64_t N_, C_in_, C_out_, Ho_, Wo_;
  const std::vector<acc_t> bias_;
  const OutputTarget target_;
  Algorithm algorithm_ = Algorithm::kDirect;
  std::once_flag packed_once_;
  std::vector<acc_t> packed_;         // direct kernel
  std::unique_ptr<float[]> u_;  // Winograd kernel
  std::vector<float> wino_bias_;
};

std::string cpu_kernel_name() { return use_avx2() ? "avx2" : "generic"; }

std::string cpu_algorithm(const at::Tensor& input, const at::Tensor& weight) {
  check_inputs(input, weight, std::nullopt);
  Algorithm algorithm = Algorithm::kDirect;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cpu_algorithm",
                                  [&] {
                                    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>,
                                                                     double, float>;
                                    algorithm = choose_algorithm<scalar_t, acc_t>(input, weight);
                                  });
  switch (algorithm) {
    case Algorithm::kWinograd: return "winograd";
    case Algorithm::kImplicitGemm: return "implicit_gemm";
    case Algorithm::kDirect: break;
  }
  return "direct";
}

}  // namespace
}  // namespace cpu

at::Tensor fused_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias) {
  check_inputs(input, weight, bias);
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
  // Which CPU micro-kernel this process uses ("avx2" or "generic"), for tests and benchmarks.
  m.def("_cpu_kernel() -> str", &simplecnn::cpu::cpu_kernel_name);
  // Which algorithm the CPU kernel picks for these arguments ("direct", "winograd" or
  // "implicit_gemm").
  m.def("_cpu_algorithm(Tensor input, Tensor weight) -> str");
}

TORCH_LIBRARY_IMPL(simplecnn, CPU, m) {
  m.impl("_fused_forward", &simplecnn::fused_forward_cpu);
  m.impl("_cpu_algorithm", &simplecnn::cpu::cpu_algorithm);
}
