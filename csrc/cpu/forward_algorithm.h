// Which algorithm a forward call takes (direct, Winograd F(2x2) / F(4x4), implicit GEMM), and
// the Winograd setting that bounds it. Part of the forward driver (conv3x3_relu_maxpool2d_cpu.cpp).
#pragma once

#include "kernel_table.h"
#include "staging.h"

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <type_traits>

namespace simplecnn::cpu {

// Which kernel computes the pooled windows of a call.
//  - Wide layers (16 channels in and out and more) take the Winograd path, measured faster
//    there, when the call has enough pooled windows to repay the weight transform (about 55
//    cycles per channel pair, against a gain of about one cycle per pair and window) and the
//    weights are finite (inf - inf in the weight transform would give NaN where the direct
//    sum gives +-inf): F(4x4, 3x3) where it has enough whole tiles, else F(2x2, 3x3).
//  - Other wide layers (batch 1 of a deep layer: 8x8, 4x4 images) take the implicit GEMM,
//    which fills its vector lanes with output channels, when the direct kernel would leave 10%
//    or more of its column chunks (16 at AVX2, 32 at AVX-512) outside the image. Measured
//    (AVX2) at batch 1: 256 -> 512, 4x4: 0.30 ms against the direct kernel's 1.35; 256 -> 256,
//    8x8: 0.53 against 1.17; 64 -> 64, 14x14: 0.11 against 0.14; with whole chunks the direct
//    kernel wins (16 -> 32, 64x64: 0.21 against 0.28; 64 -> 128, 16x16, batch 16: 2.8 against
//    3.2).
//  - Everything else, and float64 (on every level), the direct kernel; also bfloat16 layers of
//    fewer than 64 channels that fill its chunks, at avx512_bf16 (below).
enum class Algorithm { kDirect, kWinograd2x2, kWinograd4x4, kImplicitGemm };

constexpr int64_t kWideMinChannels = 16;
// Input channels per implicit-GEMM call: the block's weights for them, 9 x 48 x 16 floats
// (27 KB), stay in L1 while every window of the image reads them (bfloat16 pairs: half that).
constexpr int64_t kGemmCiBlock = 48;
constexpr int64_t kWinogradMinWindows = 64;
constexpr int64_t kBf16PairsWinogradMinChannels = 64;
constexpr int64_t kWinograd4x4MinTiles = 64;

// How far Winograd may go (simplecnn_kernels.set_cpu_winograd, read per call): "4x4" allows
// F(4x4, 3x3) where it pays, "2x2" keeps to F(2x2, 3x3), "off" to the direct sums: the
// transforms' rounding error is larger than the direct sums' (winograd.h), which a user may
// not want to trade. The default comes from SIMPLECNN_CPU_WINOGRAD ("0" is "off"; unset: "4x4").
enum class WinogradSetting : int { kOff, k2x2Only, kAny };
constexpr const char* kWinogradSettingNames[] = {"off", "2x2", "4x4"};

inline WinogradSetting parse_winograd_setting(const std::string& text, const char* source) {
  for (int i = 0; i < 3; ++i)
    if (text == kWinogradSettingNames[i]) return static_cast<WinogradSetting>(i);
  TORCH_CHECK(false, source, "'", text, "': expected \"4x4\", \"2x2\" or \"off\"");
}

inline std::atomic<int> winograd_setting_now{-1};  // -1: not yet read from the environment

inline WinogradSetting winograd_setting() {
  const int now = winograd_setting_now.load(std::memory_order_relaxed);
  if (now >= 0) return static_cast<WinogradSetting>(now);
  const char* value = std::getenv("SIMPLECNN_CPU_WINOGRAD");
  const std::string text = value == nullptr || *value == '\0' ? "4x4" : value;
  const WinogradSetting from_env = text == "0"
                                       ? WinogradSetting::kOff
                                       : parse_winograd_setting(text, "SIMPLECNN_CPU_WINOGRAD=");
  int expected = -1;  // unless set_cpu_winograd came first
  winograd_setting_now.compare_exchange_strong(expected, static_cast<int>(from_env));
  return static_cast<WinogradSetting>(winograd_setting_now.load(std::memory_order_relaxed));
}

// Whether the direct and implicit-GEMM paths of a `dtype` call on level k take the
// bfloat16-pair kernels (kernel_table.h: CpuKernels::direct_bf16, window_gemm_bf16, the
// avx512_bf16 level's) rather than float32 ones. Winograd stays float32: its 2.25-4x fewer
// products beat vdpbf16ps's 2x rate.
inline bool takes_bf16_pairs(const CpuKernels& k, at::ScalarType dtype) {
  return dtype == at::kBFloat16 && k.direct_bf16.chunk_cols > 0;
}

// kGemmCiBlock channels per call: whole pairs.
static_assert(kGemmCiBlock % 2 == 0);

// The implicit GEMM over bfloat16 pairs repays pairing its packed weights (one more pass over
// them) from this many pooled windows per call on (pooled_windows): measured on
// Zen 4 at N=1, against the float32 GEMM of the same level, 256 -> 512 4x4 (4 windows) 0.88x, 256
// -> 256 8x8 (16) 1.06x, N=2 (32) 1.25x. Below, bfloat16 takes the float32 GEMM.
constexpr int64_t kGemmPairsMinWindows = 16;

// The pooled windows of a call, as the algorithm choice counts them (unpooled calls too).
inline int64_t pooled_windows(const at::Tensor& input) {
  return input.size(0) * (input.size(2) / 2) * (input.size(3) / 2);
}

inline bool gemm_takes_bf16_pairs(const CpuKernels& k, const at::Tensor& input) {
  return input.scalar_type() == at::kBFloat16 && k.window_gemm_bf16 != nullptr &&
         pooled_windows(input) >= kGemmPairsMinWindows;
}

template <typename acc_t>
Algorithm choose_algorithm(const CpuKernels& k, const at::Tensor& input, const at::Tensor& weight) {
  if constexpr (!std::is_same_v<acc_t, float>) {
    return Algorithm::kDirect;
  } else {
    if (input.size(1) < kWideMinChannels || weight.size(0) < kWideMinChannels)
      return Algorithm::kDirect;
    const int64_t pooled_h = input.size(2) / 2, pooled_w = input.size(3) / 2;
    const int64_t windows = pooled_windows(input);
    // The direct kernel computes chunk_cols columns per call: the share inside the image.
    const int64_t chunk = k.direct.chunk_cols;
    const int64_t cols = 2 * pooled_w, lanes = ceil_div(cols, chunk) * chunk;
    const bool direct_fills_chunks = 10 * cols >= 9 * lanes;
    // bfloat16 pairs: vdpbf16ps's twice the products per instruction beat the float32 Winograd
    // below 64 channels where the direct kernel fills its chunks (measured on Zen 4 against
    // F(4x4): 32 -> 32 32x32 N=8 1.29x, N=64 1.34x; 16 -> 16 N=16 1.56x; 48 -> 48 N=2 1.13x;
    // 64 -> 64 N=64 0.92x).
    if (direct_fills_chunks && takes_bf16_pairs(k, input.scalar_type()) &&
        std::min(input.size(1), weight.size(0)) < kBf16PairsWinogradMinChannels)
      return Algorithm::kDirect;
    const WinogradSetting setting = winograd_setting();
    if (windows >= kWinogradMinWindows && setting != WinogradSetting::kOff && all_finite(weight)) {
      // F(4x4) where its GEMM work (36 products per 4x4 tile against F(2x2)'s 16 per window,
      // per channel pair) is at least 20% less, odd sizes' partial tiles included, and there
      // are enough tiles to repay its larger weight transform (36 positions against 16; at
      // 256 -> 512 channels 19 MB, which made 16 tiles 20% slower than F(2x2), 64 tiles 7%
      // faster). Otherwise F(2x2), which is also the more accurate.
      const int64_t tiles_4x4 = input.size(0) * ceil_div(pooled_h, 2) * ceil_div(pooled_w, 2);
      if (setting == WinogradSetting::kAny && tiles_4x4 >= kWinograd4x4MinTiles &&
          5 * 36 * tiles_4x4 <= 4 * 16 * windows)
        return Algorithm::kWinograd4x4;
      return Algorithm::kWinograd2x2;
    }
    return direct_fills_chunks ? Algorithm::kDirect : Algorithm::kImplicitGemm;
  }
}

}  // namespace simplecnn::cpu
