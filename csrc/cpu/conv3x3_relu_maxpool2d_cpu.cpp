// The CPU kernel of simplecnn::_fused_forward: a driver that stages padded input rows and
// runs a micro-kernel (pooled_chunk.h) per chunk of pooled outputs, in parallel over
// (image, block of pooled rows).
//
// float32, float16 and bfloat16 accumulate in float32 (the AVX2 kernel where the CPU has it,
// else the generic one); float64 accumulates in float64 with the generic kernel.
#include "../conv3x3_relu_maxpool2d.h"
#include "pooled_chunk.h"
#include "winograd.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace simplecnn {
namespace cpu {
namespace {

template <typename T>
inline T max_keep_nan(T a, T b) {  // the stock max-pool's max: NaN wins
  return (a != a || a > b) ? a : b;
}

template <typename T>
inline T relu_keep_nan(T v) {
  return (v != v || v > T(0)) ? v : T(0);
}

// The portable micro-kernel: the same computation as chunk_avx2 in plain loops over
// fixed-size arrays, which the compiler vectorizes for whatever the build targets.
template <typename acc_t, int CO>
void chunk_generic(const ChunkArgs<acc_t>& a) {
  acc_t acc[2][CO][kChunkCols];
  for (int co = 0; co < CO; ++co) {
    for (int i = 0; i < kChunkCols; ++i) {
      acc[0][co][i] = a.first ? a.bias[co] : a.partial[(0 * CO + co) * kChunkCols + i];
      acc[1][co][i] = a.first ? a.bias[co] : a.partial[(1 * CO + co) * kChunkCols + i];
    }
  }
  const acc_t* in = a.in;
  const acc_t* w = a.weight;
  for (int64_t ci = 0; ci < a.c_in; ++ci, in += a.in_ch_stride, w += 9 * CO) {
    for (int r = 0; r < 4; ++r) {  // input row r feeds conv row 0 (ky = r) and 1 (ky = r - 1)
      const acc_t* row = in + r * a.in_row_stride;
      for (int kx = 0; kx < 3; ++kx) {
        for (int co = 0; co < CO; ++co) {
          if (r < 3) {
            const acc_t wv = w[(r * 3 + kx) * CO + co];
            for (int i = 0; i < kChunkCols; ++i) acc[0][co][i] += wv * row[kx + i];
          }
          if (r > 0) {
            const acc_t wv = w[((r - 1) * 3 + kx) * CO + co];
            for (int i = 0; i < kChunkCols; ++i) acc[1][co][i] += wv * row[kx + i];
          }
        }
      }
    }
  }
  if (!a.last) {
    for (int co = 0; co < CO; ++co)
      for (int i = 0; i < kChunkCols; ++i) {
        a.partial[(0 * CO + co) * kChunkCols + i] = acc[0][co][i];
        a.partial[(1 * CO + co) * kChunkCols + i] = acc[1][co][i];
      }
    return;
  }
  for (int co = 0; co < CO; ++co) {
    for (int j = 0; j < a.n_out; ++j) {
      const acc_t top = max_keep_nan(acc[0][co][2 * j], acc[0][co][2 * j + 1]);
      const acc_t bottom = max_keep_nan(acc[1][co][2 * j], acc[1][co][2 * j + 1]);
      a.out[co * a.out_ch_stride + j] = relu_keep_nan(max_keep_nan(top, bottom));
    }
  }
}

template <typename acc_t>
ChunkKernel<acc_t> generic_chunk_kernel(int co_block) {
  static constexpr ChunkKernel<acc_t> kKernels[kMaxChannelBlock] = {
      chunk_generic<acc_t, 1>, chunk_generic<acc_t, 2>, chunk_generic<acc_t, 3>};
  return kKernels[co_block - 1];
}

// AVX2 when the CPU has it, unless SIMPLECNN_CPU_CAPABILITY=generic (read once, as ATen reads
// ATEN_CPU_CAPABILITY) asks for the portable kernel.
bool use_avx2() {
  static const bool use = [] {
    const char* forced = std::getenv("SIMPLECNN_CPU_CAPABILITY");
    if (forced != nullptr && std::string(forced) == "generic") return false;
#if defined(__x86_64__)
    return avx2_chunk_kernel(1) != nullptr && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
#else
    return false;
#endif
  }();
  return use;
}

template <typename acc_t>
ChunkKernel<acc_t> chunk_kernel(int co_block) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if (use_avx2()) return avx2_chunk_kernel(co_block);
  }
  return generic_chunk_kernel<acc_t>(co_block);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Input channels per micro-kernel call. 32 channels x 4 rows x 18 columns of staged input
// (~20 KB with line overlap) fit L1 beside the weights; measured ~5-15% faster than no blocking
// at 64->64 and slower at 8 or 16 (partial sums are reloaded more often).
constexpr int64_t kInputChannelBlock = 32;

// Copies input rows [y0, y0 + rows) of image n, all channels, into `scratch` laid out as
// [row][channel][column] with column c holding input column c - 1: zeros at c = 0, past the
// right edge and in rows outside the image, so the micro-kernels never test a border.
template <typename scalar_t, typename acc_t>
void stage_rows(const at::Tensor& input, int64_t n, int64_t y0, int64_t rows, int64_t padded_w,
                acc_t* scratch) {
  const int64_t C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t sN = input.stride(0), sC = input.stride(1), sH = input.stride(2),
                sW = input.stride(3);
  const scalar_t* base = input.const_data_ptr<scalar_t>() + n * sN;
  // Channel by channel: an NCHW channel's rows are one contiguous run, which the hardware
  // prefetcher follows; row by row across channels it reads 2 cache lines per page and stalls.
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t y = y0 + r;
      acc_t* dst = scratch + (r * C + c) * padded_w;
      if (y < 0 || y >= H) {
        std::fill(dst, dst + padded_w, acc_t(0));
        continue;
      }
      const scalar_t* src = base + c * sC + y * sH;
      dst[0] = acc_t(0);
      if (sW == 1) {
        for (int64_t x = 0; x < W; ++x) dst[1 + x] = static_cast<acc_t>(src[x]);
      } else {
        for (int64_t x = 0; x < W; ++x) dst[1 + x] = static_cast<acc_t>(src[x * sW]);
      }
      std::fill(dst + 1 + W, dst + padded_w, acc_t(0));
    }
  }
}

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

// Wide layers take the Winograd path (measured faster from 16 channels in and out on) when the
// call has enough pooled windows to repay the weight transform (about 55 cycles per channel
// pair, against a gain of about one cycle per pair and window). It needs the AVX2 kernel,
// float32 accumulation and finite weights (inf - inf in the weight transform would give NaN
// where the direct sum gives +-inf).
constexpr int64_t kWinogradMinChannels = 16;
constexpr int64_t kWinogradMinWindows = 64;

template <typename scalar_t>
bool all_finite(const at::Tensor& weight) {
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  const int64_t s0 = weight.stride(0), s1 = weight.stride(1), s2 = weight.stride(2),
                s3 = weight.stride(3);
  bool finite = true;
  for (int64_t co = 0; co < weight.size(0); ++co)
    for (int64_t ci = 0; ci < weight.size(1); ++ci)
      for (int64_t k = 0; k < 9; ++k)
        finite &= std::isfinite(
            static_cast<float>(w[co * s0 + ci * s1 + (k / 3) * s2 + (k % 3) * s3]));
  return finite;
}

template <typename scalar_t, typename acc_t>
bool use_winograd(const at::Tensor& input, const at::Tensor& weight) {
  if constexpr (!std::is_same_v<acc_t, float>) {
    return false;
  } else {
    return use_avx2() && input.size(1) >= kWinogradMinChannels &&
           weight.size(0) >= kWinogradMinChannels &&
           input.size(0) * (input.size(2) / 2) * (input.size(3) / 2) >= kWinogradMinWindows &&
           all_finite<scalar_t>(weight);
  }
}
constexpr int64_t kWinogradTiles = 48;  // pooled windows per Winograd call (GEMM rows)

// One call of the op: shapes, packed weights and the output, and the two ways to compute
// pooled rows of one image.
template <typename scalar_t, typename acc_t>
class FusedForward {
 public:
  FusedForward(const at::Tensor& input, const at::Tensor& weight,
               const std::optional<at::Tensor>& bias, const at::Tensor& out)
      : input_(input),
        weight_(weight),
        N_(input.size(0)), C_in_(input.size(1)), W_(input.size(3)),
        C_out_(weight.size(0)), Ho_(out.size(2)), Wo_(out.size(3)),
        out_ptr_(out.mutable_data_ptr<scalar_t>()),
        oN_(out.stride(0)), oC_(out.stride(1)), oH_(out.stride(2)), oW_(out.stride(3)) {
    read_bias(bias);
    // The last chunk of a row reads up to column round_up(2*Wo, kChunkCols) + 1 of the scratch.
    padded_w_ = std::max(W_ + 2, ceil_div(2 * Wo_, kChunkCols) * kChunkCols + 2);
    row_stride_ = C_in_ * padded_w_;
    winograd_ = use_winograd<scalar_t, acc_t>(input, weight);
    if (winograd_) transform_weights(weight);
    // float32 and float64 outputs with contiguous rows are written in place by the direct
    // kernel; other dtypes and layouts go through a small tile that is converted and scattered.
    write_in_place_ = std::is_same_v<scalar_t, acc_t> && oW_ == 1;
  }

  void run() {
    if (winograd_) {
      run_winograd();
    } else {
      run_direct();
    }
  }

 private:
  // Per-thread buffers of the direct kernel.
  struct Workspace {
    Workspace(const FusedForward& f, int64_t scratch_rows)
        : scratch(scratch_rows * f.row_stride_), partial(2 * f.C_out_ * kChunkCols) {}
    std::vector<acc_t> scratch;  // [row][channel][column]
    std::vector<acc_t> partial;  // partial sums across input-channel blocks
    acc_t tile[kMaxChannelBlock * kChunkPooled];
  };

  // Work items are (image, block of pooled rows). Whole images while there are enough of them
  // to keep every thread busy; smaller blocks for small batches, and for wide inputs so the
  // staged rows stay in L2. Each block re-stages its 2 halo rows.
  void run_direct() {
    pack_weights();
    constexpr int64_t kScratchBudget = 256 * 1024;
    const int64_t want_items = 4 * at::get_num_threads();
    int64_t block_rows = Ho_;
    while (block_rows > 1 &&
           (N_ * ceil_div(Ho_, block_rows) < want_items ||
            (2 * block_rows + 2) * row_stride_ * int64_t(sizeof(acc_t)) > kScratchBudget)) {
      block_rows = ceil_div(block_rows, 2);
    }
    const int64_t blocks_per_image = ceil_div(Ho_, block_rows);
    at::parallel_for(0, N_ * blocks_per_image, 1, [&](int64_t begin, int64_t end) {
      Workspace ws(*this, 2 * block_rows + 2);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / blocks_per_image;
        const int64_t py0 = (item % blocks_per_image) * block_rows;
        const int64_t py1 = std::min(Ho_, py0 + block_rows);
        stage_rows<scalar_t, acc_t>(input_, n, 2 * py0 - 1, 2 * (py1 - py0) + 2, padded_w_,
                                    ws.scratch.data());
        for (int64_t py = py0; py < py1; ++py)
          direct_row(n, py, ws.scratch.data() + 2 * (py - py0) * row_stride_, ws);
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
                                     Wo_, co_p, u_.data(), wino_bias_.data(), v.data(),
                                     m.data(), pooled.data()};
        if (winograd_tiles_avx2(args)) {
          for (int64_t t = 0; t < nb * rb * Wo_; ++t) {
            const int64_t n = n0 + t / (rb * Wo_), py = py0 + (t / Wo_) % rb, px = t % Wo_;
            scalar_t* dst = out_ptr_ + n * oN_ + py * oH_ + px * oW_;
            for (int64_t co = 0; co < C_out_; ++co)
              dst[co * oC_] = static_cast<scalar_t>(pooled[t * co_p + co]);
          }
          continue;
        }
        // A non-finite value somewhere in these windows: the direct kernel redoes them.
        if (!fallback) {
          pack_weights();
          fallback.emplace(*this, 4);
        }
        for (int64_t n = n0; n < n0 + nb; ++n)
          for (int64_t py = py0; py < py0 + rb; ++py) {
            stage_rows<scalar_t, acc_t>(input_, n, 2 * py - 1, 4, padded_w_,
                                        fallback->scratch.data());
            direct_row(n, py, fallback->scratch.data(), *fallback);
          }
      }
    });
  }

  // Weights packed for the direct kernel (once, by whichever thread first needs them) per
  // block of kMaxChannelBlock output channels as [c_in][ky][kx][co], the order the
  // micro-kernels read them; the block starting at channel co0 starts at co0*c_in*9.
  void pack_weights() {
    std::call_once(packed_once_, [&] {
      packed_.resize(C_out_ * C_in_ * 9);
      const scalar_t* w = weight_.const_data_ptr<scalar_t>();
      const int64_t s0 = weight_.stride(0), s1 = weight_.stride(1), s2 = weight_.stride(2),
                    s3 = weight_.stride(3);
      for (int64_t co0 = 0; co0 < C_out_; co0 += kMaxChannelBlock) {
        const int64_t cob = std::min<int64_t>(kMaxChannelBlock, C_out_ - co0);
        acc_t* dst = packed_.data() + co0 * C_in_ * 9;
        for (int64_t ci = 0; ci < C_in_; ++ci)
          for (int64_t k = 0; k < 9; ++k)
            for (int64_t j = 0; j < cob; ++j)
              dst[(ci * 9 + k) * cob + j] = static_cast<acc_t>(
                  w[(co0 + j) * s0 + ci * s1 + (k / 3) * s2 + (k % 3) * s3]);
      }
    });
  }

  void read_bias(const std::optional<at::Tensor>& bias) {
    bias_.assign(C_out_, acc_t(0));
    if (bias.has_value()) {
      const scalar_t* b = bias->const_data_ptr<scalar_t>();
      for (int64_t co = 0; co < C_out_; ++co)
        bias_[co] = static_cast<acc_t>(b[co * bias->stride(0)]);
    }
  }

  // U = G g G^T per (co, ci), G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], computed in double,
  // stored as [16][co_padded / 16][ci_padded][16] with zeros in the padding. Filled block by
  // block of 16 output channels, in parallel: at 256 channels it is 4 MB per call.
  void transform_weights(const at::Tensor& weight) {
    const int64_t ci_p = wino_ci(), co_p = wino_co(), blocks = co_p / kWinogradCoBlock;
    u_.resize(16 * co_p * ci_p);  // every line is written below, padding included
    wino_bias_.assign(co_p, 0.0f);
    for (int64_t co = 0; co < C_out_; ++co) wino_bias_[co] = static_cast<float>(bias_[co]);
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    const int64_t s0 = weight.stride(0), s1 = weight.stride(1), s2 = weight.stride(2),
                  s3 = weight.stride(3);
    const int64_t plane = blocks * ci_p * kWinogradCoBlock;  // floats per tile position
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      // The 16 positions of one (co, ci) lie a plane apart, all in one L1 set: gather a block
      // of 16 output channels in `lines` first, then write each position's whole cache line.
      float lines[16][kWinogradCoBlock];
      for (int64_t b = begin; b < end; ++b)
        for (int64_t ci = 0; ci < ci_p; ++ci) {
          std::fill(&lines[0][0], &lines[0][0] + 16 * kWinogradCoBlock, 0.0f);  // padding: 0
          for (int64_t j = 0; ci < C_in_ && j < kWinogradCoBlock && b * kWinogradCoBlock + j < C_out_;
               ++j) {
            const int64_t co = b * kWinogradCoBlock + j;
            double g[3][3], gg[4][3];
            for (int y = 0; y < 3; ++y)
              for (int x = 0; x < 3; ++x)
                g[y][x] = static_cast<double>(w[co * s0 + ci * s1 + y * s2 + x * s3]);
            for (int x = 0; x < 3; ++x) {  // G g
              gg[0][x] = g[0][x];
              gg[1][x] = 0.5 * (g[0][x] + g[1][x] + g[2][x]);
              gg[2][x] = 0.5 * (g[0][x] - g[1][x] + g[2][x]);
              gg[3][x] = g[2][x];
            }
            for (int y = 0; y < 4; ++y) {  // (G g) G^T
              lines[y * 4 + 0][j] = static_cast<float>(gg[y][0]);
              lines[y * 4 + 1][j] = static_cast<float>(0.5 * (gg[y][0] + gg[y][1] + gg[y][2]));
              lines[y * 4 + 2][j] = static_cast<float>(0.5 * (gg[y][0] - gg[y][1] + gg[y][2]));
              lines[y * 4 + 3][j] = static_cast<float>(gg[y][2]);
            }
          }
          float* dst = u_.data() + (b * ci_p + ci) * kWinogradCoBlock;
          for (int p = 0; p < 16; ++p)
            std::copy(lines[p], lines[p] + kWinogradCoBlock, dst + p * plane);
        }
    });
  }

  int64_t wino_ci() const { return ceil_div(C_in_, kWinogradCiAlign) * kWinogradCiAlign; }
  int64_t wino_co() const { return ceil_div(C_out_, kWinogradCoBlock) * kWinogradCoBlock; }
  int64_t wino_cols() const { return 2 * Wo_ + 2; }  // input columns -1 .. 2*Wo

  // Pooled row py of image n with the direct kernel; `rows` is the direct-layout scratch at
  // the row's top halo row (input row 2*py - 1).
  void direct_row(int64_t n, int64_t py, const acc_t* rows, Workspace& ws) {
    for (int64_t x = 0; x < 2 * Wo_; x += kChunkCols) {
      const int n_out = static_cast<int>(std::min<int64_t>(kChunkPooled, Wo_ - x / 2));
      // Input channels in blocks, all output channels per block: the chunk's input rows for
      // one block stay in L1 while every output channel reads them.
      for (int64_t ci0 = 0; ci0 < C_in_; ci0 += kInputChannelBlock) {
        const int64_t cib = std::min(kInputChannelBlock, C_in_ - ci0);
        const bool last = ci0 + cib == C_in_;
        for (int64_t co0 = 0; co0 < C_out_; co0 += kMaxChannelBlock) {
          const int cob = static_cast<int>(std::min<int64_t>(kMaxChannelBlock, C_out_ - co0));
          ChunkArgs<acc_t> args{rows + ci0 * padded_w_ + x,
                                row_stride_,
                                padded_w_,
                                cib,
                                packed_.data() + (co0 * C_in_ + ci0 * cob) * 9,
                                bias_.data() + co0,
                                ws.tile,
                                kChunkPooled,
                                n_out,
                                ws.partial.data() + co0 * 2 * kChunkCols,
                                ci0 == 0,
                                last};
          scalar_t* dst = out_ptr_ + n * oN_ + co0 * oC_ + py * oH_ + (x / 2) * oW_;
          if constexpr (std::is_same_v<scalar_t, acc_t>) {
            if (write_in_place_) {
              args.out = dst;
              args.out_ch_stride = oC_;
            }
          }
          chunk_kernel<acc_t>(cob)(args);
          if (last && !write_in_place_) {
            for (int j = 0; j < cob; ++j)
              for (int i = 0; i < n_out; ++i)
                dst[j * oC_ + i * oW_] = static_cast<scalar_t>(ws.tile[j * kChunkPooled + i]);
          }
        }
      }
    }
  }

  const at::Tensor& input_;
  const at::Tensor& weight_;
  const int64_t N_, C_in_, W_, C_out_, Ho_, Wo_;
  scalar_t* const out_ptr_;
  const int64_t oN_, oC_, oH_, oW_;
  int64_t padded_w_ = 0, row_stride_ = 0;
  bool winograd_ = false, write_in_place_ = false;
  std::once_flag packed_once_;
  std::vector<acc_t> packed_, bias_;  // direct kernel
  std::vector<float> u_, wino_bias_;  // Winograd kernel
};

std::string cpu_kernel_name() { return use_avx2() ? "avx2" : "generic"; }

std::string cpu_algorithm(const at::Tensor& input, const at::Tensor& weight) {
  check_inputs(input, weight, std::nullopt);
  bool winograd = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cpu_algorithm",
                                  [&] {
                                    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>,
                                                                     double, float>;
                                    winograd = use_winograd<scalar_t, acc_t>(input, weight);
                                  });
  return winograd ? "winograd" : "direct";
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
  // Which algorithm the CPU kernel picks for these arguments ("direct" or "winograd").
  m.def("_cpu_algorithm(Tensor input, Tensor weight) -> str");
}

TORCH_LIBRARY_IMPL(simplecnn, CPU, m) {
  m.impl("_fused_forward", &simplecnn::fused_forward_cpu);
  m.impl("_cpu_algorithm", &simplecnn::cpu::cpu_algorithm);
}
