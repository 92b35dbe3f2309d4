// Schema registration and the argument checks shared by the CPU and CUDA kernels.
#include "conv3x3_relu_maxpool2d.h"

#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/ops/empty.h>
#include <Python.h>
#include <torch/library.h>

#include <string>

// `import simplecnn_kernels._C` loads this library, which runs the TORCH_LIBRARY registrations
// below. The module itself is empty: everything is reached through torch.ops.simplecnn.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace simplecnn {

static bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// "torch.float32", as Python prints dtypes, so C++ and Python errors read the same.
static std::string dtype_name(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

void check_inputs(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, bool pool, bool unbatched_ok) {
  const char* op = pool ? "conv3x3_relu_maxpool2d" : "conv3x3_relu2d";
  const bool input_dims_ok = input.dim() == 4 || (unbatched_ok && input.dim() == 3);
  TORCH_CHECK(input_dims_ok, op, ": expected input of shape (N, C_in, H, W)",
              unbatched_ok ? " or (C_in, H, W)" : "", ", got shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3, op,
              ": expected weight of shape (C_out, C_in, 3, 3), got shape ", weight.sizes());
  TORCH_CHECK(input.size(-3) == weight.size(1), op, ": input has ", input.size(-3),
              " channels but weight expects C_in=", weight.size(1), " (weight shape ",
              weight.sizes(), ")");
  TORCH_CHECK(weight.size(0) > 0 && weight.size(1) > 0, op,
              ": C_in and C_out must be positive, got weight shape ", weight.sizes());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                ": expected bias of shape (C_out,) = (", weight.size(0), ",), got shape ",
                bias->sizes());
  }
  TORCH_CHECK(is_supported_float(input.scalar_type()), op,
              ": expected a float32, float64, float16 or bfloat16 input, got dtype ",
              dtype_name(input.scalar_type()));
  const bool same_dtype = weight.scalar_type() == input.scalar_type() &&
                          (!bias.has_value() || bias->scalar_type() == input.scalar_type());
  TORCH_CHECK(same_dtype, op, ": input, weight and bias must have the same dtype, got input ",
              dtype_name(input.scalar_type()), ", weight ", dtype_name(weight.scalar_type()),
              ", bias ", bias.has_value() ? dtype_name(bias->scalar_type()) : "None");
  const bool same_device = weight.device() == input.device() &&
                           (!bias.has_value() || bias->device() == input.device());
  TORCH_CHECK(same_device, op, ": input, weight and bias must be on the same device, got input ",
              input.device(), ", weight ", weight.device(), ", bias ",
              bias.has_value() ? bias->device().str() : "None");
  if (pool) {
    TORCH_CHECK(input.size(-2) >= 2 && input.size(-1) >= 2, op,
                ": the 2x2 max-pool needs H >= 2 and W >= 2, got input shape ", input.sizes());
  } else {
    TORCH_CHECK(input.size(-2) >= 1 && input.size(-1) >= 1, op,
                ": the conv needs H >= 1 and W >= 1, got input shape ", input.sizes());
  }
}

bool stock_conv_uses_cudnn(const at::Tensor& input) {
  const auto& hooks = at::detail::getCUDAHooks();
  if (!input.is_cuda() || !at::globalContext().userEnabledCuDNN() || !hooks.compiledWithCuDNN())
    return false;
  // ATen's rule (Convolution.cpp, use_cudnn): cuDNN takes bfloat16 convs from sm_80 on (its
  // debug switch TORCH_CUDNN_V8_API_DISABLED is not followed).
  return input.scalar_type() != at::kBFloat16 || hooks.supportsBFloat16ConvolutionWithCuDNNv8();
}

at::Tensor empty_output(const at::Tensor& input, const at::Tensor& weight, bool pool) {
  // The stock conv returns channels_last when the input or the weight is, but on CUDA only
  // where cuDNN computes it (enabled; it turns NHWC off for float64); ReLU and the pool keep
  // it. stock_conv.py's output_memory_format makes the same choice for the fake kernels. The
  // current device must be the input's (cuDNN's bfloat16 support is read from it).
  TORCH_CHECK(input.dim() == 4 && weight.dim() == 4, "empty_output: expected 4-D input and ",
              "weight, got shapes ", input.sizes(), " and ", weight.sizes());
  const bool nhwc_possible = !input.is_cuda() ||
                             (stock_conv_uses_cudnn(input) && input.scalar_type() != at::kDouble);
  const bool channels_last = nhwc_possible &&
                             (input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                              weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast);
  const int64_t H = pool ? input.size(2) / 2 : input.size(2);
  const int64_t W = pool ? input.size(3) / 2 : input.size(3);
  return at::empty({input.size(0), weight.size(0), H, W},
                   input.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                               : at::MemoryFormat::Contiguous));
}

}  // namespace simplecnn

TORCH_LIBRARY(simplecnn, m) {
  // The public op. `backend` None picks the best backend for the tensors' device. Its device
  // implementation and fake kernel are registered in simplecnn_kernels/ops.py, but for CPU
  // tensors, whose kernel is forward_cpu (csrc/cpu); its autograd in csrc/autograd.cpp.
  m.def(
      "conv3x3_relu_maxpool2d(Tensor input, Tensor weight, Tensor? bias=None, *, "
      "str? backend=None) -> Tensor");
  // The sibling op without the pool: relu(conv2d(input, weight, bias, padding=1)).
  m.def(
      "conv3x3_relu2d(Tensor input, Tensor weight, Tensor? bias=None, *, str? backend=None) "
      "-> Tensor");
  // ops.py's implementation of both public ops (`pool` choosing which), for forward_cpu to run
  // the backends it leaves to Python.
  m.def(
      "_forward_by_backend(Tensor input, Tensor weight, Tensor? bias, bool pool, str? backend) "
      "-> Tensor");
  // The compiled kernels ("cpu" and "cuda" backends) of both, `pool` choosing which: 4-D input
  // only, no autograd.
  m.def("_fused_forward(Tensor input, Tensor weight, Tensor? bias, bool pool=True) -> Tensor");
  // Backward, recomputing the max-pool + ReLU routing from the inputs (nothing is kept from the
  // forward pass but its inputs):
  // the input, weight and bias gradients output_mask asks for, fused (CPU kernel);
  m.def(
      "_fused_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor? bias, "
      "bool[3] output_mask) -> (Tensor?, Tensor?, Tensor?)");
  // the gradient of the conv output (before bias and ReLU), full-size, for a library's conv
  // backward (CPU kernel; on CUDA a Triton kernel, registered in ops.py).
  m.def("_conv_grad(Tensor grad_output, Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  // The output the stock composition would return, uninitialized (its shape, dtype, device and
  // layout): for the Triton kernels, in one C++ call instead of Python's layout rules (about a
  // tenth of a Triton call's host time).
  m.def("_empty_output(Tensor input, Tensor weight, bool pool) -> Tensor",
        &simplecnn::empty_output);
}
