// The resolver: which instruction-set level's kernel table (kernel_table.h) calls take.
//
// A level counts as supported when CPUID reports its instructions and XGETBV shows the OS saves
// the registers they use (ymm for AVX2; opmask and all 32 zmm for AVX-512): a CPU can have
// AVX-512 that the OS has not enabled.
#include "kernel_table.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <iterator>
#include <mutex>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace simplecnn::cpu {
namespace {

#if defined(__x86_64__)
struct X86Levels {
  bool avx2 = false, avx512 = false, avx512_bf16 = false;
};

X86Levels detect_x86() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return {};
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12),
             f16c = c & (1u << 29);
  if (!osxsave || !avx) return {};
  uint32_t xcr0_lo, xcr0_hi;
  asm volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const bool ymm_state = (xcr0_lo & 0x6) == 0x6;    // SSE and AVX state
  const bool zmm_state = (xcr0_lo & 0xe6) == 0xe6;  // and opmask, ZMM_Hi256, Hi16_ZMM
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return {};
  const bool avx2 = b & (1u << 5);
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) &&
                      (b & (1u << 31));  // F, DQ, BW, VL
  X86Levels levels;
  levels.avx2 = ymm_state && avx2 && fma && f16c;
  levels.avx512 = levels.avx2 && zmm_state && avx512;
  // AVX512_BF16 is in subleaf 1 of leaf 7, where subleaf 0's EAX (its last subleaf) reaches it.
  if (a >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d))
    levels.avx512_bf16 = levels.avx512 && (a & (1u << 5));
  return levels;
}
#endif

const CpuKernels& kernels_of(const std::string& level) {
#if defined(__x86_64__)
  if (level == "avx512_bf16") return avx512_bf16_kernels();
  if (level == "avx512") return avx512_kernels();
  if (level == "avx2") return avx2_kernels();
#endif
  return generic_kernels();
}

void check_supported(const std::string& level, const char* source) {
  const auto& supported = supported_capabilities();
  for (const auto& s : supported)
    if (s == level) return;
  const char* const levels[] = {"avx512_bf16", "avx512", "avx2", "generic"};
  const bool known = std::find(std::begin(levels), std::end(levels), level) != std::end(levels);
  TORCH_CHECK(false, source, "'", level,
              "': ", known ? "this CPU cannot run it" : "not a CPU capability level",
              "; this CPU runs: ", c10::Join(", ", supported));
}

std::atomic<const CpuKernels*> active{nullptr};

}  // namespace

const std::vector<std::string>& supported_capabilities() {
  static const std::vector<std::string> levels = [] {
    std::vector<std::string> v;
#if defined(__x86_64__)
    const X86Levels x86 = detect_x86();
    if (x86.avx512_bf16) v.push_back("avx512_bf16");
    if (x86.avx512) v.push_back("avx512");
    if (x86.avx2) v.push_back("avx2");
#endif
    v.push_back("generic");
    return v;
  }();
  return levels;
}

const CpuKernels& cpu_kernels() {
  if (const CpuKernels* k = active.load(std::memory_order_acquire)) return *k;
  static std::once_flag from_environment;
  std::call_once(from_environment, [] {
    const char* forced = std::getenv("SIMPLECNN_CPU_CAPABILITY");
    std::string level = supported_capabilities().front();
    if (forced != nullptr && *forced != '\0') {
      level = forced;
      check_supported(level, "SIMPLECNN_CPU_CAPABILITY=");
    }
    const CpuKernels* expected = nullptr;  // unless set_cpu_capability came first
    active.compare_exchange_strong(expected, &kernels_of(level));
  });
  return *active.load(std::memory_order_acquire);
}

void set_cpu_capability(const std::string& level) {
  check_supported(level, "CPU capability ");
  active.store(&kernels_of(level), std::memory_order_release);
}

}  // namespace simplecnn::cpu
