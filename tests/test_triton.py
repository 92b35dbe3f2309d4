"""The Triton kernels: on a GPU when there is one, else through the Triton interpreter on CPU
tensors (tiny shapes: the interpreter costs ~20 ms per program and input channel); and their
sm_90 compilation, which needs no GPU."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import simplecnn_kernels as sk
from simplecnn_kernels.testing import (
    TOLERANCE,
    assert_matches_reference,
    make_inputs,
    reference,
    reference_conv_grad,
    stock_composition,
)

triton = pytest.importorskip("triton")
from simplecnn_kernels import triton_conv3x3_relu_maxpool2d as tk  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and not tk.INTERPRETED, reason="no GPU and not interpreting"
)
KERNELS = ["dot", "fma"]


def precision(kernel, dtype):
    """What `kernel` computes `dtype` in (the key of its TOLERANCE): the tensor-core kernel
    takes float32 as TF32 on a GPU (the interpreter's dot is exact)."""
    return "tf32" if kernel == "dot" and dtype == torch.float32 and DEVICE == "cuda" else dtype


def tf32_exact(*tensors):
    """float32 tensors with values TF32 holds exactly (8-bit mantissas: bfloat16's): products
    in the tensor-core kernel exact as in the FMA kernel, for tests of exact routing."""
    return [t.bfloat16().float() for t in tensors]


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [  # (N, C_in, C_out, H, W): at most ~36 programs each under the interpreter
    (2, 3, 18, 8, 8),  # RGB in: K = 27, one chunk
    (1, 5, 7, 9, 13),  # odd sizes, C_out not a multiple of the block
    (2, 3, 20, 17, 35),  # several pixel blocks per image
    (1, 17, 20, 6, 6),  # K = 153: several K chunks, C_in not a multiple of anything
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_kernel_matches_stock(kernel, shape, dtype, layout):
    x, w, b = make_inputs(*shape, dtype=dtype, layout=layout, device=DEVICE)
    out = tk.forward(x, w, b, kernel=kernel)
    assert_matches_reference(out, x, w, b, dtype=precision(kernel, dtype))


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_without_bias(kernel):
    x, w, _ = make_inputs(2, 3, 5, 7, 9, device=DEVICE, bias=False)
    out = tk.forward(x, w, None, kernel=kernel)
    assert_matches_reference(out, x, w, None, dtype=precision(kernel, x.dtype))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_nan_and_inf(kernel, dtype):
    x, w, b = make_inputs(2, 3, 6, 12, 14, dtype=dtype, device=DEVICE)
    flat = x.view(-1)
    where = torch.randperm(flat.numel(), device=DEVICE)[:6]
    flat[where] = torch.tensor([math.nan, math.inf, -math.inf] * 2, dtype=dtype, device=DEVICE)
    b[1] = math.inf
    out = tk.forward(x, w, b, kernel=kernel)
    assert_matches_reference(out, x, w, b, dtype=precision(kernel, dtype))
    assert torch.isnan(out).any() and torch.isinf(out).any()


# conv3x3_relu2d: the same kernels, storing the window's four conv values after ReLU.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(2, 3, 18, 8, 8), (1, 5, 7, 9, 13), (1, 17, 20, 5, 1)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_unpooled_kernel_matches_stock(kernel, shape, dtype, layout):
    x, w, b = make_inputs(*shape, dtype=dtype, layout=layout, device=DEVICE)
    x[0, 0, 1, 0] = x[-1, -1, -1, -1] = math.nan  # NaN through ReLU, as stock
    b[1] = -math.inf
    out = tk.forward(x, w, b, kernel=kernel, pool=False)
    assert_matches_reference(out, x, w, b, pool=False, dtype=precision(kernel, dtype))
    assert out.stride() == stock_composition(x, w, b, pool=False).stride()


def test_op_backend_triton_unpooled():
    x, w, b = make_inputs(None, 3, 4, 5, 7, device=DEVICE)
    out = sk.conv3x3_relu2d(x, w, b, backend="triton")
    assert_matches_reference(out, x, w, b, pool=False)
    torch.library.opcheck(
        torch.ops.simplecnn.conv3x3_relu2d, (x[None], w, b), {"backend": "triton"}
    )


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 8, 8), (1, 17, 6, 7, 9)], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_conv_grad_kernel(kernel, shape, layout):
    # The gradient of the conv output, routed as stock max-pool + ReLU route it; with ties
    # (a zero weight channel: all four values equal the bias) and NaN.
    x, w, b = make_inputs(*shape, layout=layout, device=DEVICE)
    if precision(kernel, x.dtype) == "tf32":  # else windows with near-ties may route apart
        x, w, b = tf32_exact(x, w, b)
    w[0] = 0.0
    x[0, 0, 2, 3] = x[-1, -1, 5, 1] = math.nan
    n, _, h, w_ = x.shape
    grad_out = torch.randn(n, w.shape[0], h // 2, w_ // 2, device=DEVICE)
    expected = reference_conv_grad(x, w, b, grad_out)
    got = tk.conv_grad(grad_out, x, w, b, kernel=kernel)
    assert got.shape == expected.shape
    torch.testing.assert_close(got.double().cpu(), expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("round_before_bias", [False, True], ids=["oneDNN", "cuDNN"])
def test_conv_grad_kernel_routes_by_the_stored_values(
    kernel, dtype, round_before_bias, monkeypatch
):
    # Stock picks each window's max among conv values as stored in the dtype (two values that
    # differ in float32 may tie there): conv + bias rounded once (oneDNN on the CPU), or the
    # conv rounded and then the bias added (cuDNN). The kernel routes by the same values.
    if DEVICE == "cuda" and not round_before_bias:
        pytest.skip("on CUDA the stock conv is cuDNN's")
    monkeypatch.setattr(tk, "_conv_rounds_before_bias", lambda device, dtype: round_before_bias)
    x, w, b = make_inputs(2, 3, 18, 16, 16, dtype=dtype, device=DEVICE)
    if round_before_bias:
        conv = torch.nn.functional.conv2d(x, w, None, padding=1) + b[:, None, None]
    else:
        conv = torch.nn.functional.conv2d(x, w, b, padding=1)
    conv.requires_grad_()
    pooled = torch.nn.functional.max_pool2d(torch.relu(conv), 2, 2)
    grad_out = torch.randn_like(pooled)
    pooled.backward(grad_out)
    got = tk.conv_grad(grad_out, x, w, b, kernel=kernel)
    torch.testing.assert_close(got, conv.grad, rtol=0, atol=0)


def test_op_backend_triton_unbatched_and_empty():
    x, w, b = make_inputs(None, 3, 4, 6, 6, device=DEVICE)
    out = sk.conv3x3_relu_maxpool2d(x, w, b, backend="triton")
    assert out.shape == (4, 3, 3)
    assert_matches_reference(out, x, w, b)
    x, w, b = make_inputs(0, 3, 4, 6, 6, device=DEVICE)
    assert sk.conv3x3_relu_maxpool2d(x, w, b, backend="triton").shape == (0, 4, 3, 3)


def test_op_backend_triton_opcheck_and_compile():
    x, w, b = make_inputs(2, 3, 4, 6, 6, device=DEVICE)
    torch.library.opcheck(
        torch.ops.simplecnn.conv3x3_relu_maxpool2d, (x, w, b), {"backend": "triton"}
    )
    fn = torch.compile(
        lambda x, w, b: sk.conv3x3_relu_maxpool2d(x, w, b, backend="triton"),
        backend="aot_eager",
        fullgraph=True,
    )
    assert_matches_reference(fn(x, w, b), x, w, b)


def test_triton_rejects_float64():
    x, w, b = make_inputs(1, 3, 4, 4, 4, dtype=torch.float64, device=DEVICE)
    with pytest.raises(
        RuntimeError, match=r"the Triton kernels take float32, float16 and bfloat16"
    ):
        sk.conv3x3_relu_maxpool2d(x, w, b, backend="triton")


def test_kernel_choice_follows_the_tf32_setting():
    # Settings are restored by conftest's fixture.
    x, w, b = make_inputs(1, 4, 4, 4, 4, device=DEVICE)
    out = torch.empty(1, 4, 2, 2, device=DEVICE)
    cudnn = torch.backends.cudnn
    cudnn.allow_tf32 = True  # the legacy flag
    assert tk.choose_kernel(x, out) == "dot"
    assert tk.choose_kernel(x.half(), out.half()) == "dot"
    rgb = x[:, :3]  # float32 RGB takes the multiply-adds (faster there); 16-bit the tensor cores
    assert tk.choose_kernel(rgb, out) == "fma"
    assert tk.choose_kernel(rgb.bfloat16(), out.bfloat16()) == "dot"
    cudnn.allow_tf32 = False
    assert tk.choose_kernel(x, out) == "fma"
    assert tk.choose_kernel(x.bfloat16(), out.bfloat16()) == "dot"
    # The precision API, "none" deferring to the next level up.
    for conv, all_cudnn, generic, expected in [
        ("ieee", "tf32", "tf32", "fma"),
        ("tf32", "ieee", "ieee", "dot"),
        ("none", "tf32", "ieee", "dot"),
        ("none", "none", "tf32", "dot"),
        ("none", "none", "none", "fma"),
        ("none", "ieee", "tf32", "fma"),
    ]:
        torch.backends.fp32_precision, cudnn.fp32_precision = generic, all_cudnn
        cudnn.conv.fp32_precision = conv
        assert tk.choose_kernel(x, out) == expected, (conv, all_cudnn, generic)
    cudnn.conv.fp32_precision, cudnn.enabled = "tf32", False  # no cuDNN: plain float32 GEMMs
    assert tk.choose_kernel(x, out) == "fma"


def test_precision_api_ieee_runs_full_float32():
    # Reading the legacy flag after the new API raised in every float32 call (issue 13).
    torch.backends.cudnn.conv.fp32_precision = "ieee"  # conv and RNN now differ
    x, w, b = make_inputs(1, 3, 4, 6, 6, device=DEVICE)
    assert_matches_reference(sk.conv3x3_relu_maxpool2d(x, w, b, backend="triton"), x, w, b)


@pytest.mark.skipif(DEVICE != "cuda", reason="TF32 exists on GPUs only")
def test_tf32_path_within_tf32_error():
    # float32 through the tensor cores with TF32 inputs (10-bit mantissa), as the stock conv
    # does by default: the error stays within a few TF32 roundings of the float64 result.
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    x, w, b = make_inputs(64, 8, 18, 32, 32, device=DEVICE)  # 8 channels: not choose_kernel's RGB
    out = sk.conv3x3_relu_maxpool2d(x, w, b, backend="triton")
    assert_matches_reference(out, x, w, b, dtype="tf32")
    ref, scale = reference(x, w, b)  # and the test can tell TF32 from float32:
    assert ((out.double().cpu() - ref).abs() / scale).max() > TOLERANCE[torch.float32]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter
@pytest.mark.parametrize(
    ("key", "index"),
    [(key, i) for key, configs in tk.CONFIGS.items() for i in range(len(configs))],
    ids=lambda v: "-".join(v) if isinstance(v, tuple) else f"config{v}",
)
def test_every_autotune_config_on_an_odd_shape(key, index):
    # Autotuning is off in the GPU test tier and absent under the interpreter, so only each
    # list's first config would ever run. 17x9 windows (unpooled 18x10) and 37 channels:
    # partial position and channel blocks for every config, K = 18: a partial K chunk. float32
    # values TF32 holds exactly, so the conv gradient routes exactly as the float64 reference.
    (kernel, epilogue), config = key, tk.CONFIGS[key][index]
    x, w, b = tf32_exact(*make_inputs(1, 2, 37, 35, 19, device=DEVICE))
    x[0, 1, 4, 7] = math.nan
    if epilogue == "conv_grad":
        grad_out = torch.randn(1, 37, 17, 9, device=DEVICE)
        got = tk.conv_grad(grad_out, x, w, b, kernel=kernel, config=config)
        expected = reference_conv_grad(x, w, b, grad_out)
        torch.testing.assert_close(got.double().cpu(), expected, rtol=0, atol=0)
    else:
        pool = epilogue == "pooled"
        out = tk.forward(x, w, b, kernel=kernel, pool=pool, config=config)
        assert_matches_reference(out, x, w, b, pool=pool)


def test_launcher_takes_tuned_configs_and_never_autotunes_inside_a_cuda_graph_capture(
    monkeypatch,
):
    # Keys autotuning has tuned launch the kernel with their config directly, past the
    # autotuner's per-call wrapper. Autotuning a new key benchmarks (and synchronizes), which
    # breaks a CUDA graph capture: inside one new keys take the first config. Always with the
    # options the autotuner launches with (Triton caches compiled kernels by them: other options
    # compile and load a module mid-capture).
    key, capturing = ("fma", "pooled"), [False]
    autotuner, first, second = tk._autotuner(key), *tk.CONFIGS[key][:2]
    monkeypatch.setattr(tk, "INTERPRETED", False)
    monkeypatch.setattr(tk, "_AUTOTUNE", True)
    monkeypatch.setattr(tk, "_TUNED", {(key, "tuned"): second})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    assert tk._launcher(key, "new", None) == (autotuner, {})
    assert tk._launcher(key, "tuned", None) == (tk._JIT["fma"], second.all_kwargs())
    capturing[0] = True
    assert tk._launcher(key, "tuned", None) == (tk._JIT["fma"], second.all_kwargs())
    assert tk._launcher(key, "new", None) == (tk._JIT["fma"], first.all_kwargs())
    assert tk._launcher(key, "new", second) == (tk._JIT["fma"], second.all_kwargs())
    assert "num_ctas" in first.all_kwargs()  # more than num_warps and num_stages


# --- compiled for an H100 without a GPU ------------------------------------------------------


@pytest.mark.slow
def test_every_config_compiles_for_sm90_without_spills():
    # In a process of its own: this session may be interpreting, which never compiles.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("triton_sm90.py")
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.count("\n") > 2 * 3  # a line per config and dtype


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("pool", [True, False], ids=["pooled", "unpooled"])
@pytest.mark.parametrize("round_before_bias", [False, True], ids=["oneDNN", "cuDNN"])
def test_forward_rounds_the_conv_as_stock(kernel, dtype, pool, round_before_bias, monkeypatch):
    # cuDNN rounds the conv to the dtype and add_ adds the bias (a float16 sum >= 65520 is Inf
    # whatever the bias); oneDNN rounds conv + bias once. The kernel rounds as the stock conv
    # of the device does; a few windows are pushed to float16's overflow edge.
    if DEVICE == "cuda" and not round_before_bias:
        pytest.skip("on CUDA the stock conv is cuDNN's")
    monkeypatch.setattr(tk, "_conv_rounds_before_bias", lambda device, dtype: round_before_bias)
    x, w, b = make_inputs(2, 3, 6, 8, 10, dtype=dtype, device=DEVICE)
    if dtype == torch.float16:  # conv (0, 0, 3, 4) = 27 * 9 * 270 = 65610: Inf when rounded
        x[:, :, 2:5, 3:6] = 270.0  # alone (>= 65520), 61610 with the bias added first
        w[0] = 9.0
        b[0] = -4000.0
    if round_before_bias:
        conv = torch.nn.functional.conv2d(x, w, None, padding=1) + b[:, None, None]
    else:
        conv = torch.nn.functional.conv2d(x, w, b, padding=1)
    expected = torch.relu(conv)
    if pool:
        expected = torch.nn.functional.max_pool2d(expected, 2, 2)
    got = tk.forward(x, w, b, kernel=kernel, pool=pool)
    assert torch.equal(got.isinf(), expected.isinf())  # the overflow edge: exactly as stock
    if dtype == torch.float16:
        assert expected.isinf().any() == round_before_bias  # the case is at the edge
    # Elsewhere within a rounding (summation order; the interpreter's bfloat16 store truncates).
    finite = expected.isfinite()
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-2, atol=1e-2)
