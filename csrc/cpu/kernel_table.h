// The CPU kernels as one table of function pointers per instruction-set level, and the
// resolver that picks the level calls take (as XNNPACK's hardware config and PyTorch's
// DispatchStub do). The drivers read kernels, vector widths and blockings from the table.
//
// Levels, best first: "avx512_bf16" (and AVX512_BF16: "avx512" with bfloat16-pair kernels),
// "avx512" (AVX-512 F/BW/DQ/VL with the OS saving zmm state), "avx2"
// (AVX2 + FMA + F16C), "generic" (portable C++). The kernels are templates over the vector
// layer (vec/README.md) stamped out per level in kernels_<level>.cpp.
#pragma once

#include "backward_grad.h"
#include "implicit_gemm.h"
#include "pooled_chunk.h"
#include "winograd.h"

#include <string>
#include <vector>

namespace simplecnn::cpu {

// The direct kernel of one level and dtype: blocks of 1..max_co_block output channels,
// accumulating in T from staged in_t values (pooled_chunk.h: ChunkArgs).
template <typename T, typename in_t = T>
struct DirectKernels {
  int chunk_cols = 0;  // conv columns per call (a multiple of 2); 0: the level has none
  int max_co_block = 0;
  int channels_per_step = 1;                        // input channels per step: 2 for bfloat16 pairs
  ChunkKernel<T, in_t> chunk[kMaxCoBlock] = {};     // [co_block - 1]
  ChunkKernel<T, in_t> unpooled[kMaxCoBlock] = {};  // the same for conv3x3_relu2d
};

// The backward pass's strip filling and per-channel gradient loops of one level and dtype
// (backward_kernel.h).
template <typename T>
struct GradKernels {
  T (*fill_strips)(const T* grad, const int8_t* index, int64_t wo, T* strip, int64_t stride,
                   int64_t strip_w) = nullptr;
  void (*weight)(const ChannelGradArgs<T>&) = nullptr;
  void (*input)(const ChannelGradArgs<T>&) = nullptr;
};

struct CpuKernels {
  const char* name;  // the level
  DirectKernels<float> direct;
  // bfloat16 inputs as channel pairs, two products per vdpbf16ps (AVX512_BF16): the
  // avx512_bf16 level only (chunk_cols 0 elsewhere; bfloat16 then runs `direct` on float32).
  DirectKernels<float, uint16_t> direct_bf16;
  // Wide layers.
  void (*window_gemm)(const WindowGemmArgs<float>&) = nullptr;
  // bfloat16 channel pairs by vdpbf16ps: the avx512_bf16 level only (null elsewhere), with the
  // packing of float32 weight lines into pairs: dst[2 i] = a[i], dst[2 i + 1] = b[i], i < n.
  void (*window_gemm_bf16)(const WindowGemmArgs<uint16_t>&) = nullptr;
  void (*interleave_bf16)(const float* a, const float* b, int64_t n, uint16_t* dst) = nullptr;
  void (*transpose)(const float* src, int64_t src_stride, int64_t rows, int64_t cols, float* dst,
                    int64_t dst_stride) = nullptr;
  bool (*winograd_tiles)(const WinogradTilesArgs&) = nullptr;
  int winograd_gemm_rows = 0;  // tiles per Winograd GEMM call, at most
  void (*transform_weights)(int m, const float* g, int64_t channels, float* u,
                            int64_t position_stride, bool stream) = nullptr;
  GradKernels<float> grad;  // backward
  // Runs of float16 and bfloat16 values (their bits), indexed by StorageType, to float and
  // back, rounded to nearest even (convert_kernel.h; staging.h: load_run, store_run).
  void (*to_float[3])(const uint16_t* src, int64_t n, float* dst) = {};
  void (*from_float[3])(const float* src, int64_t n, uint16_t* dst) = {};
};

// Each level's table, filled once (kernels_<level>.cpp). The x86 ones exist only on x86-64.
const CpuKernels& generic_kernels();
const CpuKernels& avx2_kernels();
const CpuKernels& avx512_kernels();
const CpuKernels& avx512_bf16_kernels();
// float64 runs the portable direct kernel and gradient loops on every level.
const DirectKernels<double>& generic_direct_kernels_f64();
const GradKernels<double>& generic_grad_kernels_f64();

// The levels this CPU (and OS) can run, best first; always ends with "generic".
const std::vector<std::string>& supported_capabilities();
// The table calls take now: the best supported level, or SIMPLECNN_CPU_CAPABILITY (read at
// first use; a level the CPU lacks is an error naming the ones it has), or the last one set.
const CpuKernels& cpu_kernels();
// Makes `level` the one calls take (an error if this CPU cannot run it).
void set_cpu_capability(const std::string& level);

// The kernels of table `k` for accumulation type acc_t (float64: the generic ones).
template <typename acc_t>
const DirectKernels<acc_t>& direct_kernels(const CpuKernels& k) {
  if constexpr (std::is_same_v<acc_t, double>) {
    return generic_direct_kernels_f64();
  } else {
    return k.direct;
  }
}

template <typename acc_t>
const GradKernels<acc_t>& grad_kernels(const CpuKernels& k) {
  if constexpr (std::is_same_v<acc_t, double>) {
    return generic_grad_kernels_f64();
  } else {
    return k.grad;
  }
}

}  // namespace simplecnn::cpu
