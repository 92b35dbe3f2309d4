// The C++ side of simplecnn::conv3x3_relu_maxpool2d, shared by the CPU and CUDA kernels.
//
// The public op (schema in conv3x3_relu_maxpool2d.cpp) is dispatched in Python
// (simplecnn_kernels/ops.py), which picks a backend. Its compiled backends are the device
// kernels of the private op simplecnn::_fused_forward declared here.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace simplecnn {

// Throws c10::Error (a Python RuntimeError) naming the problem unless `input` is 4-D
// (N, C_in, H, W) with H, W >= 2, `weight` is (C_out, C_in, 3, 3) with C_out, C_in > 0, `bias` is (C_out,) or absent,
// and all are floating-point tensors of one dtype on one device. Mirrors _check_inputs in ops.py.
void check_inputs(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias);

// Allocates the (N, C_out, H / 2, W / 2) output in the memory format the stock conv would use.
at::Tensor empty_output(const at::Tensor& input, const at::Tensor& weight);

at::Tensor fused_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias);

}  // namespace simplecnn
