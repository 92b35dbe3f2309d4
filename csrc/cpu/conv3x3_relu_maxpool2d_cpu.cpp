// The CPU kernel of simplecnn::_fused_forward: a driver that stages padded input rows and
// runs a micro-kernel (pooled_chunk.h) per chunk of pooled outputs, in parallel over
// (image, block of pooled rows).
//
// float32, float16 and bfloat16 accumulate in float32 (the AVX2 kernel where the CPU has it,
// else the generic one); float64 accumulates in float64 with the generic kernel.
#include "../conv3x3_relu_maxpool2d.h"
#include "pooled_chunk.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
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
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t y = y0 + r;
    for (int64_t c = 0; c < C; ++c) {
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

template <typename scalar_t, typename acc_t>
void forward_impl(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, const at::Tensor& out) {
  const int64_t N = input.size(0), C_in = input.size(1), W = input.size(3);
  const int64_t C_out = weight.size(0), Ho = out.size(2), Wo = out.size(3);

  // Weights packed per block of kMaxChannelBlock output channels as [c_in][ky][kx][co], the
  // order the micro-kernels read them; the block starting at channel co0 starts at co0*c_in*9.
  std::vector<acc_t> packed(C_out * C_in * 9);
  {
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    const int64_t s0 = weight.stride(0), s1 = weight.stride(1), s2 = weight.stride(2),
                  s3 = weight.stride(3);
    for (int64_t co0 = 0; co0 < C_out; co0 += kMaxChannelBlock) {
      const int64_t cob = std::min<int64_t>(kMaxChannelBlock, C_out - co0);
      acc_t* dst = packed.data() + co0 * C_in * 9;
      for (int64_t ci = 0; ci < C_in; ++ci)
        for (int64_t k = 0; k < 9; ++k)
          for (int64_t j = 0; j < cob; ++j)
            dst[(ci * 9 + k) * cob + j] =
                static_cast<acc_t>(w[(co0 + j) * s0 + ci * s1 + (k / 3) * s2 + (k % 3) * s3]);
    }
  }
  std::vector<acc_t> bias_acc(C_out, acc_t(0));
  if (bias.has_value()) {
    const scalar_t* b = bias->const_data_ptr<scalar_t>();
    for (int64_t co = 0; co < C_out; ++co) bias_acc[co] = static_cast<acc_t>(b[co * bias->stride(0)]);
  }

  // The last chunk of a row reads up to column round_up(2*Wo, kChunkCols) + 1 of the scratch.
  const int64_t padded_w = std::max(W + 2, ceil_div(2 * Wo, kChunkCols) * kChunkCols + 2);
  const int64_t row_stride = C_in * padded_w;

  // Work items are (image, block of pooled rows). Whole images while there are enough of them
  // to keep every thread busy; smaller blocks for small batches, and for wide inputs so the
  // staged rows stay in L2. Each block re-stages its 2 halo rows.
  constexpr int64_t kScratchBudget = 256 * 1024;
  const int64_t want_items = 4 * at::get_num_threads();
  int64_t block_rows = Ho;
  while (block_rows > 1 &&
         (N * ceil_div(Ho, block_rows) < want_items ||
          (2 * block_rows + 2) * row_stride * int64_t(sizeof(acc_t)) > kScratchBudget)) {
    block_rows = ceil_div(block_rows, 2);
  }
  const int64_t blocks_per_image = ceil_div(Ho, block_rows);

  // float32 and float64 outputs with contiguous rows are written in place; other dtypes and
  // layouts go through a small tile that is converted and scattered.
  constexpr bool kSameType = std::is_same_v<scalar_t, acc_t>;
  const bool write_in_place = kSameType && out.stride(3) == 1;
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  const int64_t oN = out.stride(0), oC = out.stride(1), oH = out.stride(2), oW = out.stride(3);

  at::parallel_for(0, N * blocks_per_image, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch((2 * block_rows + 2) * row_stride);
    std::vector<acc_t> partial(2 * C_out * kChunkCols);
    acc_t tile[kMaxChannelBlock * kChunkPooled];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks_per_image;
      const int64_t py0 = (item % blocks_per_image) * block_rows;
      const int64_t py1 = std::min(Ho, py0 + block_rows);
      stage_rows<scalar_t, acc_t>(input, n, 2 * py0 - 1, 2 * (py1 - py0) + 2, padded_w,
                                  scratch.data());
      for (int64_t py = py0; py < py1; ++py) {
        const acc_t* rows = scratch.data() + 2 * (py - py0) * row_stride;
        for (int64_t x = 0; x < 2 * Wo; x += kChunkCols) {
          const int n_out = static_cast<int>(std::min<int64_t>(kChunkPooled, Wo - x / 2));
          // Input channels in blocks, all output channels per block: the chunk's input rows
          // for one block stay in L1 while every output channel reads them.
          for (int64_t ci0 = 0; ci0 < C_in; ci0 += kInputChannelBlock) {
            const int64_t cib = std::min(kInputChannelBlock, C_in - ci0);
            for (int64_t co0 = 0; co0 < C_out; co0 += kMaxChannelBlock) {
              const int cob = static_cast<int>(std::min<int64_t>(kMaxChannelBlock, C_out - co0));
              const bool last = ci0 + cib == C_in;
              ChunkArgs<acc_t> args{rows + ci0 * padded_w + x,
                                    row_stride,
                                    padded_w,
                                    cib,
                                    packed.data() + (co0 * C_in + ci0 * cob) * 9,
                                    bias_acc.data() + co0,
                                    tile,
                                    kChunkPooled,
                                    n_out,
                                    partial.data() + co0 * 2 * kChunkCols,
                                    ci0 == 0,
                                    last};
              scalar_t* dst = out_ptr + n * oN + co0 * oC + py * oH + (x / 2) * oW;
              if constexpr (kSameType) {
                if (write_in_place) {
                  args.out = dst;
                  args.out_ch_stride = oC;
                }
              }
              chunk_kernel<acc_t>(cob)(args);
              if (last && !write_in_place) {
                for (int j = 0; j < cob; ++j)
                  for (int i = 0; i < n_out; ++i)
                    dst[j * oC + i * oW] = static_cast<scalar_t>(tile[j * kChunkPooled + i]);
              }
            }
          }
        }
      }
    }
  });
}

std::string cpu_kernel_name() { return use_avx2() ? "avx2" : "generic"; }

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
                                    cpu::forward_impl<scalar_t, acc_t>(input, weight, bias, out);
                                  });
  return out;
}

}  // namespace simplecnn

TORCH_LIBRARY_FRAGMENT(simplecnn, m) {
  // Which CPU micro-kernel this process uses ("avx2" or "generic"), for tests and benchmarks.
  m.def("_cpu_kernel() -> str", &simplecnn::cpu::cpu_kernel_name);
}

TORCH_LIBRARY_IMPL(simplecnn, CPU, m) { m.impl("_fused_forward", &simplecnn::fused_forward_cpu); }
