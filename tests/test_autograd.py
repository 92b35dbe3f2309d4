"""Gradients of the fused op: gradcheck in float64, equality with the stock path (both backward
routes, every layout), routing of ties, NaN and Inf, autocast, and what is kept for backward."""

import math

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from conftest import cpu_levels, device_backends

import simplecnn_kernels as sk
from simplecnn_kernels.ops import backends_for
from simplecnn_kernels.testing import (
    make_inputs,
    reference_conv_grad,
    saved_for_backward_bytes,
    stock_composition,
)

GRAD_SHAPES = [  # (N, C_in, C_out, H, W)
    (3, 3, 18, 16, 14),  # the SimpleCNN layer's channels: the fused CPU backward
    (2, 5, 7, 9, 13),  # odd sizes: the last row and column get no gradient through the pool
    (2, 16, 20, 10, 11),  # wide: the conv-gradient route
]


def _stock_grads(x, w, b, grad_out, mask=(True, True, True)):
    x, w = x.detach().requires_grad_(mask[0]), w.detach().requires_grad_(mask[1])
    b = None if b is None else b.detach().requires_grad_(mask[2])
    stock_composition(x, w, b).backward(grad_out)
    return tuple(None if t is None else t.grad for t in (x, w, b))


def _nonfinite_reference_grads(x, w, b, grad_out, pool=True):
    """Stock's gradients for inputs with non-finite values (`pool` False: conv3x3_relu2d's), in
    the dtype and on the device of `x`. On the CPU: in float64 (testing.reference: direct sums).
    On CUDA the gradient of the conv output routed so, then the library's conv backward on the
    device, as the op's backward takes it (cuDNN's sums may turn an Inf into NaN elsewhere)."""
    x64, w64, b64 = (None if t is None else t.double().cpu() for t in (x, w, b))
    if not x.is_cuda:
        grads = _grads(
            stock_composition if pool else _stock_unpooled, x64, w64, b64, grad_out.double()
        )
        return tuple(None if g is None else g.to(x.dtype) for g in grads)
    grad_conv = reference_conv_grad(x, w, b, grad_out, pool).to(device=x.device, dtype=x.dtype)
    bias_sizes = None if b is None else [b.shape[0]]
    mask = [True, True, b is not None]
    return torch.ops.aten.convolution_backward(
        grad_conv, x, w, bias_sizes, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
    )


def _fused_grads(x, w, b, grad_out, backend, mask=(True, True, True)):
    x, w = x.detach().requires_grad_(mask[0]), w.detach().requires_grad_(mask[1])
    b = None if b is None else b.detach().requires_grad_(mask[2])
    sk.conv3x3_relu_maxpool2d(x, w, b, backend=backend).backward(grad_out)
    return tuple(None if t is None else t.grad for t in (x, w, b))


def _assert_grads_close(ours, theirs, dtype):
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    for name, g, r in zip(("input", "weight", "bias"), ours, theirs, strict=True):
        if r is None:
            assert g is None, name
        else:
            torch.testing.assert_close(g, r, equal_nan=True, msg=name, **tol)


@pytest.mark.parametrize("device,backend", device_backends())
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_gradcheck_float64(device, backend, bias, batched):
    if backend == "triton":
        pytest.skip("gradcheck runs in float64, which the Triton kernels do not take")
    x, w, b = make_inputs(
        2 if batched else None, 2, 3, 5, 7, dtype=torch.float64, bias=bias, device=device
    )
    inputs = [t.requires_grad_() for t in (x, w, b) if t is not None]

    def fn(*args):
        return sk.conv3x3_relu_maxpool2d(
            args[0], args[1], args[2] if bias else None, backend=backend
        )

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("device,backend", device_backends())
@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_gradients_equal_stock(device, backend, shape, layout, dtype):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernels take no float64")
    x, w, b = make_inputs(*shape, device=device, layout=layout, dtype=dtype)
    grad_out = torch.randn_like(stock_composition(x, w, b))
    ours = _fused_grads(x, w, b, grad_out, backend)
    _assert_grads_close(ours, _stock_grads(x, w, b, grad_out), dtype)


def test_reference_gradients_are_stocks_bit_for_bit():
    # backend="reference" must take stock's own backward route; a narrow CPU layer is where the
    # default backend takes another (the fused backward kernel, whose sums round differently).
    x, w, b = make_inputs(2, 3, 7, 9, 13)
    grad_out = torch.randn(2, 7, 4, 6)
    ours = _fused_grads(x, w, b, grad_out, "reference")
    for g, r in zip(ours, _stock_grads(x, w, b, grad_out), strict=True):
        assert torch.equal(g, r)


@pytest.mark.parametrize("device,backend", device_backends())
@pytest.mark.parametrize("mask", [(False, True, True), (True, False, False), (True, True, False)])
def test_only_the_requested_gradients(device, backend, mask):
    x, w, b = make_inputs(2, 3, 6, 8, 10, device=device)
    grad_out = torch.randn(2, 6, 4, 5, device=device)
    ours = _fused_grads(x, w, b, grad_out, backend, mask)
    _assert_grads_close(ours, _stock_grads(x, w, b, grad_out, mask), torch.float32)


@pytest.mark.parametrize("device,backend", device_backends())
def test_gradients_without_bias_and_unbatched(device, backend):
    x, w, _ = make_inputs(None, 4, 5, 9, 8, device=device, bias=False)
    grad_out = torch.randn(5, 4, 4, device=device)
    ours = _fused_grads(x, w, None, grad_out, backend)
    _assert_grads_close(ours, _stock_grads(x, w, None, grad_out), torch.float32)


@pytest.mark.parametrize("device,backend", device_backends())
def test_ties_send_the_gradient_to_the_first_max(device, backend):
    # Zero weights make the four conv values of every window equal the bias: all ties.
    # Stock max-pool gives the gradient to the first of them; ReLU passes it where bias > 0.
    x = torch.randn(2, 3, 6, 8, device=device)
    w = torch.zeros(4, 3, 3, 3, device=device)
    b = torch.randn(4, device=device)
    grad_out = torch.randn(2, 4, 3, 4, device=device)
    ours = _fused_grads(x, w, b, grad_out, backend)
    _assert_grads_close(ours, _stock_grads(x, w, b, grad_out), torch.float32)


@pytest.mark.parametrize("device,backend", device_backends())
@pytest.mark.parametrize("c_in", [3, 16], ids=["fused", "conv-grad"])
def test_nan_and_inf_route_the_gradient_as_stock(device, backend, c_in):
    # Stock max-pool moves to every NaN it meets (the last NaN wins) and ReLU's backward passes
    # the gradient at NaN; infinities are ordinary maxima.
    x, w, b = make_inputs(2, c_in, 5, 12, 10, device=device, dtype=torch.float64)
    x.view(-1)[torch.randperm(x.numel())[:4]] = math.nan
    x.view(-1)[torch.randperm(x.numel())[:4]] = math.inf
    w[1, 0, 1, 1] = math.inf  # a whole output channel of infinities and NaN
    if backend == "triton":
        x, w, b = x.float(), w.float(), b.float()
    grad_out = torch.randn_like(stock_composition(x, w, b))
    ours = _fused_grads(x, w, b, grad_out, backend)
    _assert_grads_close(ours, _nonfinite_reference_grads(x, w, b, grad_out), x.dtype)


@pytest.mark.parametrize("device,backend", device_backends())
@pytest.mark.parametrize(
    "shape,where",
    [
        ((1, 1, 1, 4, 8), "weight (1, 0)"),  # the left tap: NaN at the image's last column
        ((1, 1, 1, 4, 8), "weight (1, 2)"),  # the right tap: NaN at the first column
        ((1, 1, 1, 5, 6), "input (4, 2)"),  # the last row, which the pool drops (odd H)
        ((1, 1, 1, 4, 9), "input (1, 8)"),  # the last column, which the pool drops (odd W)
        ((2, 3, 5, 4, 7), "input (1, 6)"),
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_infinities_at_the_edges_give_the_stock_nan_pattern(device, backend, shape, where, dtype):
    # An infinity times a zero gradient is NaN: which gradients are NaN depends on exactly
    # which products are formed, also at the image's edges and the rows the pool drops.
    if backend not in backends_for(device, dtype):
        pytest.skip(f"{backend} does not run {dtype}")
    x, w, b = make_inputs(*shape, device=device, dtype=dtype)
    b = b.abs() + 5  # ReLU passes every window, so every conv value gets a gradient
    tensor, pos = where.split(" ", 1)
    y, col = (int(v) for v in pos.strip("()").split(","))
    if tensor == "weight":
        w[0, 0, y, col] = math.inf
    else:
        x[0, 0, y, col] = math.inf
    grad_out = torch.randn_like(stock_composition(x, w, b))
    ours = _fused_grads(x, w, b, grad_out, backend)
    _assert_grads_close(ours, _nonfinite_reference_grads(x, w, b, grad_out), dtype)


@pytest.mark.parametrize("level", cpu_levels())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("c_in", [3, 16], ids=["fused", "conv-grad"])
def test_low_precision_routes_by_the_stored_conv_values(dtype, c_in, level):
    # Stock picks each window's max among conv values rounded to the dtype, where two values
    # that differ in float32 may tie. The fused backward routes the same, window for window.
    x, w, b = make_inputs(4, c_in, 18, 32, 32, dtype=dtype)
    grad_out = torch.randn_like(stock_composition(x, w, b))
    expected = _stock_grads(x, w, b, grad_out)
    fused = torch.ops.simplecnn._fused_backward(grad_out, x, w, b, [True, True, True])
    conv = F.conv2d(x, w, b, padding=1).requires_grad_()
    F.max_pool2d(F.relu(conv), 2, 2).backward(grad_out)
    routed = torch.ops.simplecnn._conv_grad(grad_out, x, w, b)
    torch.testing.assert_close(routed, conv.grad, rtol=0, atol=0)
    for name, g, r in zip(("input", "weight", "bias"), fused, expected, strict=True):
        torch.testing.assert_close(g.float(), r.float(), rtol=2e-2, atol=4e-2, msg=name)


@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=str)
def test_both_backward_ops_on_every_width(shape):
    # The autograd formula picks one route by width; each must be right at any width.
    x, w, b = make_inputs(*shape, dtype=torch.float64)
    grad_out = torch.randn_like(stock_composition(x, w, b))
    expected = _stock_grads(x, w, b, grad_out)
    fused = torch.ops.simplecnn._fused_backward(grad_out, x, w, b, [True, True, True])
    _assert_grads_close(fused, expected, torch.float64)
    conv = F.conv2d(x, w, b, padding=1).requires_grad_()
    F.max_pool2d(F.relu(conv), 2, 2).backward(grad_out)
    torch.testing.assert_close(torch.ops.simplecnn._conv_grad(grad_out, x, w, b), conv.grad)


def test_backward_ops_check_their_inputs():
    x, w, b = make_inputs(2, 3, 4, 8, 8)
    with pytest.raises(RuntimeError, match="expected grad_output of shape"):
        torch.ops.simplecnn._conv_grad(torch.randn(2, 4, 3, 4), x, w, b)
    with pytest.raises(RuntimeError, match="grad_output must have the input's dtype"):
        torch.ops.simplecnn._fused_backward(
            torch.randn(2, 4, 4, 4, dtype=torch.float64), x, w, b, [True, True, True]
        )


@pytest.mark.parametrize("device,backend", device_backends())
def test_autocast_runs_in_the_autocast_dtype(device, backend):
    x, w, b = make_inputs(4, 3, 8, 16, 16, device=device)
    w, b = w.requires_grad_(), b.requires_grad_()
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast(device, dtype=dtype):
            out = sk.conv3x3_relu_maxpool2d(x, w, b, backend=backend)
            ref = stock_composition(x, w, b)
        assert out.dtype == ref.dtype == dtype
        torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
        out.float().sum().backward()
        assert w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
        w.grad = b.grad = None


@pytest.mark.parametrize("device,backend", device_backends())
def test_autocast_leaves_float64_alone_and_casts_other_floats_as_stock(device, backend):
    for input_dtype in (torch.float64, torch.float16, torch.bfloat16):
        if backend not in backends_for(device, input_dtype):
            continue
        x, w, b = make_inputs(2, 3, 4, 8, 8, dtype=input_dtype, device=device)
        with torch.autocast(device, dtype=torch.bfloat16):
            out = sk.conv3x3_relu_maxpool2d(x, w, b, backend=backend)
            assert out.dtype == stock_composition(x, w, b).dtype, input_dtype


@pytest.mark.parametrize("device,backend", [*device_backends(), ("cpu", "reference")])
@pytest.mark.parametrize("c_in", [3, 16], ids=["fused_route", "conv_grad_route"])
def test_double_backward(device, backend, c_in):
    # create_graph=True: the backward runs through differentiable stock ops.
    x, w, b = make_inputs(2, c_in, 4, 6, 8, dtype=torch.float64, device=device)
    if backend not in backends_for(device, torch.float64):
        pytest.skip(f"{backend} does not run float64")
    args = tuple(t.detach().requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradgradcheck(
        lambda x, w, b: sk.conv3x3_relu_maxpool2d(x, w, b, backend=backend), args
    )


def test_fused_model_keeps_less_for_backward_than_stock():
    stock_model, fused_model = sk.SimpleCNN(), sk.FusedSimpleCNN()
    x = torch.randn(64, 3, 32, 32)
    stock_bytes = saved_for_backward_bytes(stock_model, x)
    fused_bytes = saved_for_backward_bytes(fused_model, x)
    # Stock keeps the conv output and int64 pool indices (+24 bytes per pooled output, fp32);
    # the fused op keeps only its inputs.
    pooled_outputs = 64 * 18 * 16 * 16
    assert stock_bytes - fused_bytes >= 20 * pooled_outputs


# --- conv3x3_relu2d (no pool): keeps its output, as stock ReLU does ------------------------------


def _grads(fn, x, w, b, grad_out):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    fn(x, w, b).backward(grad_out)
    return tuple(None if t is None else t.grad for t in (x, w, b))


def _stock_unpooled(x, w, b):
    return stock_composition(x, w, b, pool=False)


@pytest.mark.parametrize("device,backend", device_backends())
@pytest.mark.parametrize("shape", [*GRAD_SHAPES, (None, 4, 5, 7, 6)], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_unpooled_gradients_equal_stock(device, backend, shape, layout):
    x, w, b = make_inputs(*shape, device=device, layout=layout)
    grad_out = torch.randn_like(_stock_unpooled(x, w, b))
    ours = _grads(lambda *a: sk.conv3x3_relu2d(*a, backend=backend), x, w, b, grad_out)
    _assert_grads_close(ours, _grads(_stock_unpooled, x, w, b, grad_out), torch.float32)


def test_unpooled_reference_gradients_are_stocks_bit_for_bit():
    x, w, b = make_inputs(2, 5, 7, 9, 13)
    grad_out = torch.randn(2, 7, 9, 13)
    ours = _grads(lambda *a: sk.conv3x3_relu2d(*a, backend="reference"), x, w, b, grad_out)
    for g, r in zip(ours, _grads(_stock_unpooled, x, w, b, grad_out), strict=True):
        assert torch.equal(g, r)


@pytest.mark.parametrize("device,backend", device_backends())
def test_unpooled_nan_and_inf_route_the_gradient_as_stock(device, backend):
    x, w, b = make_inputs(2, 3, 5, 9, 10, device=device)
    x[0, 1, 2, 3], x[1, 0, 4, 4], x[1, 2, 0, 9] = math.nan, math.inf, -math.inf
    grad_out = torch.randn(2, 5, 9, 10, device=device)
    ours = _grads(lambda *a: sk.conv3x3_relu2d(*a, backend=backend), x, w, b, grad_out)
    expected = _nonfinite_reference_grads(x, w, b, grad_out, pool=False)
    _assert_grads_close(ours, expected, torch.float32)


@pytest.mark.parametrize("device,backend", [*device_backends(), ("cpu", "reference")])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_unpooled_gradcheck_float64(device, backend, batched):
    if backend not in backends_for(device, torch.float64):
        pytest.skip(f"{backend} does not run float64")
    x, w, b = make_inputs(2 if batched else None, 2, 3, 5, 7, dtype=torch.float64, device=device)
    args = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda *a: sk.conv3x3_relu2d(*a, backend=backend), args)


@pytest.mark.parametrize("device,backend", [*device_backends(), ("cpu", "reference")])
def test_unpooled_double_backward(device, backend):
    # create_graph=True: the backward runs through differentiable stock ops. A small case:
    # gradgradcheck's numerical Jacobian grows with the square of the sizes.
    if backend not in backends_for(device, torch.float64):
        pytest.skip(f"{backend} does not run float64")
    x, w, b = make_inputs(None, 2, 2, 3, 4, dtype=torch.float64, device=device)
    args = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradgradcheck(lambda *a: sk.conv3x3_relu2d(*a, backend=backend), args)


@pytest.mark.parametrize("device,backend", device_backends())
def test_unpooled_autocast_runs_in_the_autocast_dtype(device, backend):
    x, w, b = make_inputs(4, 3, 8, 16, 16, device=device)
    w = w.requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16):
        out = sk.conv3x3_relu2d(x, w, b, backend=backend)
        ref = stock_composition(x, w, b, pool=False)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert w.grad.dtype == torch.float32


@pytest.mark.parametrize("c_in", [3, 20], ids=["fused-backward", "conv-grad-route"])
@pytest.mark.parametrize("pool", [True, False], ids=["pooled", "unpooled"])
def test_compiled_training_keeps_shapes_dynamic(pool, c_in):
    # The backward reads sizes (the channel count, the bias length): under torch.compile they
    # must stay symbolic, or each batch size, height and width compiles anew (or marked dims
    # fail). 3 input channels take the fused CPU backward, 20 the conv-gradient route.
    torch._dynamo.reset()
    op = sk.conv3x3_relu_maxpool2d if pool else sk.conv3x3_relu2d
    stock = stock_composition if pool else _stock_unpooled
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    step = torch.compile(lambda x, w, b: op(x, w, b).sum(), backend=counter, dynamic=True)
    for n, size, c_out in [(2, 8, 4), (3, 10, 5), (5, 6, 6)]:
        x = torch.randn(n, c_in, size, size, dtype=torch.float64, requires_grad=True)
        torch._dynamo.mark_dynamic(x, 0)
        w = torch.randn(c_out, c_in, 3, 3, dtype=torch.float64, requires_grad=True)
        b = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
        step(x, w, b).backward()
        expected = torch.autograd.grad(stock(x, w, b).sum(), (x, w, b))
        torch.testing.assert_close((x.grad, w.grad, b.grad), expected)
    assert counter.frame_count == 1
