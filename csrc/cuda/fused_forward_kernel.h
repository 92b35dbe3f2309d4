// The CUDA kernel's launcher (fused_forward_kernel.cu; `pool` false: conv3x3_relu2d;
// `round_before_bias`: round as cuDNN + add_ do, stock_conv_uses_cudnn), called by
// the ops' CUDA implementation (conv3x3_relu_maxpool2d_cuda.cpp) with checked arguments and the
// output.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace simplecnn::cuda {

// Whether this build holds a kernel image the current device can run (its SASS, or PTX the
// driver compiles): builds without a GPU target sm_80 and sm_90 + PTX only (setup.py).
bool has_kernel_image();

void launch_fused_forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& out, bool pool,
                          bool round_before_bias);

}  // namespace simplecnn::cuda
