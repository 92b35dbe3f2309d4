// The CPU kernel of simplecnn::_fused_forward: the op's entry, which runs a FusedForward call
// (forward.h: the algorithm is picked per call, forward_algorithm.h; each algorithm's driver in
// forward_direct.h, forward_winograd.h, forward_implicit_gemm.h) with the kernels of the
// current instruction-set level (kernel_table.h), and the private ops that report and set the
// level and the Winograd setting.
//
// float32, float16 and bfloat16 accumulate in float32; float64 accumulates in float64 with the
// generic direct kernel.
#include "../conv3x3_relu_maxpool2d.h"
#include "forward.h"
#include "forward_algorithm.h"
#include "forward_direct.h"
#include "forward_implicit_gemm.h"
#include "forward_winograd.h"
#include "kernel_table.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

namespace simplecnn {
namespace cpu {
namespace {

std::string cpu_capability() { return cpu_kernels().name; }

std::string cpu_winograd() { return kWinogradSettingNames[static_cast<int>(winograd_setting())]; }

void set_cpu_winograd(const std::string& setting) {
  winograd_setting_now.store(static_cast<int>(parse_winograd_setting(setting, "Winograd setting ")),
                             std::memory_order_relaxed);
}

std::vector<std::string> cpu_capabilities() { return supported_capabilities(); }

void set_capability(const std::string& level) { set_cpu_capability(level); }

// The algorithm a call takes and the level of the kernel that computes it, as "winograd_4x4/avx2".
std::string cpu_algorithm(const at::Tensor& input, const at::Tensor& weight) {
  check_inputs(input, weight, std::nullopt);
  const CpuKernels& k = cpu_kernels();
  const bool f64 = input.scalar_type() == at::kDouble;
  const Algorithm algorithm =
      f64 ? choose_algorithm<double>(k, input, weight) : choose_algorithm<float>(k, input, weight);
  switch (algorithm) {
    case Algorithm::kWinograd2x2: return std::string("winograd_2x2/") + k.name;
    case Algorithm::kWinograd4x4: return std::string("winograd_4x4/") + k.name;
    case Algorithm::kImplicitGemm: return std::string("implicit_gemm/") + k.name;
    case Algorithm::kDirect: break;
  }
  return std::string("direct/") + (f64 ? "generic" : k.name);
}

}  // namespace
}  // namespace cpu

at::Tensor fused_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, bool pool) {
  check_inputs(input, weight, bias, pool);
  cpu::winograd_setting();  // a bad SIMPLECNN_CPU_WINOGRAD fails every call, not only wide ones
  at::Tensor out = empty_output(input, weight, pool);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "conv3x3_relu_maxpool2d_cpu", [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    cpu::FusedForward<scalar_t, acc_t>(input, weight, bias, out, pool).run();
                                  });
  return out;
}

}  // namespace simplecnn

TORCH_LIBRARY_FRAGMENT(simplecnn, m) {
  // The instruction-set level CPU calls take now ("avx512", "avx2" or "generic"), the levels
  // this CPU runs (best first), and a way to switch (for tests and benchmarks).
  m.def("_cpu_capability() -> str", &simplecnn::cpu::cpu_capability);
  m.def("_cpu_capabilities() -> str[]", &simplecnn::cpu::cpu_capabilities);
  m.def("_set_cpu_capability(str level) -> ()", &simplecnn::cpu::set_capability);
  // How far the CPU kernel may use Winograd: "4x4", "2x2" or "off".
  m.def("_cpu_winograd() -> str", &simplecnn::cpu::cpu_winograd);
  m.def("_set_cpu_winograd(str setting) -> ()", &simplecnn::cpu::set_cpu_winograd);
  // Which algorithm the CPU kernel picks for these arguments and the level of its kernel:
  // "direct", "winograd_4x4", "winograd_2x2" or "implicit_gemm", then "/" and the level.
  m.def("_cpu_algorithm(Tensor input, Tensor weight) -> str");
}

TORCH_LIBRARY_IMPL(simplecnn, CPU, m) {
  m.impl("_fused_forward", &simplecnn::fused_forward_cpu);
  m.impl("_cpu_algorithm", &simplecnn::cpu::cpu_algorithm);
}
