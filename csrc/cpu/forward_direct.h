// The forward driver's direct path: pooled rows by the direct micro-kernel (direct_kernel.h).
// Member functions of FusedForward (forward.h).
#pragma once

#include "forward.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <type_traits>

namespace simplecnn::cpu {

// The bytes of one staged input row of the direct path (its work items' size: DirectItems).
inline int64_t direct_row_bytes(const CpuKernels& k, const at::Tensor& input,
                                const at::Tensor& weight, bool pool) {
  if (input.scalar_type() == at::kDouble)
    return DirectGeometry(input, weight, direct_kernels<double>(k), pool).row_stride * 8;
  if (takes_bf16_pairs(k, input.scalar_type()))
    return DirectGeometry(input, weight, k.direct_bf16, pool).row_stride * 2;
  return DirectGeometry(input, weight, k.direct, pool).row_stride * 4;
}

template <typename scalar_t, typename acc_t>
void FusedForward<scalar_t, acc_t>::run_direct() {
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    if (takes_bf16_pairs(kernels_, input_.scalar_type())) return run_direct(kernels_.direct_bf16);
  }
  run_direct(direct_kernels<acc_t>(kernels_));
}

template <typename scalar_t, typename acc_t>
template <typename in_t>
void FusedForward<scalar_t, acc_t>::run_direct(const DirectKernels<acc_t, in_t>& direct) {
  const DirectGeometry g(input_, weight_, direct, pool_);
  const std::vector<in_t> packed = pack_direct_weights<scalar_t, in_t>(weight_, g);
  // The items _cpu_work_items lists: sized by the same staged rows.
  const int64_t row_bytes = direct_row_bytes(kernels_, input_, weight_, pool_);
  TORCH_INTERNAL_ASSERT(row_bytes == g.row_stride * int64_t(sizeof(in_t)));
  const DirectItems items(N_, Ho_, row_bytes, at::get_num_threads());
  at::parallel_for(0, items.count, 1, [&](int64_t begin, int64_t end) {
    std::vector<in_t> scratch((2 * items.block_rows + 2) * g.row_stride);
    std::vector<acc_t> partial(2 * C_out_ * g.chunk_cols);  // across input-channel blocks
    for (int64_t i = begin; i < end; ++i) {
      const auto [n, py0, py1] = items[i];
      const int64_t y0 = 2 * py0 - 1, rows = 2 * (py1 - py0) + 2;
      if constexpr (std::is_same_v<in_t, uint16_t>) {
        stage_rows_bf16_pairs(input_, n, y0, rows, g, scratch.data());
      } else {
        stage_rows<scalar_t, acc_t>(kernels_, input_, n, y0, rows, g.padded_w, scratch.data());
      }
      for (int64_t py = py0; py < py1; ++py) {
        auto row = target_.row(n, py);
        direct_row(g, direct, scratch.data() + 2 * (py - py0) * g.row_stride, packed.data(),
                   bias_.data(), partial.data(), row);
      }
    }
    // Streamed stores are weakly ordered: visible before anyone reads the output.
    if (target_.stream) std::atomic_thread_fence(std::memory_order_seq_cst);
  });
}

}  // namespace simplecnn::cpu
