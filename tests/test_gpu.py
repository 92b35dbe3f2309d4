"""GPU-only checks: CUDA graphs, mixed devices, large batches (skipped without a GPU)."""

import pytest
import torch
from conftest import cuda_backends, requires_cuda

import simplecnn_kernels as sk
from simplecnn_kernels.testing import assert_matches_reference, make_inputs

pytestmark = requires_cuda
CUDA_BACKENDS = cuda_backends()


def test_default_backend_on_cuda():
    expected = "triton" if "triton" in CUDA_BACKENDS else "cuda"
    assert sk.ops.resolve_backend(None, torch.device("cuda"), torch.float32) == expected
    if "cuda" in CUDA_BACKENDS:  # Triton takes no float64; the CUDA C++ kernel does
        assert sk.ops.resolve_backend(None, torch.device("cuda"), torch.float64) == "cuda"
        # and it launches faster: the default for small calls
        assert sk.ops.resolve_backend(None, torch.device("cuda"), small_call=True) == "cuda"
        # built for this GPU (gpu_check.sh builds for the visible one)
        assert sk.ops._cuda_kernel_runs_on(torch.cuda.current_device())


@pytest.mark.skipif(len(CUDA_BACKENDS) < 2, reason="needs both the CUDA C++ and Triton kernels")
@pytest.mark.parametrize(("batch", "expected"), [(2, "cuda"), (2048, "triton")])
def test_the_default_backend_depends_on_the_work(batch, expected):
    # 8 -> 16 channels, 16x16: 2 images 1.2 MFLOP, 2048 images 1.2 GFLOP. The CUDA C++ kernel
    # runs as the op simplecnn::_fused_forward, Triton's does not.
    x, w, b = make_inputs(batch, 8, 16, 16, 16, device="cuda")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        sk.conv3x3_relu_maxpool2d(x, w, b)
    ran_cuda_kernel = any(e.name == "simplecnn::_fused_forward" for e in prof.events())
    assert ran_cuda_kernel == (expected == "cuda")


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


@pytest.mark.skipif("triton" not in CUDA_BACKENDS, reason="triton not installed")
def test_cuda_graph_capture_with_autotuning(monkeypatch):
    # Autotuning benchmarks a new shape (and synchronizes), which breaks a CUDA graph capture:
    # inside one the launcher takes the config tuned for the shape before, else the first.
    from simplecnn_kernels import triton_conv3x3_relu_maxpool2d as tk

    monkeypatch.setattr(tk, "_AUTOTUNE", True)  # the GPU test tier turns it off
    tuned, untuned = (
        make_inputs(8, 3, 18, 32, 32, device="cuda"),
        make_inputs(4, 3, 18, 24, 40, device="cuda"),
    )
    sk.conv3x3_relu_maxpool2d(*tuned, backend="triton")  # autotuned outside the capture
    key = ("fma", "pooled")  # float32 with TF32 off (the tests' precision fixture)
    assert (key, (3, 18, 16, 16, 8, torch.float32)) in tk._TUNED  # its config, for later calls
    tk.forward(*untuned, config=tk.CONFIGS[key][0])  # compiled before the capture

    def benchmark(*args, **kwargs):
        raise AssertionError("autotuning benchmarked inside a CUDA graph capture")

    monkeypatch.setattr(tk._autotuner(key), "_bench", benchmark)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [sk.conv3x3_relu_maxpool2d(*inputs, backend="triton") for inputs in (tuned, untuned)]
    for inputs in (tuned, untuned):  # fresh values, replayed
        for t in inputs:
            t.copy_(torch.randn_like(t))
    graph.replay()
    torch.cuda.synchronize()
    for out, inputs in zip(outs, (tuned, untuned), strict=True):
        assert_matches_reference(out, *inputs)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_more_than_2_31_elements(backend):
    # 16385 float16 images of 512x512: 4.3e9 input elements (8.6 GB), offsets past 2^31 from
    # the 8193rd image on; the last image checked against stock on that image alone.
    n = 16385
    x = torch.randn(n, 1, 512, 512, device="cuda", dtype=torch.float16)
    w = torch.randn(2, 1, 3, 3, device="cuda", dtype=torch.float16)
    b = torch.randn(2, device="cuda", dtype=torch.float16)
    assert x.numel() > 2**31
    out = sk.conv3x3_relu_maxpool2d(x, w, b, backend=backend)
    for i in (0, n // 2, n - 1):
        assert_matches_reference(out[i : i + 1], x[i : i + 1], w, b)
    del x, out
    torch.cuda.empty_cache()
