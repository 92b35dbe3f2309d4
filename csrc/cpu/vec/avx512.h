// The vector layer for AVX-512 (F, BW, DQ, VL): Vec<float> of 16 lanes in a zmm register, mask
// registers for tails and conditions (README.md). Include it after `#pragma GCC target(...)` and
// <immintrin.h>.
#pragma once

namespace simplecnn::cpu::avx512 {

template <typename T>
struct Vec;

template <>
struct Vec<float> {
  using T = float;
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int size = 16;

  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_first(float* p, V v, int n) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
  }
  // Stores that bypass the caches (p 64-byte aligned), and the fence that orders them before
  // later loads of other threads.
  static void stream(float* p, V v) { _mm512_stream_ps(p, v); }
  static void stream_fence() { _mm_sfence(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V zero() { return _mm512_setzero_ps(); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  // A scalar operand of fmadd, from memory: with AVX-512 the broadcast folds into the FMA
  // ({1to16}), no instruction or register of its own. Measured on the direct kernel (Zen 4):
  // 5-15% faster than a broadcast register shared by two FMAs.
  using Broadcast = const float*;
  static Broadcast broadcast(const float* p) { return p; }
  // In asm, so GCC cannot merge the loads of one *p across FMAs and hold the values in
  // registers instead (it spills the accumulators then).
  static V fmadd(Broadcast a, V b, V c) {
    asm("vfmadd231ps %2%{1to16%}, %1, %0" : "+v"(c) : "v"(b), "m"(*a));
    return c;
  }
  // vmaxps returns its second operand when either is NaN: take the first where it is NaN.
  static V max_keep_nan(V a, V b) {
    return _mm512_mask_mov_ps(_mm512_max_ps(a, b), _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), a);
  }
  // As in vec/avx2.h: NaN and -0 pass, as in torch.relu.
  static V relu_keep_nan(V v) { return _mm512_max_ps(_mm512_setzero_ps(), v); }
  static void even_odd(V h0, V h1, V& even, V& odd) {
    const __m512i even_lanes = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                                 28, 30);
    const __m512i odd_lanes = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27,
                                                29, 31);
    even = _mm512_permutex2var_ps(h0, even_lanes, h1);
    odd = _mm512_permutex2var_ps(h0, odd_lanes, h1);
  }
  static V round_to(V v, StorageType storage) {
    if (storage == StorageType::kHalf)
      return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (storage == StorageType::kBFloat16) {  // to nearest even on the upper 16 bits
      const __m512i bits = _mm512_castps_si512(v);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
      const __m512i rounded = _mm512_and_si512(
          _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)),
          _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
      // NaN stays NaN (the addition could carry a NaN's low bits into an infinity).
      return _mm512_mask_mov_ps(_mm512_castsi512_ps(rounded), is_nan(v), v);
    }
    return v;
  }
  // size float16 / bfloat16 values (their bits) as lanes, and lanes stored as them, rounded
  // to nearest even as c10's conversions do; NaN stays NaN (bfloat16: c10's quiet NaN 0x7fc0).
  static V load_16bit(const uint16_t* p, StorageType storage) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if (storage == StorageType::kHalf) return _mm512_cvtph_ps(bits);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
  static void store_16bit(uint16_t* p, V v, StorageType storage) {
    __m256i bits;
    if (storage == StorageType::kHalf) {
      bits = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
      const __m512i rounded = _mm512_mask_mov_epi32(_mm512_castps_si512(round_to(v, storage)),
                                                    is_nan(v), _mm512_set1_epi32(0x7fc00000));
      bits = _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bits);
  }
  static float sum(V v) { return _mm512_reduce_add_ps(v); }  // of the lanes
  static bool any_nan(V v) { return is_nan(v) != 0; }
  static Mask greater(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static Mask equal(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static Mask is_nan(V v) { return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q); }
  static Mask either(Mask a, Mask b) { return static_cast<Mask>(a | b); }
  static V select(Mask m, V if_true, V if_false) {
    return _mm512_mask_mov_ps(if_false, m, if_true);
  }
  // size int8 values as float lanes.
  static V load_int8(const int8_t* p) {
    return _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // a0 b0 a1 b1 ...: the first size lanes in `low`, the rest in `high`.
  static void interleave(V a, V b, V& low, V& high) {
    const __m512i low_lanes = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7,
                                                23);
    const __m512i high_lanes = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14,
                                                 30, 15, 31);
    low = _mm512_permutex2var_ps(a, low_lanes, b);
    high = _mm512_permutex2var_ps(a, high_lanes, b);
  }
  // dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols, a block of at most
  // 16 x 16 in registers, partial ones through masked loads and stores: rows of 16 lanes
  // interleaved in pairs, then in pairs of pairs (within 128-bit lanes), then 128-bit lanes
  // gathered across rows in two steps.
  static constexpr int transpose_size = 16;
  static void transpose_block(const float* src, int64_t src_stride, int rows, int cols, float* dst,
                              int64_t dst_stride) {
    const __mmask16 col_mask = static_cast<__mmask16>((1u << cols) - 1);
    V r[16], t[16];
    for (int i = 0; i < 16; ++i)
      r[i] = i < rows ? _mm512_maskz_loadu_ps(col_mask, src + i * src_stride) : zero();
    for (int i = 0; i < 16; i += 2) {  // per 128-bit lane: a0 b0 a1 b1 | a2 b2 a3 b3
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // r[i + j], lane L: column 4 L + j of rows i .. i + 3
      r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
      r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
      r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
      r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    const __mmask16 row_mask = static_cast<__mmask16>((1u << rows) - 1);
    for (int j = 0; j < 4; ++j) {
      // Lanes 0, 1 then 2, 3 of rows 0-3 and 4-7 (s0, s1), and of rows 8-11 and 12-15 (s2, s3).
      const V s0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x44);
      const V s1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xee);
      const V s2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x44);
      const V s3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xee);
      const V column[4] = {_mm512_shuffle_f32x4(s0, s2, 0x88), _mm512_shuffle_f32x4(s0, s2, 0xdd),
                           _mm512_shuffle_f32x4(s1, s3, 0x88), _mm512_shuffle_f32x4(s1, s3, 0xdd)};
      for (int l = 0; l < 4; ++l)  // column 4 l + j
        if (4 * l + j < cols)
          _mm512_mask_storeu_ps(dst + (4 * l + j) * dst_stride, row_mask, column[l]);
    }
  }
  static void store_int8(int8_t* p, V v, int n) {
    _mm512_mask_cvtepi32_storeu_epi8(p, static_cast<__mmask16>((1u << n) - 1),
                                     _mm512_cvtps_epi32(v));
  }
};

// bfloat16 input channels in pairs for the direct kernel and the implicit GEMM (their In), the
// avx512_bf16 level's: a vector of 16 float lanes is fed by 16 pairs of bfloat16 values, two
// channels side by side, and vdpbf16ps adds both products to each lane. The products of two
// bfloat16 values are exact in float32 and the sums rounded to nearest even (as the float32
// FMAs'); vdpbf16ps also treats denormal operands (inputs, weights, the running sum) as zero
// and flushes denormal results to zero: values under 1.2e-38. In asm, so that this header needs no
// AVX512_BF16 target.
struct Bf16Pairs {
  using Elem = uint16_t;  // bfloat16 bits
  static constexpr int channels = 2;
  using X = __m512i;
  static X load(const uint16_t* p) { return _mm512_loadu_si512(p); }
  // One pair (a pair of weights in the direct kernel, of input values in the implicit GEMM),
  // folded into vdpbf16ps as a {1to16} broadcast, as Vec<float>::fmadd's.
  struct Pair {
    uint16_t bits[2];
  };
  static const Pair* broadcast(const uint16_t* p) { return reinterpret_cast<const Pair*>(p); }
  static __m512 madd(const Pair* w, X x, __m512 acc) {
    asm("vdpbf16ps %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(x), "m"(*w));
    return acc;
  }
};

}  // namespace simplecnn::cpu::avx512
