// The CPU kernels of the public ops (forward_cpu: the "cpu" backend without Python) and of
// simplecnn::_fused_forward, the kernel's entry, which runs a FusedForward call
// (forward.h: the algorithm is picked per call, forward_algorithm.h; each algorithm's driver in
// forward_direct.h, forward_winograd.h, forward_implicit_gemm.h) with the kernels of the
// current instruction-set level (kernel_table.h), and the private ops that report and set the
// level and the Winograd setting and list the drivers' work items (work_items.h).
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
#include "work_items.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/tensor.h>
#include <torch/library.h>

#include <initializer_list>
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

// The algorithm a call takes and the level of the kernel that computes it, as
// "winograd_4x4/avx2"; "direct_bf16" and "implicit_gemm_bf16" are the kernels over bfloat16
// channel pairs (avx512_bf16).
std::string cpu_algorithm(const at::Tensor& input, const at::Tensor& weight) {
  check_inputs(input, weight, std::nullopt);
  const CpuKernels& k = cpu_kernels();
  const bool f64 = input.scalar_type() == at::kDouble;
  const Algorithm algorithm = f64 ? choose_algorithm<double>(k, input, weight)
                                  : choose_algorithm<float>(k, input, weight);
  if (algorithm == Algorithm::kWinograd2x2) return std::string("winograd_2x2/") + k.name;
  if (algorithm == Algorithm::kWinograd4x4) return std::string("winograd_4x4/") + k.name;
  const bool direct = algorithm == Algorithm::kDirect;
  const bool pairs = direct ? takes_bf16_pairs(k, input.scalar_type())
                            : gemm_takes_bf16_pairs(k, input);
  const char* name = direct ? "direct" : "implicit_gemm";
  const char* bf16 = pairs ? "_bf16/" : "/";
  return std::string(name) + bf16 + (f64 ? "generic" : k.name);
}

// The work items of `algorithm`'s driver (any name _cpu_algorithm gives) for these arguments on
// `threads` threads, whichever algorithm the call would take: one row (n0, n1, py0, py1, co0, co1)
// per item, the images, window rows and output channels it writes (work_items.h). Rows and channels
// may reach past the output where the last tile or channel block does.
at::Tensor cpu_work_items(const at::Tensor& input, const at::Tensor& weight, bool pool,
                          const std::string& algorithm, int64_t threads) {
  check_inputs(input, weight, std::nullopt, pool);
  TORCH_CHECK(threads > 0, "_cpu_work_items: threads must be positive, got ", threads);
  const int64_t n = input.size(0), c_out = weight.size(0);
  const int64_t ho = pool ? input.size(2) / 2 : ceil_div(input.size(2), 2);
  const int64_t wo = pool ? input.size(3) / 2 : ceil_div(input.size(3), 2);
  std::vector<int64_t> rows;
  const auto add = [&](std::initializer_list<int64_t> row) { rows.insert(rows.end(), row); };
  const CpuKernels& k = cpu_kernels();
  // The bfloat16-pair kernels' items are their float32 twins' (direct: sized by the dtype's
  // staged rows, whichever kernel).
  if (algorithm == "direct" || algorithm == "direct_bf16") {
    const DirectItems items(n, ho, direct_row_bytes(k, input, weight, pool), threads);
    for (int64_t i = 0; i < items.count; ++i) {
      const auto [image, py0, py1] = items[i];
      add({image, image + 1, py0, py1, 0, c_out});
    }
  } else if (algorithm == "implicit_gemm" || algorithm == "implicit_gemm_bf16") {
    const ImplicitGemmItems items(n, ho, wo, input.size(1), c_out, threads);
    for (int64_t i = 0; i < items.count; ++i) {
      const auto [image, py0, item_rows, b0, b1] = items[i];
      add({image, image + 1, py0, py0 + item_rows, b0 * kGemmCoBlock, b1 * kGemmCoBlock});
    }
  } else {
    TORCH_CHECK(algorithm == "winograd_2x2" || algorithm == "winograd_4x4",
                "_cpu_work_items: unknown algorithm '", algorithm, "'");
    const int m = algorithm == "winograd_4x4" ? 4 : 2, side = m / 2;
    const WinogradItems items(m, n, ho, wo, ceil_div(c_out, kWinogradCoBlock), k.winograd_gemm_rows,
                              threads);
    for (int64_t i = 0; i < items.count; ++i) {
      const WinogradItems::Item item = items[i];
      add({item.n0, item.n0 + item.images, item.ty0 * side, (item.ty0 + item.rows) * side,
           item.b0 * kWinogradCoBlock, item.b1 * kWinogradCoBlock});
    }
  }
  const int64_t count = static_cast<int64_t>(rows.size()) / 6;
  return at::tensor(rows, at::kLong).view({count, 6});
}

}  // namespace
}  // namespace cpu

at::Tensor fused_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, bool pool) {
  check_inputs(input, weight, bias, pool);
  cpu::winograd_setting();  // a bad SIMPLECNN_CPU_WINOGRAD fails every call, not only wide ones
  at::Tensor out = empty_output(input, weight, pool);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "conv3x3_relu_maxpool2d_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        cpu::FusedForward<scalar_t, acc_t>(input, weight, bias, out, pool).run();
      });
  return out;
}

// The public ops on CPU tensors. Their default backend there, "cpu", runs without Python: at
// batch 1 ops.py's dispatch took almost as long as the kernel (a no_grad call of the seed layer:
// 21 us through ops.py, 13.4 us here). Other backends go to ops.py
// (simplecnn::_forward_by_backend), which checks the arguments first too.
at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias,
                       std::optional<c10::string_view> backend, bool pool) {
  if (backend.has_value() && *backend != "cpu") {
    static const auto by_backend = c10::Dispatcher::singleton()
                                       .findSchemaOrThrow("simplecnn::_forward_by_backend", "")
                                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                         const std::optional<at::Tensor>&, bool,
                                                         std::optional<c10::string_view>)>();
    return by_backend.call(input, weight, bias, pool, backend);
  }
  // Through the dispatcher, so that profiles show the kernel as simplecnn::_fused_forward.
  static const auto kernel = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("simplecnn::_fused_forward", "")
                                 .typed<decltype(fused_forward_cpu)>();
  // A 4-D input is checked by the kernel, with the same messages; others here, on their own
  // shape (the unsqueezed one would print in the messages).
  if (input.dim() == 4) return kernel.call(input, weight, bias, pool);
  check_inputs(input, weight, bias, pool, /*unbatched_ok=*/true);
  // Unbatched, as ops.py's _forward_by_backend: not a view; the pooled result contiguous, as stock
  // max-pool returns it.
  const at::Tensor out = kernel.call(input.unsqueeze(0), weight, bias, pool);
  return (pool ? out.contiguous() : out).squeeze(0).detach();
}

at::Tensor conv3x3_relu_maxpool2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias,
                                      std::optional<c10::string_view> backend) {
  return forward_cpu(input, weight, bias, backend, /*pool=*/true);
}

at::Tensor conv3x3_relu2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias,
                              std::optional<c10::string_view> backend) {
  return forward_cpu(input, weight, bias, backend, /*pool=*/false);
}

}  // namespace simplecnn

TORCH_LIBRARY_FRAGMENT(simplecnn, m) {
  // The instruction-set level CPU calls take now ("avx512_bf16", "avx512", "avx2" or "generic"),
  // the levels this CPU runs (best first), and a way to switch (for tests and benchmarks).
  m.def("_cpu_capability() -> str", &simplecnn::cpu::cpu_capability);
  m.def("_cpu_capabilities() -> str[]", &simplecnn::cpu::cpu_capabilities);
  m.def("_set_cpu_capability(str level) -> ()", &simplecnn::cpu::set_capability);
  // How far the CPU kernel may use Winograd: "4x4", "2x2" or "off".
  m.def("_cpu_winograd() -> str", &simplecnn::cpu::cpu_winograd);
  m.def("_set_cpu_winograd(str setting) -> ()", &simplecnn::cpu::set_cpu_winograd);
  // Which algorithm the CPU kernel picks for these arguments and the level of its kernel:
  // "direct", "winograd_4x4", "winograd_2x2" or "implicit_gemm" ("direct_bf16",
  // "implicit_gemm_bf16": over bfloat16 pairs), then "/" and the level.
  m.def("_cpu_algorithm(Tensor input, Tensor weight) -> str");
  // The work items of an algorithm's driver for these arguments (a test that they partition
  // the output).
  m.def(
      "_cpu_work_items(Tensor input, Tensor weight, bool pool, str algorithm, int threads) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(simplecnn, CPU, m) {
  m.impl("conv3x3_relu_maxpool2d", &simplecnn::conv3x3_relu_maxpool2d_cpu);
  m.impl("conv3x3_relu2d", &simplecnn::conv3x3_relu2d_cpu);
  m.impl("_fused_forward", &simplecnn::fused_forward_cpu);
  m.impl("_cpu_algorithm", &simplecnn::cpu::cpu_algorithm);
  m.impl("_cpu_work_items", &simplecnn::cpu::cpu_work_items);
}
