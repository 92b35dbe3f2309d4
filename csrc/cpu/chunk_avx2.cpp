// The AVX2+FMA micro-kernel (see pooled_chunk.h for what one call computes).
//
// This file alone is compiled for AVX2 (by the target pragma below, so the extension stays
// loadable on any x86-64 CPU; the driver calls in here only when the CPU reports AVX2 and FMA).
// Everything after the pragma lives in an anonymous namespace and uses intrinsics only, so no
// AVX2 copy of a shared inline function can leak into the generic code at link time.
#include "pooled_chunk.h"

#if defined(__x86_64__)

#include <immintrin.h>

#include "avx2_helpers.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace simplecnn::cpu {
namespace {

using avx2::max_keep_nan;
using avx2::relu_keep_nan;

// A broadcast the compiler may not merge with an earlier one of the same weight. Each weight
// serves conv row 0 at input row r and conv row 1 at input row r + 1; GCC merges those two
// broadcasts, keeps a channel's 27 weights live across rows and spills the accumulators.
inline __m256 broadcast_unmerged(const float* p) {
  __m256 v;
  asm volatile("vbroadcastss %1, %0" : "=x"(v) : "m"(*p));
  return v;
}

// Splits 16 conv columns (two vectors) into their even and odd columns, each in pooled order:
// the shuffles give pooled columns 0,1,4,5 | 2,3,6,7, a 64-bit permute restores the order.
inline void even_odd(__m256 h0, __m256 h1, __m256& even, __m256& odd) {
  even = _mm256_shuffle_ps(h0, h1, _MM_SHUFFLE(2, 0, 2, 0));
  odd = _mm256_shuffle_ps(h0, h1, _MM_SHUFFLE(3, 1, 3, 1));
  even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), _MM_SHUFFLE(3, 1, 2, 0)));
  odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odd), _MM_SHUFFLE(3, 1, 2, 0)));
}

// `v` rounded to the storage dtype (and back), as the stock conv output is stored.
inline __m256 round_to_storage(__m256 v, StorageType storage) {
  if (storage == StorageType::kHalf) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  if (storage == StorageType::kBFloat16) {  // round to nearest even on the upper 16 bits
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_and_si256(
        _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)),
        _mm256_set1_epi32(static_cast<int>(0xffff0000u)));
    // NaN stays NaN (the addition could carry a NaN's low bits into an infinity).
    return _mm256_blendv_ps(_mm256_castsi256_ps(rounded), v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  return v;
}

// The backward pass's recompute: window_index (pooled_chunk.h) for 8 windows at once, from the
// window positions (a, b) in max-pool order (0,0) (0,1) (1,0) (1,1), stored as int8.
inline void store_window_indices(__m256 (&v)[4], StorageType storage, int8_t* dst, int n_out) {
  for (int p = 0; p < 4; ++p) v[p] = round_to_storage(v[p], storage);
  const __m256 zero = _mm256_setzero_ps();
  __m256 best = v[0], index = zero;
  for (int p = 1; p < 4; ++p) {
    const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v[p], best, _CMP_GT_OQ),
                                     _mm256_cmp_ps(v[p], v[p], _CMP_UNORD_Q));
    best = _mm256_blendv_ps(best, v[p], take);
    index = _mm256_blendv_ps(index, _mm256_set1_ps(float(p)), take);
  }
  const __m256 flows = _mm256_or_ps(_mm256_cmp_ps(best, zero, _CMP_GT_OQ),
                                    _mm256_cmp_ps(best, best, _CMP_UNORD_Q));
  index = _mm256_blendv_ps(_mm256_set1_ps(-1.0f), index, flows);
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_cvtps_epi32(index));
  for (int j = 0; j < n_out; ++j) dst[j] = static_cast<int8_t>(lanes[j]);
}

// Register blocking: for each input channel the 4 input rows under one pooled row feed 2 conv
// rows x CO channels x 2 vectors of 8 columns. Each input row segment is loaded once per kx and
// used by up to 2*CO weights; with CO = 3 that is 12 independent FMA chains, which keeps both
// FMA units busy and fits the 16 ymm registers (12 accumulators, 2 inputs, 1 weight).
template <int CO>
void chunk_avx2(const ChunkArgs<float>& a) {
  __m256 acc[2][CO][2];  // [conv row][channel][8-column half]
  // The channel loops are unrolled at once (pragma) so that GCC sees constant indices and keeps
  // `acc` in registers; left to its later unroller it keeps the array on the stack.
#pragma GCC unroll 4
  for (int co = 0; co < CO; ++co) {
    // Starting from the bias adds it to each conv value before the max, as the stock conv
    // does, so an infinite bias gives the stock NaN/Inf results.
    if (a.first) {
      const __m256 b = _mm256_set1_ps(a.bias[co]);
      acc[0][co][0] = acc[0][co][1] = acc[1][co][0] = acc[1][co][1] = b;
    } else {  // acc[r][co][h] is partial[r][co][8 * h .. 8 * h + 7]
      acc[0][co][0] = _mm256_loadu_ps(a.partial + (0 * CO + co) * kChunkCols);
      acc[0][co][1] = _mm256_loadu_ps(a.partial + (0 * CO + co) * kChunkCols + 8);
      acc[1][co][0] = _mm256_loadu_ps(a.partial + (1 * CO + co) * kChunkCols);
      acc[1][co][1] = _mm256_loadu_ps(a.partial + (1 * CO + co) * kChunkCols + 8);
    }
  }

  const float* in = a.in;
  const float* w = a.weight;
  for (int64_t ci = 0; ci < a.c_in; ++ci, in += a.in_ch_stride, w += 9 * CO) {
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {  // input row r feeds conv row 0 (ky = r) and 1 (ky = r - 1)
      const float* row = in + r * a.in_row_stride;
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; ++kx) {
        const __m256 x0 = _mm256_loadu_ps(row + kx);
        const __m256 x1 = _mm256_loadu_ps(row + kx + 8);
        if (r < 3) {
#pragma GCC unroll 4
          for (int co = 0; co < CO; ++co) {
            const __m256 wv = broadcast_unmerged(w + (r * 3 + kx) * CO + co);
            acc[0][co][0] = _mm256_fmadd_ps(wv, x0, acc[0][co][0]);
            acc[0][co][1] = _mm256_fmadd_ps(wv, x1, acc[0][co][1]);
          }
        }
        if (r > 0) {
#pragma GCC unroll 4
          for (int co = 0; co < CO; ++co) {
            const __m256 wv = broadcast_unmerged(w + ((r - 1) * 3 + kx) * CO + co);
            acc[1][co][0] = _mm256_fmadd_ps(wv, x0, acc[1][co][0]);
            acc[1][co][1] = _mm256_fmadd_ps(wv, x1, acc[1][co][1]);
          }
        }
      }
    }
  }

  if (!a.last) {
#pragma GCC unroll 4
    for (int co = 0; co < CO; ++co) {
      _mm256_storeu_ps(a.partial + (0 * CO + co) * kChunkCols, acc[0][co][0]);
      _mm256_storeu_ps(a.partial + (0 * CO + co) * kChunkCols + 8, acc[0][co][1]);
      _mm256_storeu_ps(a.partial + (1 * CO + co) * kChunkCols, acc[1][co][0]);
      _mm256_storeu_ps(a.partial + (1 * CO + co) * kChunkCols + 8, acc[1][co][1]);
    }
    return;
  }
  if (a.index != nullptr) {
#pragma GCC unroll 4
    for (int co = 0; co < CO; ++co) {
      __m256 v[4];
      even_odd(acc[0][co][0], acc[0][co][1], v[0], v[1]);
      even_odd(acc[1][co][0], acc[1][co][1], v[2], v[3]);
      store_window_indices(v, a.storage, a.index + co * a.index_ch_stride, a.n_out);
    }
    return;
  }
  alignas(32) static const int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                    0,  0,  0,  0,  0,  0,  0,  0};
  const __m256i store_mask =
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - a.n_out));
#pragma GCC unroll 4
  for (int co = 0; co < CO; ++co) {
    // Vertical max of the two conv rows, then horizontal max of column pairs.
    __m256 even, odd;
    even_odd(max_keep_nan(acc[0][co][0], acc[1][co][0]), max_keep_nan(acc[0][co][1], acc[1][co][1]),
             even, odd);
    // ReLU once per pooled value: max(relu(c)) == relu(max(c)).
    const __m256 pooled = relu_keep_nan(max_keep_nan(even, odd));
    float* dst = a.out + co * a.out_ch_stride;
    if (a.n_out == kChunkPooled) {
      _mm256_storeu_ps(dst, pooled);
    } else {
      _mm256_maskstore_ps(dst, store_mask, pooled);
    }
  }
}

}  // namespace
}  // namespace simplecnn::cpu

#pragma GCC pop_options

namespace simplecnn::cpu {

ChunkKernel<float> avx2_chunk_kernel(int co_block) {
  static constexpr ChunkKernel<float> kKernels[kMaxChannelBlock] = {
      chunk_avx2<1>, chunk_avx2<2>, chunk_avx2<3>};
  return kKernels[co_block - 1];
}

}  // namespace simplecnn::cpu

#else  // not x86-64: the driver uses the generic kernel

namespace simplecnn::cpu {
ChunkKernel<float> avx2_chunk_kernel(int) { return nullptr; }
}  // namespace simplecnn::cpu

#endif
