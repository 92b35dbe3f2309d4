// Autograd of the public ops, in C++: with the CPU kernel in C++ too (forward_cpu), a call on
// CPU tensors runs no Python below the public function. torch.library's Python autograd wrapper
// took 2 of the 13 us of a no_grad call of the seed layer at batch 1.
//
// Nothing is kept from the pooled op's forward pass but its inputs: the backward recomputes
// where each window's gradient goes (the stock max-pool's first maximum, or its last NaN;
// nothing where ReLU zeroes the maximum). Narrow layers on the CPU get all three gradients from
// one fused kernel without any full-size tensor; otherwise a kernel writes the gradient of the
// conv output (full-size) and the library's conv backward (oneDNN, cuDNN) takes it from there.
// The unpooled op keeps its output, as the stock ReLU does, and takes the stock backward from
// there: ReLU's threshold_backward, then the library's conv backward.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/max_pool2d_with_indices.h>
#include <ATen/ops/max_pool2d_with_indices_backward.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/threshold_backward.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

namespace simplecnn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Backend = std::optional<c10::string_view>;
using Forward = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           Backend);
using OptionalGrads =
    std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>>;

// Below this many input channels the fused CPU backward beats the conv-gradient route
// (measured on the project's 2-core AVX2 machine: 3.9x at 3->18, even at 16->16).
constexpr int64_t kFusedBackwardMaxChannels = 16;

// The op's device implementation, below autograd.
at::Tensor forward_below_autograd(const at::Tensor& input, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, Backend backend,
                                  bool pool) {
  static const auto pooled = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("simplecnn::conv3x3_relu_maxpool2d", "")
                                 .typed<Forward>();
  static const auto unpooled = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow("simplecnn::conv3x3_relu2d", "")
                                   .typed<Forward>();
  const at::AutoDispatchBelowADInplaceOrView guard;
  return (pool ? pooled : unpooled).call(input, weight, bias, backend);
}

std::optional<at::Tensor> bias_of(const at::Tensor& saved) {
  return saved.defined() ? std::optional<at::Tensor>(saved) : std::nullopt;
}

// Which of the input, weight and bias gradients the backward must compute.
std::array<bool, 3> grad_mask(const AutogradContext* ctx, const std::optional<at::Tensor>& bias) {
  return {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
          bias.has_value() && ctx->needs_input_grad(2)};
}

// The library's conv backward (oneDNN, cuDNN) from the gradient of the conv output, 4-D.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward(const at::Tensor& grad_conv,
                                                             const at::Tensor& input,
                                                             const at::Tensor& weight,
                                                             const std::optional<at::Tensor>& bias,
                                                             std::array<bool, 3> mask) {
  // Symbolic sizes: under torch.compile a plain size() would specialize the traced shapes.
  const at::OptionalSymIntArrayRef bias_sizes =
      bias.has_value() ? at::OptionalSymIntArrayRef(weight.sym_sizes().slice(0, 1)) : std::nullopt;
  return at::convolution_backward_symint(grad_conv, input, weight, bias_sizes, {1, 1}, {1, 1},
                                         {1, 1}, false, {0, 0}, 1, mask);
}

// _conv_grad through the stock ops, differentiable: recompute the conv, route the gradient as
// max-pool and ReLU do.
at::Tensor conv_grad_stock(const at::Tensor& grad_output, const at::Tensor& input,
                           const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const at::Tensor activated = at::relu(at::conv2d(input, weight, bias, {1, 1}, {1, 1}));
  const at::Tensor indices = std::get<1>(at::max_pool2d_with_indices(activated, {2, 2}, {2, 2}));
  const at::Tensor grad_activated = at::max_pool2d_with_indices_backward(
      grad_output, activated, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false, indices);
  return at::threshold_backward(grad_activated, activated, 0);
}

// What the backward needs to know of the backend a call with backend None took: "cpu" on CPU
// tensors (the fused backward may run); on CUDA tensors a GPU kernel, "gpu" (no backend name:
// the conv-output gradient then comes from _conv_grad's CUDA kernel, Triton's or else the stock
// ops', whichever kernel ran forward); elsewhere the stock composition, as ops.py falls back.
const char* default_backend(const at::Tensor& input) {
  if (input.is_cpu()) return "cpu";
  return input.is_cuda() ? "gpu" : "reference";
}

class PooledFunction : public torch::autograd::Function<PooledFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, Backend backend) {
    ctx->save_for_backward({input, weight, bias.value_or(at::Tensor())});
    ctx->saved_data["backend"] = std::string(backend ? *backend : default_backend(input));
    return forward_below_autograd(input, weight, bias, backend, /*pool=*/true);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto fused_backward =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("simplecnn::_fused_backward", "")
            .typed<OptionalGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const std::optional<at::Tensor>&, std::array<bool, 3>)>();
    static const auto kernel_conv_grad =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("simplecnn::_conv_grad", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const std::optional<at::Tensor>&)>();
    const variable_list saved = ctx->get_saved_variables();
    at::Tensor input = saved[0], grad_output = grads[0];
    const at::Tensor& weight = saved[1];
    const std::optional<at::Tensor> bias = bias_of(saved[2]);
    const std::array<bool, 3> mask = grad_mask(ctx, bias);
    const std::string& backend = ctx->saved_data["backend"].toStringRef();
    const bool unbatched = input.dim() == 3;
    if (unbatched) {
      input = input.unsqueeze(0);
      grad_output = grad_output.unsqueeze(0);
    }
    // Under create_graph the backward itself must be differentiable: the stock ops are, the
    // kernels are not.
    const bool differentiable = at::GradMode::is_enabled();
    at::Tensor grad_input, grad_weight, grad_bias;
    if (backend == "cpu" && input.sym_size(1) < kFusedBackwardMaxChannels && !differentiable) {
      const auto [gi, gw, gb] = fused_backward.call(grad_output, input, weight, bias, mask);
      grad_input = gi.value_or(at::Tensor());
      grad_weight = gw.value_or(at::Tensor());
      grad_bias = gb.value_or(at::Tensor());
    } else {
      const at::Tensor grad_conv = backend == "reference" || differentiable
                                       ? conv_grad_stock(grad_output, input, weight, bias)
                                       : kernel_conv_grad.call(grad_output, input, weight, bias);
      std::tie(grad_input, grad_weight, grad_bias) = conv_backward(grad_conv, input, weight, bias,
                                                                   mask);
    }
    if (unbatched && grad_input.defined()) grad_input = grad_input.squeeze(0);
    return {grad_input, grad_weight, grad_bias, at::Tensor()};
  }
};

class UnpooledFunction : public torch::autograd::Function<UnpooledFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, Backend backend) {
    at::Tensor output = forward_below_autograd(input, weight, bias, backend, /*pool=*/false);
    ctx->save_for_backward({input, weight, bias.value_or(at::Tensor()), output});
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    at::Tensor input = saved[0];
    const at::Tensor& weight = saved[1];
    const std::optional<at::Tensor> bias = bias_of(saved[2]);
    at::Tensor grad_conv = at::threshold_backward(grads[0], saved[3], 0);
    const bool unbatched = input.dim() == 3;
    if (unbatched) {
      input = input.unsqueeze(0);
      grad_conv = grad_conv.unsqueeze(0);
    }
    auto [grad_input, grad_weight, grad_bias] = conv_backward(grad_conv, input, weight, bias,
                                                              grad_mask(ctx, bias));
    if (unbatched && grad_input.defined()) grad_input = grad_input.squeeze(0);
    return {grad_input, grad_weight, grad_bias, at::Tensor()};
  }
};

at::Tensor conv3x3_relu_maxpool2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                                           const std::optional<at::Tensor>& bias, Backend backend) {
  return PooledFunction::apply(input, weight, bias, backend);
}

at::Tensor conv3x3_relu2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, Backend backend) {
  return UnpooledFunction::apply(input, weight, bias, backend);
}

}  // namespace
}  // namespace simplecnn

TORCH_LIBRARY_FRAGMENT(simplecnn, m) {
  // _conv_grad through the stock ops (conv_grad_stock), for the CUDA _conv_grad without triton.
  m.def("_conv_grad_stock(Tensor grad_output, Tensor input, Tensor weight, Tensor? bias) -> Tensor",
        &simplecnn::conv_grad_stock);
}

TORCH_LIBRARY_IMPL(simplecnn, Autograd, m) {
  m.impl("conv3x3_relu_maxpool2d", &simplecnn::conv3x3_relu_maxpool2d_autograd);
  m.impl("conv3x3_relu2d", &simplecnn::conv3x3_relu2d_autograd);
}
