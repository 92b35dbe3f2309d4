// Runs of float16 / bfloat16 values (their bits) to float and back, rounded to nearest even as
// c10's conversions do, over the vector layer: the drivers' staging and stores of those dtypes
// (kernel_table.h: CpuKernels::to_float, from_float). The drivers are compiled for baseline
// x86-64, where c10's scalar float16 conversions are software (no F16C).
// Included by kernels_*.cpp inside their ISA's namespace, after the vector layer.
#pragma once

namespace convert {

// The first n lanes of v stored as float16 / bfloat16 at dst (a whole vector where n is one).
template <typename VF>
inline void store_16bit_first(uint16_t* dst, typename VF::V v, int n, StorageType storage) {
  if (n == VF::size) return VF::store_16bit(dst, v, storage);
  uint16_t stored[VF::size];
  VF::store_16bit(stored, v, storage);
  std::copy(stored, stored + n, dst);
}

template <StorageType S>
void to_float(const uint16_t* src, int64_t n, float* dst) {
  using VF = Vec<float>;
  int64_t i = 0;
  for (; i + VF::size <= n; i += VF::size) VF::store(dst + i, VF::load_16bit(src + i, S));
  if (i < n) {  // the tail through a zero-padded vector
    uint16_t tail[VF::size] = {};
    std::copy(src + i, src + n, tail);
    VF::store_first(dst + i, VF::load_16bit(tail, S), static_cast<int>(n - i));
  }
}

template <StorageType S>
void from_float(const float* src, int64_t n, uint16_t* dst) {
  using VF = Vec<float>;
  int64_t i = 0;
  for (; i + VF::size <= n; i += VF::size) VF::store_16bit(dst + i, VF::load(src + i), S);
  if (i < n) {
    float tail[VF::size] = {};
    std::copy(src + i, src + n, tail);
    store_16bit_first<VF>(dst + i, VF::load(tail), static_cast<int>(n - i), S);
  }
}

// dst[2 i] = a[i], dst[2 i + 1] = b[i] as bfloat16 for i < n (a multiple of Vec<float>::size):
// two float32 weight lines into bfloat16 pairs (kernel_table.h: interleave_bf16).
inline void interleave_bf16(const float* a, const float* b, int64_t n, uint16_t* dst) {
  using VF = Vec<float>;
  for (int64_t i = 0; i < n; i += VF::size) {
    typename VF::V low, high;
    VF::interleave(VF::load(a + i), VF::load(b + i), low, high);
    VF::store_16bit(dst + 2 * i, low, StorageType::kBFloat16);
    VF::store_16bit(dst + 2 * i + VF::size, high, StorageType::kBFloat16);
  }
}

}  // namespace convert
