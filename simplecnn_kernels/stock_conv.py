"""What the stock conv does on each device that the fused ops follow there: which library
computes it (stock_conv_uses_cudnn), whether float32 may run as TF32 (conv_allows_tf32) and the
layout of its output (output_memory_format; conv_grad_memory_format for the conv gradient). The
op layer (ops.py: fake kernels, the reference route) and the Triton kernels read them here, so
neither module imports the other for them."""

from __future__ import annotations

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format


def stock_conv_uses_cudnn(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the stock conv on tensors of this device and dtype is cuDNN's (CUDA, cuDNN
    present and enabled; bfloat16 only on a GPU of sm_80 on, as ATen's use_cudnn decides, whose
    debug switch TORCH_CUDNN_V8_API_DISABLED is not followed), whose output layout and rounding
    the kernels follow there. The C++ twin is stock_conv_uses_cudnn in
    csrc/conv3x3_relu_maxpool2d.cpp."""
    if not (
        device.type == "cuda"
        and torch.backends.cudnn.enabled
        and torch.backends.cudnn.is_available()
    ):
        return False
    if dtype != torch.bfloat16:
        return True
    # Without a GPU (fake CUDA tensors) stock's own fake conv takes bfloat16 as not cuDNN's.
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


def conv_allows_tf32() -> bool:
    """Whether torch's settings let the stock CUDA conv compute float32 in TF32: cuDNN enabled
    (without it the conv runs on cuBLAS GEMMs, TF32 only if the matmul precision allows it;
    the kernels then keep full float32, never less precise) and its conv precision "tf32", where
    "none" defers to cuDNN's, then to the global one (torch.backends.cudnn.conv.fp32_precision,
    torch.backends.cudnn.fp32_precision, torch.backends.fp32_precision). The legacy flag
    torch.backends.cudnn.allow_tf32 sets the conv precision too ("tf32" or "none"); reading it
    raises once the two APIs are mixed, so it is read only where the new API is missing."""
    if not torch.backends.cudnn.enabled:
        return False
    cudnn = torch.backends.cudnn
    if not hasattr(cudnn, "conv"):  # torch without the precision API
        return bool(cudnn.allow_tf32)
    return tf32_precision(
        cudnn.conv.fp32_precision, cudnn.fp32_precision, torch.backends.fp32_precision
    )


def tf32_precision(*precisions: str) -> bool:
    """Whether the first of torch's fp32_precision settings that is set ("none" defers to the
    next, more general one) is "tf32"; all "none": full float32 ("ieee"), torch's default."""
    return next((p for p in precisions if p != "none"), "ieee") == "tf32"


def output_memory_format(input: Tensor, weight: Tensor) -> torch.memory_format:
    """The stock conv's output layout, which ReLU and the pool keep: channels_last when the input
    or the weight is, but on CUDA only where cuDNN computes the conv (not without it, nor for
    float64, for which it turns NHWC off). The C++ kernels' empty_output makes the same choice."""
    cudnn_nhwc = stock_conv_uses_cudnn(input.device, input.dtype) and input.dtype != torch.float64
    if input.device.type == "cuda" and not cudnn_nhwc:
        return torch.contiguous_format
    if input.dim() == 4 and torch.channels_last in (
        suggest_memory_format(input),
        suggest_memory_format(weight),
    ):
        return torch.channels_last
    return torch.contiguous_format


def conv_grad_memory_format(input: Tensor, weight: Tensor) -> torch.memory_format:
    """The layout of _conv_grad's result: on the CPU the C++ kernel's (the input's), on CUDA the
    stock conv output's, which its reference route gives and the Triton kernel follows."""
    if input.device.type == "cuda":
        return output_memory_format(input, weight)
    return suggest_memory_format(input)
