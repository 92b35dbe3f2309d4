// The C++ side of simplecnn::conv3x3_relu_maxpool2d and simplecnn::conv3x3_relu2d, shared by
// the CPU and CUDA kernels.
//
// The public ops (schemas in conv3x3_relu_maxpool2d.cpp) are dispatched in Python
// (simplecnn_kernels/ops.py), which picks a backend, but on CPU tensors, where forward_cpu
// (csrc/cpu) runs the default "cpu" backend itself. Their compiled backends are the device
// kernels of the private op simplecnn::_fused_forward (CPU: fused_forward_cpu, declared here;
// CUDA: csrc/cuda/), and on the CPU _fused_backward and _conv_grad for their gradients.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <type_traits>

namespace simplecnn {

// Every kernel (CPU forward and backward, CUDA) accumulates in at::opmath_type<scalar_t>:
// float16, bfloat16 and float32 in float32, float64 in float64.
static_assert(std::is_same_v<at::opmath_type<at::Half>, float> &&
              std::is_same_v<at::opmath_type<at::BFloat16>, float> &&
              std::is_same_v<at::opmath_type<float>, float> &&
              std::is_same_v<at::opmath_type<double>, double>);

// Throws c10::Error (a Python RuntimeError) naming the problem and the op (pooled or not) unless
// `input` is 4-D (N, C_in, H, W) (with `unbatched_ok` also 3-D (C_in, H, W)) with H, W >= 2
// (unpooled: >= 1), `weight` is (C_out, C_in, 3, 3) with C_out, C_in > 0, `bias` is (C_out,) or
// absent, and all are floating-point tensors of one dtype on one device. Mirrors _check_inputs
// in ops.py.
void check_inputs(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, bool pool = true,
                  bool unbatched_ok = false);

// Whether the stock conv on `input` is cuDNN's (CUDA, cuDNN present and enabled; bfloat16 from
// sm_80 on), whose output layout and rounding the kernels follow there. Mirrors
// stock_conv_uses_cudnn in stock_conv.py.
bool stock_conv_uses_cudnn(const at::Tensor& input);

// Allocates the (N, C_out, H / 2, W / 2) output (unpooled: (N, C_out, H, W)) in the memory
// format the stock conv would use.
at::Tensor empty_output(const at::Tensor& input, const at::Tensor& weight, bool pool);

at::Tensor fused_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, bool pool);

}  // namespace simplecnn
