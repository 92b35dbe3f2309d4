// What the CPU drivers (forward and backward) share: staging input rows into the padded
// scratch the direct micro-kernels read, packing their weights, and the loop over one pooled row.
#pragma once

#include "kernel_table.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

namespace simplecnn::cpu {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The storage type of scalar_t's values, which the kernels round to (kFloat for float and double).
template <typename scalar_t>
constexpr StorageType storage_type() {
  if constexpr (std::is_same_v<scalar_t, at::Half>) return StorageType::kHalf;
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) return StorageType::kBFloat16;
  return StorageType::kFloat;
}

// n values of `src` into `dst` as acc_t, and back (store_run): float16 and bfloat16 to float
// through the level's vector conversions (this code is compiled for baseline x86-64, where
// c10's float16 conversion is software: float16 seed layer N=256 2.70 -> 1.50 ms).
template <typename scalar_t, typename acc_t>
void load_run(const CpuKernels& k, const scalar_t* src, int64_t n, acc_t* dst) {
  constexpr StorageType storage = storage_type<scalar_t>();
  if constexpr (storage != StorageType::kFloat && std::is_same_v<acc_t, float>) {
    k.to_float[static_cast<int>(storage)](reinterpret_cast<const uint16_t*>(src), n, dst);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i]);
  }
}

template <typename scalar_t, typename acc_t>
void store_run(const CpuKernels& k, const acc_t* src, int64_t n, scalar_t* dst) {
  constexpr StorageType storage = storage_type<scalar_t>();
  if constexpr (storage != StorageType::kFloat && std::is_same_v<acc_t, float>) {
    k.from_float[static_cast<int>(storage)](src, n, reinterpret_cast<uint16_t*>(dst));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  }
}

// True when no value of the n values at `data` has its exponent bits (`mask`) all set: no Inf,
// no NaN. One pass, which GCC vectorizes.
template <typename bits_t>
bool exponents_finite(const void* data, int64_t n, bits_t mask) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  bits_t non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    bits_t bits;
    std::memcpy(&bits, bytes + i * sizeof(bits_t), sizeof(bits_t));
    non_finite |= static_cast<bits_t>((bits & mask) == mask);
  }
  return non_finite == 0;
}

// Whether every value of a floating tensor is finite. ATen's isfinite(t).all() takes five passes
// and temporaries: 10% of a SimpleCNN training step at batch 1024.
inline bool all_finite(const at::Tensor& t) {
  if (!t.is_non_overlapping_and_dense()) return all_finite(t.contiguous());
  const void* data = t.const_data_ptr();
  switch (t.scalar_type()) {
    case at::kDouble: return exponents_finite<uint64_t>(data, t.numel(), 0x7ff0000000000000u);
    case at::kFloat: return exponents_finite<uint32_t>(data, t.numel(), 0x7f800000u);
    case at::kHalf: return exponents_finite<uint16_t>(data, t.numel(), 0x7c00u);
    case at::kBFloat16: return exponents_finite<uint16_t>(data, t.numel(), 0x7f80u);
    default: TORCH_CHECK(false, "all_finite: unexpected dtype ", t.scalar_type());
  }
}

// Input channels (bfloat16 pairs: channel pairs, as many bytes) per micro-kernel call. 32
// channels x 4 rows x 18 columns of staged input (~20 KB with line overlap; AVX-512's 34
// columns, ~17 KB without) fit L1 beside the weights; measured (AVX2) ~5-15% faster than no
// blocking at 64->64 and slower at 8 or 16 (partial sums are reloaded more often).
constexpr int64_t kInputChannelBlock = 32;

// The direct kernel's view of one call: sizes, the level's blocking and the scratch geometry.
// The scratch is [row][step][column][channels_per_step]: a step is one channel, or a pair of
// bfloat16 channels side by side (DirectKernels::channels_per_step).
struct DirectGeometry {
  template <typename acc_t, typename in_t>
  DirectGeometry(const at::Tensor& input, const at::Tensor& weight,
                 const DirectKernels<acc_t, in_t>& k, bool pool = true)
      : c_in(input.size(1)), w(input.size(3)), c_out(weight.size(0)), wo(input.size(3) / 2),
        conv_cols(pool ? 2 * wo : w), chunk_cols(k.chunk_cols), co_block(k.max_co_block),
        // The last chunk of a row reads up to column round_up(conv_cols, chunk_cols) + 1.
        padded_w(std::max(w + 2, ceil_div(conv_cols, chunk_cols) * chunk_cols + 2)),
        per_step(k.channels_per_step), steps(ceil_div(c_in, per_step)),
        step_stride(padded_w * per_step), row_stride(steps * step_stride), pool(pool) {}
  // conv_cols: the conv columns computed (pooled: 2 Wo, unpooled: all W).
  int64_t c_in, w, c_out, wo, conv_cols, chunk_cols, co_block, padded_w;
  // Channels per step, steps, and the scratch's elements between steps and between rows.
  int64_t per_step, steps, step_stride, row_stride;
  bool pool;
};

// Copies input rows [y0, y0 + rows) of image n, all channels, into `scratch` laid out as
// [row][channel][column] with column c holding input column c - 1: zeros at c = 0, past the
// right edge and in rows outside the image, so the micro-kernels never test a border.
template <typename scalar_t, typename acc_t>
void stage_rows(const CpuKernels& k, const at::Tensor& input, int64_t n, int64_t y0, int64_t rows,
                int64_t padded_w, acc_t* scratch) {
  const int64_t C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t sN = input.stride(0), sC = input.stride(1), sH = input.stride(2),
                sW = input.stride(3);
  const scalar_t* base = input.const_data_ptr<scalar_t>() + n * sN;
  if (storage_type<scalar_t>() != StorageType::kFloat && sC == 1 && sW == C) {
    // float16 / bfloat16 channels_last: each row converted at once (load_run), then split by
    // channel.
    std::vector<acc_t> pixels(W * C);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t y = y0 + r;
      const bool inside = y >= 0 && y < H;
      if (inside) load_run(k, base + y * sH, W * C, pixels.data());
      for (int64_t c = 0; c < C; ++c) {
        acc_t* dst = scratch + (r * C + c) * padded_w;
        std::fill(dst, dst + padded_w, acc_t(0));
        if (inside)
          for (int64_t x = 0; x < W; ++x) dst[1 + x] = pixels[x * C + c];
      }
    }
    return;
  }
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
        load_run(k, src, W, dst + 1);
      } else {
        for (int64_t x = 0; x < W; ++x) dst[1 + x] = static_cast<acc_t>(src[x * sW]);
      }
      std::fill(dst + 1 + W, dst + padded_w, acc_t(0));
    }
  }
}

// Copies input rows [y0, y0 + rows) of image n as bfloat16 channel pairs (their bits) into
// `scratch`, laid out as stage_rows does with a step of two channels (DirectGeometry): column c
// holds the pair at input column c - 1; zeros at c = 0, past the right edge, in rows outside
// the image and in the second channel of an odd count's last pair.
inline void stage_rows_bf16_pairs(const at::Tensor& input, int64_t n, int64_t y0, int64_t rows,
                                  const DirectGeometry& g, uint16_t* scratch) {
  const int64_t C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t sN = input.stride(0), sC = input.stride(1), sH = input.stride(2),
                sW = input.stride(3);
  const auto* base = reinterpret_cast<const uint16_t*>(input.const_data_ptr<at::BFloat16>()) +
                     n * sN;
  for (int64_t p = 0; p < g.steps; ++p) {
    const bool has_second = 2 * p + 1 < C;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t y = y0 + r;
      uint16_t* dst = scratch + r * g.row_stride + p * g.step_stride;
      if (y < 0 || y >= H) {
        std::fill(dst, dst + g.step_stride, uint16_t(0));
        continue;
      }
      const uint16_t* first = base + 2 * p * sC + y * sH;
      const uint16_t* second = has_second ? first + sC : nullptr;
      dst[0] = dst[1] = 0;
      uint16_t* to = dst + 2;
      if (sW == 1 && has_second) {  // NCHW: two rows interleaved (GCC vectorizes it)
        for (int64_t x = 0; x < W; ++x) {
          to[2 * x] = first[x];
          to[2 * x + 1] = second[x];
        }
      } else {
        for (int64_t x = 0; x < W; ++x) {
          to[2 * x] = first[x * sW];
          to[2 * x + 1] = has_second ? second[x * sW] : uint16_t(0);
        }
      }
      std::fill(to + 2 * W, dst + g.step_stride, uint16_t(0));
    }
  }
}

// Weights packed per block of co_block output channels as [step][ky][kx][co][channel in the
// step], the order the micro-kernels read them, zeros for the padding channel of an odd count's
// last pair; the block starting at channel co0 starts at co0 * steps * per_step * 9. in_t is
// acc_t, or uint16_t for bfloat16 pairs (the bits). In parallel over the blocks: at 256 -> 512
// channels it is 4.7 MB per call.
template <typename scalar_t, typename in_t>
std::vector<in_t> pack_direct_weights(const at::Tensor& weight, const DirectGeometry& g) {
  const int64_t C_out = weight.size(0), C_in = weight.size(1), P = g.per_step;
  const int64_t co_block = g.co_block, block_stride = g.steps * P * 9;
  std::vector<in_t> packed(C_out * block_stride);
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  const int64_t s0 = weight.stride(0), s1 = weight.stride(1), s2 = weight.stride(2),
                s3 = weight.stride(3);
  const int64_t blocks = ceil_div(C_out, co_block);
  const int64_t grain = std::max<int64_t>(1, 16384 / (C_in * 9 * co_block));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t co0 = begin * co_block; co0 < std::min(C_out, end * co_block); co0 += co_block) {
      const int64_t cob = std::min<int64_t>(co_block, C_out - co0);
      in_t* dst = packed.data() + co0 * block_stride;
      for (int64_t j = 0; j < cob; ++j)  // reading each output channel's weights in order
        for (int64_t ci = 0; ci < C_in; ++ci)
          for (int64_t k = 0; k < 9; ++k) {
            const scalar_t value = w[(co0 + j) * s0 + ci * s1 + (k / 3) * s2 + (k % 3) * s3];
            in_t& to = dst[(((ci / P) * 9 + k) * cob + j) * P + ci % P];
            if constexpr (std::is_same_v<in_t, uint16_t>) {
              static_assert(std::is_same_v<scalar_t, at::BFloat16>);
              to = value.x;  // bfloat16 bits
            } else {
              to = static_cast<in_t>(value);
            }
          }
    }
  });
  return packed;
}

template <typename scalar_t, typename acc_t>
std::vector<acc_t> read_bias(const std::optional<at::Tensor>& bias, int64_t c_out) {
  std::vector<acc_t> values(c_out, acc_t(0));
  if (bias.has_value()) {
    const scalar_t* b = bias->const_data_ptr<scalar_t>();
    for (int64_t co = 0; co < c_out; ++co) values[co] = static_cast<acc_t>(b[co * bias->stride(0)]);
  }
  return values;
}

// Runs the direct micro-kernels `k` over one pooled row: `rows` is the staged scratch at the
// row's top halo row, `partial` holds 2 * c_out * chunk_cols partial sums. For each chunk of
// chunk_cols conv columns and block of output channels, target.prepare(args, co0, x) points
// the last call's output (pooled values, unpooled conv values or window indices) somewhere, and
// target.finish(args, co0, cob, x) runs after it.
template <typename acc_t, typename in_t, typename Target>
void direct_row(const DirectGeometry& g, const DirectKernels<acc_t, in_t>& k, const in_t* rows,
                const in_t* packed, const acc_t* bias, acc_t* partial, Target& target) {
  for (int64_t x = 0; x < g.conv_cols; x += g.chunk_cols) {
    const int n_out = static_cast<int>(g.pool ? std::min<int64_t>(g.chunk_cols / 2, g.wo - x / 2)
                                              : std::min<int64_t>(g.chunk_cols, g.w - x));
    // Input channels in blocks, all output channels per block: the chunk's input rows for one
    // block stay in L1 while every output channel reads them.
    for (int64_t s0 = 0; s0 < g.steps; s0 += kInputChannelBlock) {
      const int64_t sb = std::min(kInputChannelBlock, g.steps - s0);
      const bool last = s0 + sb == g.steps;
      for (int64_t co0 = 0; co0 < g.c_out; co0 += g.co_block) {
        const int cob = static_cast<int>(std::min<int64_t>(g.co_block, g.c_out - co0));
        ChunkArgs<acc_t, in_t> args{rows + s0 * g.step_stride + x * g.per_step,
                                    g.row_stride,
                                    g.step_stride,
                                    sb,
                                    packed + (co0 * g.steps + s0 * cob) * 9 * g.per_step,
                                    bias + co0,
                                    nullptr,
                                    0,
                                    n_out,
                                    partial + co0 * 2 * g.chunk_cols,
                                    s0 == 0,
                                    last};
        if (last) target.prepare(args, co0, x);
        (g.pool ? k.chunk : k.unpooled)[cob - 1](args);
        if (last) target.finish(args, co0, cob, x);
      }
    }
  }
}

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
        load_run(k, src, C, dst);
      }
    return;
  }
  if (sW == 1) {  // rows of NCHW input: [C][W] transposed in the vector layer's blocks
    for (int64_t y = y_begin; y < y_end; ++y) {
      float* dst = scratch + ((y - y0) * cols + 1) * ci_padded;
      if constexpr (std::is_same_v<scalar_t, float>) {
        k.transpose(base + y * sH, sC, C, W, dst, ci_padded);
      } else {  // slabs of 8 channels x 64 columns converted to float32 on the stack, then
                // transposed: 64 -> 64 32x32 bfloat16 N=64 12.6 -> 10.4 ms against converting
                // column by column
        constexpr int64_t kSlabRows = 8, kSlabCols = 64;
        float slab[kSlabRows * kSlabCols];
        for (int64_t c0 = 0; c0 < C; c0 += kSlabRows)
          for (int64_t x0 = 0; x0 < W; x0 += kSlabCols) {
            const int64_t m = std::min(kSlabRows, C - c0), n = std::min(kSlabCols, W - x0);
            for (int64_t r = 0; r < m; ++r)
              load_run(k, base + (c0 + r) * sC + y * sH + x0, n, slab + r * kSlabCols);
            k.transpose(slab, kSlabCols, m, n, dst + x0 * ci_padded + c0, ci_padded);
          }
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

}  // namespace simplecnn::cpu
