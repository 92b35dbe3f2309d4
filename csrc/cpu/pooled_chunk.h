// The CPU micro-kernel interface: one call computes a chunk of one pooled output row (or, for
// the unpooled op, conv3x3_relu2d, the two conv rows under it).
//
// The drivers (via direct_row in staging.h) copy the input rows a task needs into a
// zero-padded scratch buffer in the accumulation type (or, for the bfloat16-pair kernels, as
// bfloat16 channel pairs), so the micro-kernels see no borders, strides or storage dtypes. A call
// accumulates the two conv rows under one pooled row, for a level's chunk_cols conv columns and a
// block of output channels (kernel_table.h: DirectKernels), in registers; max-pools them 2x2,
// applies ReLU and stores only the pooled values. The full-size conv output never reaches memory;
// with many input channels, a 2 x co_block x chunk_cols tile of partial sums does. Unpooled
// (DirectKernels::unpooled), the last call stores both conv rows after ReLU instead.
//
// Free of ATen headers, as are the other interfaces kernel_table.h includes (implicit_gemm.h,
// winograd.h, backward_grad.h): the kernels_*.cpp files read only these, the vector layer and
// the standard library.
#pragma once

#include <cstdint>

namespace simplecnn::cpu {

enum class StorageType : int8_t { kFloat, kHalf, kBFloat16 };

// Bounds over every level's blocking (kernel_table.h: DirectKernels).
constexpr int kMaxChunkCols = 32;  // conv columns per call: AVX-512, two zmm vectors of 16
constexpr int kMaxCoBlock = 6;     // output channels per call (AVX-512)

// in_t: the staged input's and packed weights' element, acc_t (one channel per step), or
// uint16_t for bfloat16 channel pairs (the avx512_bf16 level's vdpbf16ps kernel: two channels
// per step, their values side by side, [pair][column][2] and [pair][ky][kx][co_block][2]).
template <typename acc_t, typename in_t = acc_t>
struct ChunkArgs {
  // Scratch at input row 2*py - 1 (the top halo row), channel 0, input column x - 1, where
  // x is the chunk's first conv column. The kernel reads 4 rows and chunk_cols + 2 columns.
  const in_t* in;
  int64_t in_row_stride;  // elements between input rows in the scratch
  int64_t in_ch_stride;   // elements between input channels (pairs: channel pairs) there
  int64_t c_in;           // channels (pairs: channel pairs, the last one zero-padded)
  const in_t* weight;     // packed for this channel block: [c_in][ky][kx][co_block][per step]
  const acc_t* bias;      // co_block values (zeros when the op has no bias)
  acc_t* out;             // pooled value (py, x / 2) of the block's first channel (unpooled:
                          // conv value (2 py, x))
  int64_t out_ch_stride;  // elements between channels in `out`; columns are contiguous
  int n_out;              // pooled columns to store: chunk_cols / 2, fewer at the row's end
                          // (unpooled: conv columns, chunk_cols or fewer)
  // A call may cover only a block of the input channels (c_in of them, `in` and `weight` at the
  // block's first): `partial` keeps the conv sums between calls, [2][co_block][chunk_cols].
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
  // to one number are a tie there), so the indices are chosen on rounded values too; and
  // out_16bit's.
  StorageType storage = StorageType::kFloat;
  // Whole aligned vectors of pooled values go to `out` with stores that bypass the caches (the
  // caller fences before the output is read).
  bool stream_out = false;
  // When set, the last call stores to it instead of `out` (same strides): float16 or bfloat16
  // values (`storage`), their bits, rounded to nearest even.
  uint16_t* out_16bit = nullptr;
  // Unpooled kernels (DirectKernels::unpooled): the last call stores relu of both conv rows,
  // out_row_stride elements apart in `out` (0 where only the first row is wanted: the last row
  // of an odd height).
  int64_t out_row_stride = 0;
};

template <typename acc_t, typename in_t = acc_t>
using ChunkKernel = void (*)(const ChunkArgs<acc_t, in_t>&);

}  // namespace simplecnn::cpu
