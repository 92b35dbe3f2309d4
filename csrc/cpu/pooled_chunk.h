// The CPU micro-kernel interface: one call computes a chunk of one pooled output row.
//
// The driver (conv3x3_relu_maxpool2d_cpu.cpp) copies the input rows a task needs into a
// zero-padded scratch buffer in the accumulation type, so the micro-kernels see no borders,
// strides or storage dtypes. A call accumulates the two conv rows under one pooled row, for
// kChunkCols conv columns and up to kMaxChannelBlock output channels, in registers; max-pools
// them 2x2, applies ReLU and stores only the pooled values. The full-size conv output never
// reaches memory; with many input channels, a 2 x co_block x kChunkCols tile of partial sums does.
//
// Deliberately free of ATen headers: chunk_avx2.cpp is compiled for AVX2 and must not
// instantiate inline functions that the generic build would share (see that file).
#pragma once

#include <cstdint>

namespace simplecnn::cpu {

enum class StorageType : int8_t { kFloat, kHalf, kBFloat16 };

constexpr int kChunkCols = 16;       // conv columns per call: two AVX2 vectors of 8 floats
constexpr int kChunkPooled = kChunkCols / 2;
constexpr int kMaxChannelBlock = 3;  // 2 rows x 3 channels x 2 vectors = 12 ymm accumulators

template <typename acc_t>
struct ChunkArgs {
  // Scratch at input row 2*py - 1 (the top halo row), channel 0, input column x - 1, where
  // x is the chunk's first conv column. The kernel reads 4 rows and kChunkCols + 2 columns.
  const acc_t* in;
  int64_t in_row_stride;  // elements between input rows in the scratch
  int64_t in_ch_stride;   // elements between input channels in the scratch
  int64_t c_in;
  const acc_t* weight;  // packed for this channel block: [c_in][ky][kx][co_block]
  const acc_t* bias;    // co_block values (zeros when the op has no bias)
  acc_t* out;           // pooled value (py, x / 2) of the block's first channel
  int64_t out_ch_stride;  // elements between channels in `out`; pooled columns are contiguous
  int n_out;              // pooled columns to store: kChunkPooled, fewer at the row's end
  // A call may cover only a block of the input channels (c_in of them, `in` and `weight` at the
  // block's first): `partial` keeps the conv sums between calls, [2][co_block][kChunkCols].
  // The first call starts from the bias; calls but the last store to `partial`; the last one
  // pools and stores the output.
  acc_t* partial;
  bool first;
  bool last;
  // When set, the last call stores each window's index instead of its pooled value: the window
  // position (0..3 = a*2+b) the stock max-pool + ReLU send the gradient to, -1 where none.
  int8_t* index = nullptr;
  int64_t index_ch_stride = 0;  // bytes between channels in `index`; columns are contiguous
  // The tensors' dtype: stock routes by the conv values rounded to it (two values that round
  // to one number are a tie there), so the indices are chosen on rounded values too.
  StorageType storage = StorageType::kFloat;
};

template <typename acc_t>
using ChunkKernel = void (*)(const ChunkArgs<acc_t>&);

// The AVX2+FMA kernel for `co_block` (1..kMaxChannelBlock) channels, or nullptr where this
// build has none (non-x86 targets).
ChunkKernel<float> avx2_chunk_kernel(int co_block);

// Whether this process uses the AVX2 kernels (the CPU has AVX2+FMA and
// SIMPLECNN_CPU_CAPABILITY=generic does not say otherwise).
bool use_avx2();

// The kernel this process uses for `co_block` channels: AVX2 for float where available, else
// the portable one (float and double).
template <typename acc_t>
ChunkKernel<acc_t> chunk_kernel(int co_block);

// The window index the stock path's gradient takes (see ChunkArgs::index), from the window's
// four conv values in max-pool order. Stock max-pool keeps the first of equal maxima and moves
// to every NaN it meets (so the last NaN wins); ReLU's gradient is zero where the max <= 0.
template <typename acc_t>
inline int8_t window_index(const acc_t (&v)[4]) {
  acc_t best = v[0];
  int8_t index = 0;
  for (int p = 1; p < 4; ++p) {
    if (v[p] > best || v[p] != v[p]) {
      best = v[p];
      index = static_cast<int8_t>(p);
    }
  }
  return (best > acc_t(0) || best != best) ? index : int8_t(-1);
}

}  // namespace simplecnn::cpu
