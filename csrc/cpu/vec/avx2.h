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
    _mm256_maskstore_ps(p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLanes + 8 - n)),
                        v);
  }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V zero() { return _mm256_setzero_ps(); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
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
  // With zero first, _mm256_max_ps returns the second operand when it is NaN.
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
  static Mask greater(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static Mask is_nan(V v) { return _mm256_cmp_ps(v, v, _CMP_UNORD_Q); }
  static Mask either(Mask a, Mask b) { return _mm256_or_ps(a, b); }
  static V select(Mask m, V if_true, V if_false) { return _mm256_blendv_ps(if_false, if_true, m); }
  static void store_int8(int8_t* p, V v, int n) {
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_cvtps_epi32(v));
    for (int j = 0; j < n; ++j) p[j] = static_cast<int8_t>(lanes[j]);
  }
};

}  // namespace simplecnn::cpu::avx2
