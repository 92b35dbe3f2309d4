// The CUDA implementation of simplecnn::_fused_forward: checks, device guard, launch.
// Kept out of the .cu file so nvcc compiles only the kernel and narrow headers.
#include "../conv3x3_relu_maxpool2d.h"
#include "fused_forward_kernel.h"

#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace simplecnn {

at::Tensor fused_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, bool pool) {
  check_inputs(input, weight, bias, pool);
  const c10::cuda::CUDAGuard device_guard(input.device());
  at::Tensor out = empty_output(input, weight, pool);
  if (out.numel() > 0)
    cuda::launch_fused_forward(input, weight, bias, out, pool, stock_conv_uses_cudnn(input));
  return out;
}

bool cuda_kernel_runs_on(c10::Device device) {
  const c10::cuda::CUDAGuard device_guard(device);
  return cuda::has_kernel_image();
}

}  // namespace simplecnn

TORCH_LIBRARY_FRAGMENT(simplecnn, m) {
  // Whether the CUDA kernel has an image for this GPU (ops.py asks before choosing it).
  m.def("_cuda_kernel_runs_on(Device device) -> bool", &simplecnn::cuda_kernel_runs_on);
}

TORCH_LIBRARY_IMPL(simplecnn, CUDA, m) { m.impl("_fused_forward", &simplecnn::fused_forward_cuda); }
