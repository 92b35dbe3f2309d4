// The forward driver's implicit-GEMM path (implicit_gemm_kernel.h) and its weight packing,
// which the Winograd weight transform also reads.
// Member functions of FusedForward (forward.h).
#pragma once

#include "forward.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace simplecnn::cpu {

template <typename scalar_t, typename acc_t>
void FusedForward<scalar_t, acc_t>::pack_gemm_block(const at::Tensor& weight, int64_t b,
                                                    float* dst) const {
  static_assert(kGemmCoBlock == kWinogradCoBlock);
  const int64_t cob = std::min<int64_t>(kGemmCoBlock, C_out_ - b * kGemmCoBlock);
  const int64_t s0 = weight.stride(0), s1 = weight.stride(1), s2 = weight.stride(2),
                s3 = weight.stride(3);
  const scalar_t* src = weight.const_data_ptr<scalar_t>() + b * kGemmCoBlock * s0;
  // The block's [16][n] matrix at `from` (rows s0 apart) transposed into `to` ([n][16], rows
  // `to_stride` apart). float16 / bfloat16: slabs of columns in float32 first (on the stack: a
  // whole block's rows, 295 KB at 512 channels, cost page faults per call), then transposed.
  // 512 -> 512 4x4 bf16 N=1: 1.15 -> 0.64-0.74 ms.
  const auto transpose_block = [&](const scalar_t* from, int64_t n, float* to, int64_t to_stride) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      kernels_.transpose(from, s0, kGemmCoBlock, n, to, to_stride);
    } else {
      constexpr int64_t kSlab = 64;
      float slab[kGemmCoBlock * kSlab];
      for (int64_t c0 = 0; c0 < n; c0 += kSlab) {
        const int64_t m = std::min(kSlab, n - c0);
        for (int64_t j = 0; j < kGemmCoBlock; ++j)
          load_run(kernels_, from + j * s0 + c0, m, slab + j * kSlab);
        kernels_.transpose(slab, kSlab, kGemmCoBlock, m, to + c0 * to_stride, to_stride);
      }
    }
  };
  if (cob == kGemmCoBlock && s3 == 1 && s2 == 3 && s1 == 9) {  // rows of (ci, ky, kx)
    transpose_block(src, 9 * C_in_, dst, kGemmCoBlock);
    return;
  }
  if (cob == kGemmCoBlock && s1 == 1 && s3 == C_in_ && s2 == 3 * C_in_) {
    // channels_last: rows of (ky, kx, ci), one [16][C_in] matrix per tap. Element by element
    // (below) reads 9 * C_in lines per block: 256 -> 512 4x4 N=1 0.77 -> 0.30 ms.
    for (int64_t k = 0; k < 9; ++k)
      transpose_block(src + k * C_in_, C_in_, dst + k * kGemmCoBlock, 9 * kGemmCoBlock);
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

template <typename scalar_t, typename acc_t>
void FusedForward<scalar_t, acc_t>::run_implicit_gemm() {
  const ImplicitGemmItems items(N_, Ho_, Wo_, C_in_, C_out_, at::get_num_threads());
  const int64_t cols = items.cols;
  // bfloat16 on avx512_bf16: pairs of channels, so an even count staged (a zero one after an
  // odd count), staged in float32 as the other dtypes, then rounded (exactly) back to bfloat16.
  const bool pairs = gemm_takes_bf16_pairs(kernels_, input_);
  const int64_t ci_staged = pairs ? ceil_div(C_in_, 2) * 2 : C_in_;
  if (pairs) {  // before the threads start
    gemm_weights<uint16_t>();
  } else {
    gemm_weights<float>();
  }
  at::parallel_for(0, items.count, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> staged((2 * items.rows + 2) * cols * ci_staged);
    std::vector<uint16_t> staged_pairs(pairs ? staged.size() : 0);
    std::vector<float> partial(items.rows * Wo_ * 4 * kGemmCoBlock);
    for (int64_t i = begin; i < end; ++i) {
      const auto [n, py0, rows, b0, b1] = items[i];
      stage_rows_channels_last<scalar_t>(kernels_, input_, n, 2 * py0 - 1, 2 * rows + 2, cols,
                                         ci_staged, staged.data());
      if (!pairs) {
        implicit_gemm_rows(staged.data(), cols, ci_staged, n, py0, rows, b0, b1, partial.data());
        continue;
      }
      const int64_t size = (2 * rows + 2) * cols * ci_staged;
      kernels_.from_float[static_cast<int>(StorageType::kBFloat16)](staged.data(), size,
                                                                    staged_pairs.data());
      implicit_gemm_rows(staged_pairs.data(), cols, ci_staged, n, py0, rows, b0, b1,
                         partial.data());
    }
  });
}

template <typename scalar_t, typename acc_t>
template <typename in_t>
void FusedForward<scalar_t, acc_t>::implicit_gemm_rows(const in_t* staged, int64_t cols,
                                                       int64_t col_stride, int64_t n, int64_t py0,
                                                       int64_t rows, int64_t b0, int64_t b1,
                                                       float* partial) {
  constexpr int64_t P = std::is_same_v<in_t, uint16_t> ? 2 : 1;  // channels per step
  const in_t* weights = gemm_weights<in_t>();
  const auto kernel = [&] {
    if constexpr (P == 2) {
      return kernels_.window_gemm_bf16;
    } else {
      return kernels_.window_gemm;
    }
  }();
  const int64_t steps = ceil_div(C_in_, P);  // per block of packed weights
  // The last call's values: pooled, one window's (stored at once); unpooled, every window's,
  // [window][position][channel], stored row by row of each channel once the block is done.
  float window[kGemmCoBlock];
  std::vector<float> windows(pool_ ? 0 : rows * Wo_ * 4 * kGemmCoBlock);
  float* out = pool_ ? window : windows.data();
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t c0 = 0; c0 < C_in_; c0 += kGemmCiBlock) {
      const int64_t cib = std::min(kGemmCiBlock, C_in_ - c0);
      for (int64_t t = 0; t < rows * Wo_; ++t) {
        const int64_t py = t / Wo_, px = t % Wo_;  // py within the block
        const WindowGemmArgs<in_t> args{staged + (2 * py * cols + 2 * px) * col_stride + c0,
                                        cols * col_stride,
                                        col_stride,
                                        ceil_div(cib, P),
                                        weights + (b * steps + c0 / P) * 9 * kGemmCoBlock * P,
                                        gemm_bias_.data() + b * kGemmCoBlock,
                                        out + (pool_ ? 0 : t * 4 * kGemmCoBlock),
                                        partial + t * 4 * kGemmCoBlock,
                                        c0 == 0,
                                        c0 + cib == C_in_,
                                        pool_};
        kernel(args);
        if (pool_ && args.last)
          target_.store(n, py0 + py, px, b * kGemmCoBlock,
                        std::min<int64_t>(kGemmCoBlock, C_out_ - b * kGemmCoBlock), out);
      }
    }
    if (pool_) continue;
    const int64_t co0 = b * kGemmCoBlock, count = std::min<int64_t>(kGemmCoBlock, C_out_ - co0);
    if (target_.sC == 1) {  // channels_last: each position's channels are contiguous
      for (int64_t t = 0; t < rows * Wo_; ++t)
        for (int p = 0; p < 4; ++p)  // the window's positions in max-pool order
          target_.store(n, 2 * (py0 + t / Wo_) + p / 2, 2 * (t % Wo_) + p % 2, co0, count,
                        out + (t * 4 + p) * kGemmCoBlock);
      continue;
    }
    // Conv row y of the block: window row y / 2, position (y % 2, x % 2) of window x / 2; as
    // the Winograd path, channel by channel along the rows (the output's order in NCHW).
    for (int64_t y = 0; y < 2 * rows; ++y) {
      const float* row = out + (y / 2 * Wo_ * 4 + y % 2 * 2) * kGemmCoBlock;
      target_.store_row(n, 2 * py0 + y, co0, count,
                        [&](int64_t x) { return row + (x / 2 * 4 + x % 2) * kGemmCoBlock; });
    }
  }
}

template <typename scalar_t, typename acc_t>
template <typename in_t>
const in_t* FusedForward<scalar_t, acc_t>::gemm_weights() {
  std::call_once(gemm_once_, [&] {
    const int64_t blocks = ceil_div(C_out_, kGemmCoBlock);
    gemm_bias_ = padded_bias(blocks * kGemmCoBlock);
    if constexpr (std::is_same_v<in_t, float>) {
      gemm_weights_.reset(new float[blocks * kGemmCoBlock * 9 * C_in_]);
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b)
          pack_gemm_block(weight_, b, gemm_weights_.get() + b * 9 * C_in_ * kGemmCoBlock);
      });
    } else {  // each block packed in float32, then its lines of channels 2u and 2u + 1 paired
      const int64_t pairs = ceil_div(C_in_, 2), block_size = pairs * 9 * kGemmCoBlock * 2;
      gemm_weights_bf16_.reset(new uint16_t[blocks * block_size]);
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> lines((2 * pairs * 9 + 1) * kGemmCoBlock, 0.0f);  // and a zero line
        const float* zeros = lines.data() + 2 * pairs * 9 * kGemmCoBlock;
        for (int64_t b = begin; b < end; ++b) {
          pack_gemm_block(weight_, b, lines.data());
          uint16_t* dst = gemm_weights_bf16_.get() + b * block_size;
          for (int64_t u = 0; u < pairs; ++u)
            for (int64_t k = 0; k < 9; ++k) {
              const float* first = lines.data() + (2 * u * 9 + k) * kGemmCoBlock;
              const float* second = 2 * u + 1 < C_in_ ? first + 9 * kGemmCoBlock : zeros;
              kernels_.interleave_bf16(first, second, kGemmCoBlock,
                                       dst + (u * 9 + k) * kGemmCoBlock * 2);
            }
        }
      });
    }
  });
  // One call packs one element type (the Winograd path's fallback: float).
  const in_t* packed = [&] {
    if constexpr (std::is_same_v<in_t, float>) {
      return gemm_weights_.get();
    } else {
      return gemm_weights_bf16_.get();
    }
  }();
  TORCH_INTERNAL_ASSERT(packed != nullptr, "implicit GEMM weights packed as another type");
  return packed;
}

}  // namespace simplecnn::cpu
