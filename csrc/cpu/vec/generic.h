// The portable vector layer: Vec<T> of 8 lanes as a plain array, for float and double
// (README.md). The compiler vectorizes its loops for whatever the build targets.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace simplecnn::cpu::generic {

template <typename T>
struct Vec {
  static constexpr int size = 8;
  struct V {
    T lane[size];
  };
  struct Mask {
    bool lane[size];
  };
  template <typename F>
  static V map(F f) {
    V r;
    for (int i = 0; i < size; ++i) r.lane[i] = f(i);
    return r;
  }

  static V load(const T* p) {
    return map([&](int i) { return p[i]; });
  }
  static void store(T* p, V v) { store_first(p, v, size); }
  static void store_first(T* p, V v, int n) {
    for (int i = 0; i < n; ++i) p[i] = v.lane[i];
  }
  static V set1(T x) {
    return map([&](int) { return x; });
  }
  static V zero() { return set1(T(0)); }
  static V add(V a, V b) {
    return map([&](int i) { return a.lane[i] + b.lane[i]; });
  }
  static V sub(V a, V b) {
    return map([&](int i) { return a.lane[i] - b.lane[i]; });
  }
  static V fnmadd(V a, V b, V c) {
    return map([&](int i) { return c.lane[i] - a.lane[i] * b.lane[i]; });
  }
  static void stream(T* p, V v) { store(p, v); }
  static void stream_fence() {}
  static V fmadd(V a, V b, V c) {
    return map([&](int i) { return a.lane[i] * b.lane[i] + c.lane[i]; });
  }
  using Broadcast = V;
  static Broadcast broadcast(const T* p) { return set1(*p); }
  static T max_keep_nan(T a, T b) { return (a != a || a > b) ? a : b; }
  static V max_keep_nan(V a, V b) {
    return map([&](int i) { return max_keep_nan(a.lane[i], b.lane[i]); });
  }
  static V relu_keep_nan(V v) {
    // NaN and -0 pass, as in torch.relu and the SIMD levels.
    return map(
        [&](int i) { return (v.lane[i] != v.lane[i] || v.lane[i] >= T(0)) ? v.lane[i] : T(0); });
  }
  static void even_odd(V h0, V h1, V& even, V& odd) {
    for (int i = 0; i < size; ++i) {
      const V& h = i < size / 2 ? h0 : h1;
      even.lane[i] = h.lane[2 * i % size];
      odd.lane[i] = h.lane[2 * i % size + 1];
    }
  }
  static V round_to(V v, StorageType storage) {
    const auto as = [&](auto stored) {
      return map([&](int i) { return T(static_cast<float>(decltype(stored)(float(v.lane[i])))); });
    };
    if (storage == StorageType::kHalf) return as(c10::Half());
    if (storage == StorageType::kBFloat16) return as(c10::BFloat16());
    return v;
  }
  // As in vec/avx512.h: float16 / bfloat16 bits as lanes and back, by c10's conversions.
  static V load_16bit(const uint16_t* p, StorageType storage) {
    return map([&](int i) {
      return T(storage == StorageType::kHalf
                   ? static_cast<float>(c10::Half(p[i], c10::Half::from_bits()))
                   : static_cast<float>(c10::BFloat16(p[i], c10::BFloat16::from_bits())));
    });
  }
  static void store_16bit(uint16_t* p, V v, StorageType storage) {
    for (int i = 0; i < size; ++i) {
      const float x = static_cast<float>(v.lane[i]);
      p[i] = storage == StorageType::kHalf ? c10::Half(x).x : c10::BFloat16(x).x;
    }
  }
  static T sum(V v) {  // of the lanes
    T total = 0;
    for (int i = 0; i < size; ++i) total += v.lane[i];
    return total;
  }
  static Mask equal(V a, V b) {
    Mask m;
    for (int i = 0; i < size; ++i) m.lane[i] = a.lane[i] == b.lane[i];
    return m;
  }
  static V load_int8(const int8_t* p) {
    return map([&](int i) { return T(p[i]); });
  }
  static void interleave(V a, V b, V& low, V& high) {
    for (int i = 0; i < size; ++i) {
      V& half = i < size / 2 ? low : high;
      const int j = i % (size / 2);
      half.lane[2 * j] = a.lane[i];
      half.lane[2 * j + 1] = b.lane[i];
    }
  }
  static bool any_nan(V v) {
    bool nan = false;
    for (int i = 0; i < size; ++i) nan |= v.lane[i] != v.lane[i];
    return nan;
  }
  static Mask greater(V a, V b) {
    Mask m;
    for (int i = 0; i < size; ++i) m.lane[i] = a.lane[i] > b.lane[i];
    return m;
  }
  static Mask is_nan(V v) {
    Mask m;
    for (int i = 0; i < size; ++i) m.lane[i] = v.lane[i] != v.lane[i];
    return m;
  }
  static Mask either(Mask a, Mask b) {
    for (int i = 0; i < size; ++i) a.lane[i] = a.lane[i] || b.lane[i];
    return a;
  }
  static V select(Mask m, V if_true, V if_false) {
    return map([&](int i) { return m.lane[i] ? if_true.lane[i] : if_false.lane[i]; });
  }
  static constexpr int transpose_size = size;
  static void transpose_block(const T* src, int64_t src_stride, int rows, int cols, T* dst,
                              int64_t dst_stride) {
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) dst[c * dst_stride + r] = src[r * src_stride + c];
  }
  static void store_int8(int8_t* p, V v, int n) {
    for (int i = 0; i < n; ++i) p[i] = static_cast<int8_t>(v.lane[i]);
  }
};

}  // namespace simplecnn::cpu::generic
