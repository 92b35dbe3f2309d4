// The portable micro-kernel and the choice between it and the AVX2 one.
#include "pooled_chunk.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdlib>
#include <string>
#include <type_traits>

namespace simplecnn::cpu {
namespace {

// `v` rounded to the storage dtype (and back), as the stock conv output is stored.
template <typename acc_t>
acc_t round_to_storage(acc_t v, StorageType storage) {
  if (storage == StorageType::kHalf) return static_cast<float>(c10::Half(static_cast<float>(v)));
  if (storage == StorageType::kBFloat16) {
    return static_cast<float>(c10::BFloat16(static_cast<float>(v)));
  }
  return v;
}

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
  if (a.index != nullptr) {
    for (int co = 0; co < CO; ++co)
      for (int j = 0; j < a.n_out; ++j) {
        const acc_t window[4] = {round_to_storage(acc[0][co][2 * j], a.storage),
                                 round_to_storage(acc[0][co][2 * j + 1], a.storage),
                                 round_to_storage(acc[1][co][2 * j], a.storage),
                                 round_to_storage(acc[1][co][2 * j + 1], a.storage)};
        a.index[co * a.index_ch_stride + j] = window_index(window);
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

}  // namespace

// AVX2 when the CPU has it, unless SIMPLECNN_CPU_CAPABILITY=generic (read once, as ATen reads
// ATEN_CPU_CAPABILITY) asks for the portable kernel.
bool use_avx2() {
  static const bool use = [] {
    const char* forced = std::getenv("SIMPLECNN_CPU_CAPABILITY");
    if (forced != nullptr && std::string(forced) == "generic") return false;
#if defined(__x86_64__)
    return avx2_chunk_kernel(1) != nullptr && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
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

template ChunkKernel<float> chunk_kernel<float>(int);
template ChunkKernel<double> chunk_kernel<double>(int);

}  // namespace simplecnn::cpu
