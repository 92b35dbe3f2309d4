// The forward driver's direct path: pooled rows by the direct micro-kernel (direct_kernel.h).
// Member functions of FusedForward (forward.h).
#pragma once

#include "forward.h"

#include <ATen/Parallel.h>

#include <atomic>

namespace simplecnn::cpu {

template <typename scalar_t, typename acc_t>
void FusedForward<scalar_t, acc_t>::direct_window_row(int64_t n, int64_t py, const acc_t* rows,
                                                      Workspace& ws) {
  auto row = target_.row(n, py);
  direct_row(geometry_, direct_, rows, packed_.data(), bias_.data(), ws.partial.data(), row);
}

template <typename scalar_t, typename acc_t>
void FusedForward<scalar_t, acc_t>::run_direct() {
  packed_ = pack_direct_weights<scalar_t, acc_t>(weight_, geometry_.co_block);
  const int64_t row_stride = geometry_.row_stride;
  const DirectItems items(N_, Ho_, row_stride * int64_t(sizeof(acc_t)), at::get_num_threads());
  at::parallel_for(0, items.count, 1, [&](int64_t begin, int64_t end) {
    Workspace ws(*this, 2 * items.block_rows + 2);
    for (int64_t i = begin; i < end; ++i) {
      const auto [n, py0, py1] = items[i];
      stage_rows<scalar_t, acc_t>(kernels_, input_, n, 2 * py0 - 1, 2 * (py1 - py0) + 2,
                                  geometry_.padded_w, ws.scratch.data());
      for (int64_t py = py0; py < py1; ++py)
        direct_window_row(n, py, ws.scratch.data() + 2 * (py - py0) * row_stride, ws);
    }
    // Streamed stores are weakly ordered: visible before anyone reads the output.
    if (target_.stream) std::atomic_thread_fence(std::memory_order_seq_cst);
  });
}

}  // namespace simplecnn::cpu
