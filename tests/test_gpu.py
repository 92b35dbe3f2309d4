"""GPU-only checks: CUDA graphs, mixed devices, large batches (skipped without a GPU)."""

import pytest
import torch
from checks import assert_matches_reference, make_inputs
from conftest import cuda_backends, requires_cuda

import simplecnn_kernels as sk

pytestmark = requires_cuda
CUDA_BACKENDS = cuda_backends()


def test_default_backend_on_cuda():
    expected = "triton" if "triton" in CUDA_BACKENDS else "cuda"
    assert sk.ops.resolve_backend(None, torch.device("cuda"), torch.float32) == expected
    if "cuda" in CUDA_BACKENDS:  # Triton takes no float64; the CUDA C++ kernel does
        assert sk.ops.resolve_backend(None, torch.device("cuda"), torch.float64) == "cuda"


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_compile_reduce_overhead_cuda_graphs(backend):
    model = sk.FusedSimpleCNN(device="cuda", backend=backend).eval()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        for _ in range(4):  # warm-up runs, then graph replays on fresh inputs
            x = torch.randn(32, 3, 32, 32, device="cuda")
            torch.testing.assert_close(compiled(x).clone(), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_mixed_devices_raise(backend):
    x, w, b = make_inputs(2, 3, 4, 8, 8, device="cuda")
    with pytest.raises(RuntimeError, match="same device"):
        sk.conv3x3_relu_maxpool2d(x, w.cpu(), b, backend=backend)
    with pytest.raises(RuntimeError, match="same device"):
        sk.conv3x3_relu_maxpool2d(x, w, b.cpu(), backend=backend)


@pytest.mark.skipif("cuda" not in CUDA_BACKENDS, reason="CUDA C++ kernel not built")
def test_cuda_kernel_checks_mixed_devices():
    x, w, b = make_inputs(2, 3, 4, 8, 8, device="cuda")
    with pytest.raises(RuntimeError, match="same device"):
        torch.ops.simplecnn._fused_forward(x, w, b.cpu())


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_batch(backend, dtype):
    x, w, b = make_inputs(4096, 3, 18, 32, 32, dtype=dtype, device="cuda")
    assert_matches_reference(sk.conv3x3_relu_maxpool2d(x, w, b, backend=backend), x, w, b)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_wide_layer(backend, layout):
    x, w, b = make_inputs(64, 64, 64, 32, 32, device="cuda", layout=layout)
    assert_matches_reference(sk.conv3x3_relu_maxpool2d(x, w, b, backend=backend), x, w, b)
