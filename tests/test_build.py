"""What the build produced."""

import os

import pytest
import torch

import simplecnn_kernels  # noqa: F401


def _has_kernel(key):
    return torch._C._dispatch_has_kernel_for_dispatch_key("simplecnn::_fused_forward", key)


def test_cpu_kernel_is_registered():
    assert _has_kernel("CPU")


@pytest.mark.skipif(
    os.environ.get("SIMPLECNN_BUILD_CUDA") != "1",
    reason="the build was not asked to include CUDA (SIMPLECNN_BUILD_CUDA=1, as CI sets)",
)
def test_cuda_kernel_is_built_without_a_gpu():
    # CI compiles and links the CUDA kernel on a machine without a GPU; it must be in _C.
    assert torch.version.cuda is not None
    assert _has_kernel("CUDA")
