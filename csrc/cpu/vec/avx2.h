// The vector layer for AVX2 + FMA + F16C: Vec<float> of 8 lanes in a ymm register (README.md).
// Include it after `#pragma GCC target("avx2,fma,f16c")` and <immintrin.h>.
#pragma once

namespace simplecnn::cpu::avx2 {

template <typename T>
struct Vec;

template <>
struct Vec<float> {
  using T = float;
  using V = __m256;
  using Mask = __m256;  // all-ones lanes where true
  static constexpr int size = 8;

  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store_first(float* p, V v, int n) {
    alignas(32) static const int32_t kLanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                   0,  0,  0,  0,  0,  0,  0,  0};
    _mm256_maskstore_ps(p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLanes + 8 - n)), v);
  }
  // Stores that bypass the caches (p 32-byte aligned), and the fence that orders them before
  // later loads of other threads.
  static void stream(float* p, V v) { _mm256_stream_ps(p, v); }
  static void stream_fence() { _mm_sfence(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V zero() { return _mm256_setzero_ps(); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  // A scalar operand of fmadd, from memory, in a register. The broadcast is asm so that GCC
  // cannot merge the broadcasts of one *p and hold the values in registers instead (it spills
  // the accumulators then).
  using Broadcast = V;
  static Broadcast broadcast(const float* p) {
    V v;
    asm volatile("vbroadcastss %1, %0" : "=x"(v) : "m"(*p));
    return v;
  }
  // _mm256_max_ps returns its second operand when either is NaN: put the first one's NaNs back.
  static V max_keep_nan(V a, V b) {
    return _mm256_blendv_ps(_mm256_max_ps(a, b), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
  // With zero first, _mm256_max_ps returns the second operand when it is NaN, and -0 for -0
  // (two zeros), as torch.relu does.
  static V relu_keep_nan(V v) { return _mm256_max_ps(_mm256_setzero_ps(), v); }
  // Shuffles give lanes 0,2,8,10,4,6,12,14 (and the odd ones); a 64-bit permute orders them.
  static void even_odd(V h0, V h1, V& even, V& odd) {
    even = _mm256_shuffle_ps(h0, h1, _MM_SHUFFLE(2, 0, 2, 0));
    odd = _mm256_shuffle_ps(h0, h1, _MM_SHUFFLE(3, 1, 3, 1));
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), _MM_SHUFFLE(3, 1, 2, 0)));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odd), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  static V round_to(V v, StorageType storage) {
    if (storage == StorageType::kHalf)
      return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (storage == StorageType::kBFloat16) {  // to nearest even on the upper 16 bits
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
  // As in vec/avx512.h: float16 / bfloat16 bits as lanes and back, to nearest even.
  static V load_16bit(const uint16_t* p, StorageType storage) {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if (storage == StorageType::kHalf) return _mm256_cvtph_ps(bits);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  }
  static void store_16bit(uint16_t* p, V v, StorageType storage) {
    __m128i bits;
    if (storage == StorageType::kHalf) {
      bits = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {  // the upper halves of the rounded values, packed (they are <= 0xffff: no saturation)
      const V quiet_nan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000));
      const __m256i words = _mm256_srli_epi32(
          _mm256_castps_si256(select(is_nan(v), quiet_nan, round_to(v, storage))), 16);
      bits = _mm_packus_epi32(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), bits);
  }
  static float sum(V v) {  // of the lanes
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
  }
  static bool any_nan(V v) { return _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0; }
  static Mask greater(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static Mask equal(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static Mask is_nan(V v) { return _mm256_cmp_ps(v, v, _CMP_UNORD_Q); }
  static Mask either(Mask a, Mask b) { return _mm256_or_ps(a, b); }
  static V select(Mask m, V if_true, V if_false) { return _mm256_blendv_ps(if_false, if_true, m); }
  // dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols, a block of at most
  // transpose_size x transpose_size: in registers when whole, else element by element.
  static constexpr int transpose_size = 8;
  static void transpose_block(const float* src, int64_t src_stride, int rows, int cols, float* dst,
                              int64_t dst_stride) {
    if (rows < 8 || cols < 8) {
      for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) dst[c * dst_stride + r] = src[r * src_stride + c];
      return;
    }
    V r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
    for (int i = 0; i < 8; i += 2) {  // interleave row pairs
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {  // then pairs of pairs
      r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
      r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
      r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
      r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {  // then the 128-bit halves
      _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
      _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
  }
  // size int8 values as float lanes.
  static V load_int8(const int8_t* p) {
    return _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  // a0 b0 a1 b1 ...: the first size lanes in `low`, the rest in `high`.
  static void interleave(V a, V b, V& low, V& high) {
    const V lo = _mm256_unpacklo_ps(a, b), hi = _mm256_unpackhi_ps(a, b);
    low = _mm256_permute2f128_ps(lo, hi, 0x20);
    high = _mm256_permute2f128_ps(lo, hi, 0x31);
  }
  static void store_int8(int8_t* p, V v, int n) {
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_cvtps_epi32(v));
    for (int j = 0; j < n; ++j) p[j] = static_cast<int8_t>(lanes[j]);
  }
};

}  // namespace simplecnn::cpu::avx2
