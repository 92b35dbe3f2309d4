"""The fused ops against the stock composition: values, layouts, NaN/Inf, torch.compile/export.

Most tests run for both ops (the `op` fixture): conv3x3_relu_maxpool2d ("pooled") and its
unpooled sibling conv3x3_relu2d."""

import io
import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import HAS_CUDA, device_backends

import simplecnn_kernels as sk
from simplecnn_kernels.testing import (
    LAYOUTS,
    assert_matches_reference,
    make_inputs,
    stock_composition,
)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [  # (N, C_in, C_out, H, W)
    (2, 3, 18, 32, 32),  # the SimpleCNN layer
    (1, 3, 18, 32, 32),  # batch 1
    (3, 5, 7, 9, 13),  # odd sizes
    (2, 3, 20, 17, 35),  # a partial 16-column chunk; C_out not a multiple of the block (3)
    (2, 4, 1, 2, 2),  # the smallest image, one output channel
    (1, 16, 5, 6, 2),  # W = 2
    (1, 64, 64, 16, 16),  # wide channels
]
FUSED = {"pooled": sk.conv3x3_relu_maxpool2d, "unpooled": sk.conv3x3_relu2d}
TORCH_OPS = {
    "pooled": torch.ops.simplecnn.conv3x3_relu_maxpool2d,
    "unpooled": torch.ops.simplecnn.conv3x3_relu2d,
}


@pytest.fixture(params=list(FUSED))
def op(request):
    return request.param


def _skip_unsupported(backend, dtype):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernels take no float64")


@pytest.mark.parametrize("device,backend", device_backends())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_stock(op, device, backend, shape, dtype, layout, bias):
    _skip_unsupported(backend, dtype)
    x, w, b = make_inputs(*shape, dtype=dtype, device=device, layout=layout, bias=bias)
    out = FUSED[op](x, w, b, backend=backend)
    assert_matches_reference(out, x, w, b, pool=op == "pooled")


@pytest.mark.parametrize("device,backend", device_backends())
@pytest.mark.parametrize("shape", [(2, 3, 4, 1, 1), (1, 5, 3, 1, 7), (2, 3, 4, 6, 1)], ids=str)
def test_unpooled_single_rows_and_columns(device, backend, shape):
    """Images the pool rejects (H or W of 1) are fine without it."""
    x, w, b = make_inputs(*shape, device=device)
    assert_matches_reference(sk.conv3x3_relu2d(x, w, b, backend=backend), x, w, b, pool=False)


@pytest.mark.parametrize("device,backend", device_backends())
@pytest.mark.parametrize("layout", LAYOUTS)
def test_output_layout_is_stocks(op, device, backend, layout):
    x, w, b = make_inputs(2, 3, 8, 10, 12, device=device, layout=layout)
    for input in (x, x[0]):  # batched and unbatched
        for weight in (w, w.contiguous(memory_format=torch.channels_last)):
            out = FUSED[op](input, weight, b, backend=backend)
            assert out.stride() == stock_composition(input, weight, b, op == "pooled").stride()


@pytest.mark.parametrize("device,backend", device_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_unbatched_input(op, device, backend, dtype):
    x, w, b = make_inputs(None, 3, 18, 32, 32, dtype=dtype, device=device)
    out = FUSED[op](x, w, b, backend=backend)
    assert out.shape == ((18, 16, 16) if op == "pooled" else (18, 32, 32))
    assert_matches_reference(out, x, w, b, pool=op == "pooled")


@pytest.mark.parametrize("device,backend", device_backends())
def test_empty_batch(op, device, backend):
    x, w, b = make_inputs(0, 3, 18, 32, 32, device=device)
    out = FUSED[op](x, w, b, backend=backend)
    expected = (0, 18, 16, 16) if op == "pooled" else (0, 18, 32, 32)
    assert out.shape == stock_composition(x, w, b, op == "pooled").shape == expected


def _poison(t, fraction, values, generator=None):
    """A copy of `t` with `fraction` of its elements set to `values`, each value used equally
    often (every one of them where the fraction covers that many elements), in random order."""
    t = t.clone()
    flat = t.view(-1) if t.is_contiguous() else t.reshape(-1)
    count = max(1, int(fraction * flat.numel()))
    where = torch.randperm(flat.numel())[:count]
    choice = torch.tensor(values, dtype=torch.float64)[torch.randperm(count) % len(values)]
    flat[where] = choice.to(t.dtype).to(t.device)
    return flat.view(t.shape) if t.is_contiguous() else flat.reshape(t.shape)


@pytest.mark.parametrize("device,backend", device_backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("where", ["input", "weight", "bias"])
def test_nan_and_inf_propagate_as_stock(op, device, backend, dtype, where):
    _skip_unsupported(backend, dtype)
    x, w, b = make_inputs(2, 3, 7, 20, 37, dtype=dtype, device=device)
    specials = [math.nan, math.inf, -math.inf]
    if where == "input":
        x = _poison(x, 0.004, specials)  # sparse: many windows see one special value, some none
    elif where == "weight":
        w = _poison(w, 0.05, specials)
    else:
        b = _poison(b, 0.5, specials)
    out = FUSED[op](x, w, b, backend=backend)
    assert_matches_reference(out, x, w, b, pool=op == "pooled")
    assert torch.isnan(out).any() or torch.isinf(out).any() or where == "weight"


@pytest.mark.parametrize("device,backend", device_backends())
def test_deterministic(op, device, backend):
    x, w, b = make_inputs(8, 3, 18, 32, 32, device=device)
    first = FUSED[op](x, w, b, backend=backend)
    for _ in range(3):
        assert torch.equal(first, FUSED[op](x, w, b, backend=backend))


@pytest.mark.parametrize("shape", [(3, 5, 7, 33, 20), (4, 32, 32, 16, 16)], ids=str)
def test_cpu_result_independent_of_thread_count(op, shape):
    x, w, b = make_inputs(*shape)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = FUSED[op](x, w, b, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(serial, FUSED[op](x, w, b, backend="cpu"))


def test_default_backend_on_cpu_is_the_cpp_kernel():
    assert sk.ops.resolve_backend(None, torch.device("cpu")) == "cpu"
    assert sk.ops.resolve_backend(None, torch.device("cpu"), small_call=True) == "cpu"
    assert "cpu" in sk.available_backends() and "reference" in sk.available_backends()


@pytest.mark.parametrize("shape", [(2, 3, 6, 6), (3, 6, 6)], ids=["batched", "unbatched"])
def test_cpu_backend_runs_without_python(op, shape, monkeypatch):
    # The CPU kernel of the public ops runs the "cpu" backend in C++ (forward_cpu); only the
    # other backends come back to ops.py.
    def python_dispatch(*args):
        raise AssertionError("ops.py dispatched a cpu-backend call")

    monkeypatch.setattr(sk.ops, "_run_backend", python_dispatch)
    x, w, b = torch.randn(shape), torch.randn(4, 3, 3, 3), torch.randn(4)
    expected = stock_composition(x, w, b, op == "pooled")
    for backend in (None, "cpu"):
        torch.testing.assert_close(FUSED[op](x, w, b, backend=backend), expected)
    with pytest.raises(AssertionError, match="ops.py dispatched"):
        FUSED[op](x, w, b, backend="reference")


def test_small_cuda_calls_default_to_the_cuda_kernel(monkeypatch):
    # Small: under 1 GFLOP and at most 64 input channels (where it was timed).
    small = sk.ops._small_cuda_call
    x, w = torch.empty(256, 3, 32, 32), torch.empty(18, 3, 3, 3)  # 0.25 GFLOP
    assert small(x, w) and small(x[0], w) and not small(x[:1].expand(1024, -1, -1, -1), w)
    x, w = torch.empty(1, 64, 32, 32), torch.empty(64, 64, 3, 3)  # 0.08 GFLOP
    assert small(x, w) and not small(x.expand(16, -1, -1, -1), w)  # 1.2 GFLOP
    x, w = torch.empty(1, 512, 14, 14), torch.empty(512, 512, 3, 3)  # VGG's 512 channels
    assert not small(x[:, :, :2, :2], w)  # 9 MFLOP, but 512 input channels
    # Both GPU backends available (whatever this machine has): the CUDA C++ kernel for small
    # calls, else Triton; a backend asked for is taken.
    monkeypatch.setattr(sk.ops, "_unavailable_reason", lambda backend, device, dtype: None)
    cuda = torch.device("cuda")
    assert sk.ops.resolve_backend(None, cuda, small_call=True) == "cuda"
    assert sk.ops.resolve_backend(None, cuda) == "triton"
    assert sk.ops.resolve_backend("triton", cuda, small_call=True) == "triton"
    # Without the CUDA C++ kernel (or its image for the GPU), small calls take Triton.
    monkeypatch.setattr(
        sk.ops,
        "_unavailable_reason",
        lambda backend, device, dtype: "not built" if backend == "cuda" else None,
    )
    assert sk.ops.resolve_backend(None, cuda, small_call=True) == "triton"


def test_cuda_backend_unavailable_without_a_kernel_image_for_the_gpu(monkeypatch):
    # A build made without a GPU holds sm_80 and sm_90 + PTX: on an older GPU the CUDA kernel
    # cannot run, the backend says so (and small calls take Triton). GPU faked here.
    if not sk.ops._cuda_kernel_built():
        pytest.skip("this build has no CUDA kernel")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (7, 5))
    monkeypatch.setattr(sk.ops, "_cuda_kernel_runs_on", lambda index: False)
    reason = sk.ops._unavailable_reason("cuda", torch.device("cuda", 0), torch.float32)
    assert "no kernel image for Tesla T4 (sm_75)" in reason
    assert "no CUDA device 3" in sk.ops._unavailable_reason("cuda", torch.device("cuda", 3), None)
    monkeypatch.setattr(sk.ops, "_cuda_kernel_runs_on", lambda index: True)
    assert sk.ops._unavailable_reason("cuda", torch.device("cuda", 0), torch.float32) is None


def test_reference_backend_is_the_stock_composition(op):
    x, w, b = make_inputs(2, 3, 18, 32, 32)
    expected = F.relu(F.conv2d(x, w, b, stride=1, padding=1))  # written out: stock_composition
    if op == "pooled":  # is the backend under test
        expected = F.max_pool2d(expected, 2, 2)
    assert torch.equal(FUSED[op](x, w, b, backend="reference"), expected)


# --- torch.library integration ----------------------------------------------------------------


def sample_inputs(device, requires_grad=False):
    """(args, kwargs) for opcheck: layouts, no bias, unbatched, dtypes."""
    cases = []
    for shape, kw in [
        ((2, 3, 18, 8, 8), {}),
        ((2, 3, 5, 7, 9), {"layout": "channels_last"}),
        ((1, 4, 3, 6, 5), {"layout": "strided", "bias": False}),
        ((None, 3, 4, 6, 6), {}),
        ((2, 3, 4, 6, 6), {"dtype": torch.bfloat16}),
    ]:
        x, w, b = make_inputs(*shape, device=device, **kw)
        if requires_grad and x.dtype == torch.float32:
            x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
            b = None if b is None else b.detach().requires_grad_()
        cases.append(((x, w, b), {}))
    x, w, b = cases[3][0]  # unbatched with a channels_last weight: the output is contiguous
    cases.append(((x, w.contiguous(memory_format=torch.channels_last), b), {}))
    return cases


@pytest.mark.parametrize("device,backend", device_backends())
@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
def test_opcheck(op, device, backend, requires_grad):
    for args, kwargs in sample_inputs(device, requires_grad):
        torch.library.opcheck(TORCH_OPS[op], args, {**kwargs, "backend": backend})


def _graph_ops(gm):
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


def test_compile_fullgraph_keeps_the_op_as_one_node(op):
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x, w, b = make_inputs(4, 3, 18, 32, 32)
    fused = FUSED[op]
    fn = torch.compile(lambda x, w, b: fused(x, w, b) + 1, backend=record, fullgraph=True)
    torch.testing.assert_close(fn(x, w, b), stock_composition(x, w, b, op == "pooled") + 1)
    ops = _graph_ops(graphs[0])
    name = f"simplecnn.{fused.__name__}"
    assert sum(name in node for node in ops) == 1, ops
    assert not any("conv2d" in node or "max_pool" in node for node in ops), ops


@pytest.mark.slow
def test_compile_inductor_model():
    model = sk.FusedSimpleCNN().eval()
    x = torch.randn(8, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_compile_training_step_aot_eager():
    # The backward formula is traced into AOTAutograd's joint graph too.
    model = sk.FusedSimpleCNN()
    ref = sk.SimpleCNN()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled(x).square().sum().backward()
    ref(x).square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_export_keeps_one_node_and_round_trips():
    model = sk.FusedSimpleCNN().eval()
    x = torch.randn(2, 3, 32, 32)
    ep = torch.export.export(model, (x,))
    ops = _graph_ops(ep.graph_module)
    assert ops.count("simplecnn.conv3x3_relu_maxpool2d.default") == 1, ops
    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    torch.testing.assert_close(loaded.module()(x), model(x))


# --- bad input ---------------------------------------------------------------------------------


def _bad_cases(op="pooled"):
    x, w, b = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    cases = {
        # name: (input, weight, bias, message pattern, whether stock raises too)
        "input 2-D": (x[0, 0], w, b, r"expected input of shape \(N, C_in, H, W\)", True),
        "input 5-D": (x[None], w, b, r"expected input of shape", True),
        "C_in mismatch": (
            torch.randn(2, 5, 8, 8),
            w,
            b,
            r"input has 5 channels but weight expects C_in=3",
            True,
        ),
        "kernel 5x5": (
            x,
            torch.randn(4, 3, 5, 5),
            b,
            r"expected weight of shape \(C_out, C_in, 3, 3\)",
            False,
        ),
        "weight 3-D": (x, w[0], b, r"expected weight of shape", True),
        "bias length": (x, w, torch.randn(5), r"expected bias of shape \(C_out,\) = \(4,\)", True),
        "bias 2-D": (x, w, b[None], r"expected bias of shape", True),
        "dtype mismatch": (
            x,
            w.double(),
            b,
            r"same dtype, got input torch.float32, weight torch.float64",
            True,
        ),
        "bias dtype": (x, w, b.half(), r"same dtype", True),
        # Stock computes integer convolutions on the CPU; the fused kernels are float-only.
        "integer tensors": (
            x.long(),
            w.long(),
            b.long(),
            r"expected a float32, float64, float16 or bfloat16 input",
            False,
        ),
        # Without a GPU, meta is the other device; stock lets it through (tests/gpu covers cuda).
        "device mismatch": (x, w.to("meta"), b, r"same device, got input cpu, weight meta", False),
        # Stock returns a malformed empty tensor here; a clear error is more useful.
        "C_in = 0": (
            torch.randn(2, 0, 8, 8),
            torch.randn(4, 0, 3, 3),
            b,
            r"C_in and C_out must be positive",
            False,
        ),
        "C_out = 0": (x, torch.randn(0, 3, 3, 3), None, r"C_in and C_out must be positive", True),
    }
    if op == "pooled":
        cases["H < 2"] = (torch.randn(2, 3, 1, 8), w, b, r"needs H >= 2 and W >= 2", True)
        cases["W < 2"] = (torch.randn(2, 3, 8, 1), w, b, r"needs H >= 2 and W >= 2", True)
    else:
        cases["H = 0"] = (torch.randn(2, 3, 0, 8), w, b, r"needs H >= 1 and W >= 1", True)
        cases["W = 0"] = (torch.randn(2, 3, 8, 0), w, b, r"needs H >= 1 and W >= 1", True)
    return cases


BAD_CASES = [pytest.param(op, case, id=f"{op}-{case}") for op in FUSED for case in _bad_cases(op)]


@pytest.mark.parametrize("op,case", BAD_CASES)
def test_bad_input_raises_clear_error(op, case):
    x, w, b, pattern, stock_raises = _bad_cases(op)[case]
    with pytest.raises(RuntimeError, match=pattern) as error:
        FUSED[op](x, w, b)
    assert str(error.value).startswith(f"{FUSED[op].__name__}: ")  # names the op
    if stock_raises:
        with pytest.raises((RuntimeError, ValueError)):
            stock_composition(x, w, b, op == "pooled")


@pytest.mark.parametrize("op,case", BAD_CASES)
def test_bad_input_raises_under_compile(op, case):
    x, w, b, pattern, _ = _bad_cases(op)[case]
    # Static shapes, so the message carries sizes rather than symbols.
    fn = torch.compile(FUSED[op], backend="eager", fullgraph=True, dynamic=False)
    with pytest.raises(Exception, match=pattern):
        fn(x, w, b)


# The dispatcher sends a cpu/meta mix to the Meta kernel, which the private op lacks.
@pytest.mark.parametrize(
    "op,case",
    [p for p in BAD_CASES if p.values[1] not in ("input 2-D", "input 5-D", "device mismatch")],
)
def test_compiled_kernel_checks_its_own_inputs(op, case):
    # The C++ op is reachable directly; it must raise, never crash or read out of bounds.
    x, w, b, pattern, _ = _bad_cases(op)[case]
    with pytest.raises(RuntimeError, match=f"{FUSED[op].__name__}: .*{pattern}"):
        torch.ops.simplecnn._fused_forward(x, w, b, op == "pooled")


def test_unknown_backend(op):
    x, w, b = make_inputs(1, 3, 4, 4, 4)
    with pytest.raises(
        ValueError, match=re.escape(f"{FUSED[op].__name__}: unknown backend 'fast'")
    ):
        FUSED[op](x, w, b, backend="fast")
    with pytest.raises(ValueError, match="unknown backend"):
        sk.Conv3x3ReLUMaxPool2d(3, 4, backend="fast")


def test_backend_for_another_device_or_dtype(op):
    x, w, b = make_inputs(1, 3, 4, 4, 4)
    with pytest.raises(
        RuntimeError, match=r"backend 'cuda' cannot run on cpu torch.float32 tensors"
    ):
        FUSED[op](x, w, b, backend="cuda")


@pytest.mark.slow
def test_offsets_beyond_2_31_elements():
    # 2^31 + 2^21 input elements (float16, 4.3 GB): the last rows sit past any int32 offset.
    h, w = 2**16 + 64, 2**15
    x = torch.empty(1, 1, h, w, dtype=torch.float16).uniform_(-1, 1)
    weight, bias = torch.randn(1, 1, 3, 3, dtype=torch.float16), torch.randn(1, dtype=torch.float16)
    assert x.numel() > 2**31
    out = sk.conv3x3_relu_maxpool2d(x, weight, bias, backend="cpu")
    for start in (0, 2**16 - 64, h - 64):  # row crops at the start, just below 2^31, past it
        crop = x[:, :, start : start + 64]
        expected = stock_composition(crop.float(), weight.float(), bias.float())
        # The crop's first and last rows lack their outer neighbour: compare the inside.
        got = out[:, :, start // 2 + 1 : start // 2 + 31].float()
        torch.testing.assert_close(got, expected[:, :, 1:31], atol=2e-3, rtol=2e-3)


def test_unbatched_output_can_be_changed_in_place(op):
    # As the stock output can: not a view of the op's batched result (autograd refuses in-place
    # changes of a custom op's view outputs).
    x, w, b = make_inputs(None, 3, 4, 6, 6)
    out = FUSED[op](x, w.requires_grad_(), b)
    expected = stock_composition(x, w, b, op == "pooled").detach() * 2
    out.mul_(2)
    torch.testing.assert_close(out.detach(), expected)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str
)
@pytest.mark.parametrize("cudnn", [True, False], ids=["cudnn", "no-cudnn"])
def test_cuda_output_layout_is_stocks_with_fake_tensors(op, dtype, cudnn, monkeypatch):
    # On CUDA cuDNN computes the stock conv in channels_last only for float32/16/bfloat16 and
    # only when enabled: float64 and the cuDNN-less path (ATen's ConvUtils: THNN uses
    # channels_last on the CPU only) return contiguous. Fake CUDA tensors need no GPU.
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(torch.backends.cudnn, "enabled", cudnn)
    with FakeTensorMode():
        x = torch.empty(2, 3, 8, 8, device="cuda", dtype=dtype)
        w = torch.empty(4, 3, 3, 3, device="cuda", dtype=dtype)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        for input, weight in [(x_cl, w), (x, w.contiguous(memory_format=torch.channels_last))]:
            out = TORCH_OPS[op](input, weight, None, backend="cuda")
            channels_last = cudnn and dtype != torch.float64
            if dtype == torch.bfloat16:  # cuDNN's from sm_80 on; without a GPU, not
                channels_last &= HAS_CUDA and torch.cuda.get_device_capability()[0] >= 8
            expected = torch.channels_last if channels_last else torch.contiguous_format
            assert out.is_contiguous(memory_format=expected)
            if cudnn:  # stock's own meta kernels agree (without cuDNN they ignore the flag)
                assert (
                    out.stride() == stock_composition(input, weight, None, op == "pooled").stride()
                )


@pytest.mark.parametrize("capability", [(7, 5), (8, 0), (9, 0)], ids=["sm75", "sm80", "sm90"])
def test_cuda_bfloat16_follows_cudnns_bfloat16_support(op, capability, monkeypatch):
    # ATen's use_cudnn takes bfloat16 convs to cuDNN from sm_80 on; before, the stock conv is
    # the cuDNN-less one: NCHW on CUDA, the bias added before rounding. float16 is cuDNN's.
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(torch.backends.cudnn, "enabled", True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda = torch.device("cuda")
    assert sk.stock_conv.stock_conv_uses_cudnn(cuda, torch.bfloat16) == (capability >= (8, 0))
    assert sk.stock_conv.stock_conv_uses_cudnn(cuda, torch.float16)
    with FakeTensorMode():
        x = torch.empty(2, 3, 8, 8, device="cuda", dtype=torch.bfloat16)
        w = torch.empty(4, 3, 3, 3, device="cuda", dtype=torch.bfloat16)
        out = TORCH_OPS[op](x.contiguous(memory_format=torch.channels_last), w, None)
    expected = torch.channels_last if capability >= (8, 0) else torch.contiguous_format
    assert out.is_contiguous(memory_format=expected)


@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 8, 6), (1, 4, 1, 5, 4), (3, 1, 2, 1, 7)], ids=str)
def test_empty_output_is_the_stock_output(pool, layout, shape):
    # The Triton kernels' output: stock's shape, dtype and layout (channels_last when the
    # input or the weight is), uninitialized. The strides of size-1 dims say nothing (stock's
    # and the CPU kernel's differ there), so they are left out.
    if pool and min(shape[3:]) < 2:
        pytest.skip("the pool needs H, W >= 2")
    x, w, b = make_inputs(*shape, dtype=torch.bfloat16, layout=layout)
    out = torch.ops.simplecnn._empty_output(x, w, pool)
    expected = stock_composition(x, w, b, pool=pool)

    def layout_of(t):
        return t.shape, [
            stride for stride, size in zip(t.stride(), t.shape, strict=True) if size > 1
        ]

    assert layout_of(out) == layout_of(expected) and out.dtype == x.dtype
