"""Gradients of the fused op: gradcheck in float64 and equality with the stock path."""

import pytest
import torch
from checks import make_inputs, stock
from conftest import device_backends

import simplecnn_kernels as sk


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


def _grads(fn, x, w, b, grad_out):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    b = b.detach().requires_grad_()
    fn(x, w, b).backward(grad_out)
    return x.grad, w.grad, b.grad


@pytest.mark.parametrize("device,backend", device_backends())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_gradients_equal_stock(device, backend, layout):
    x, w, b = make_inputs(3, 3, 18, 16, 14, device=device, layout=layout)
    grad_out = torch.randn(3, 18, 8, 7, device=device)
    ours = _grads(lambda *a: sk.conv3x3_relu_maxpool2d(*a, backend=backend), x, w, b, grad_out)
    theirs = _grads(stock, x, w, b, grad_out)
    for name, g, r in zip(("input", "weight", "bias"), ours, theirs, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("device,backend", device_backends())
def test_ties_send_the_gradient_to_the_first_max(device, backend):
    # Zero weights make the four conv values of every window equal the bias: all ties.
    # Stock max-pool gives the gradient to the first of them; ReLU passes it where bias > 0.
    x = torch.randn(2, 3, 6, 8, device=device)
    w = torch.zeros(4, 3, 3, 3, device=device)
    b = torch.randn(4, device=device)
    grad_out = torch.randn(2, 4, 3, 4, device=device)
    ours = _grads(lambda *a: sk.conv3x3_relu_maxpool2d(*a, backend=backend), x, w, b, grad_out)
    theirs = _grads(stock, x, w, b, grad_out)
    for name, g, r in zip(("input", "weight", "bias"), ours, theirs, strict=True):
        torch.testing.assert_close(g, r, msg=name)
