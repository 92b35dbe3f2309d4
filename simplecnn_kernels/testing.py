"""Helpers for checking a conv3x3 + bias + ReLU [+ 2x2 max-pool] kernel against the stock path:
the project's tests and benchmarks use them, and so can anyone checking a kernel of their own.

    from simplecnn_kernels.testing import assert_matches_reference, make_inputs
    x, w, b = make_inputs(8, 3, 18, 32, 32, layout="channels_last")
    assert_matches_reference(my_kernel(x, w, b), x, w, b)   # pool=False: no max-pool

- ``stock_composition``: the stock PyTorch composition the ops equal.
- ``make_inputs`` (with ``LAYOUTS``): random input, weight and bias in a given layout.
- ``reference``: the float64 stock result and the error scale of each output.
- ``assert_matches_reference`` (with ``TOLERANCE``): the comparison, NaN and Inf exactly.
- ``saved_for_backward_bytes``: what a forward pass keeps for backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .ops import stock_composition

__all__ = [
    "LAYOUTS",
    "TOLERANCE",
    "assert_matches_reference",
    "make_inputs",
    "reference",
    "reference_conv_grad",
    "saved_for_backward_bytes",
    "stock_composition",
]

# Error allowed per dtype, as a multiple of `reference`'s scale: float32 allows for accumulation
# order over up to 64*9 terms, float16/bfloat16 for the one rounding of the float32 result
# (2^-11 and 2^-8 relative) plus accumulation.
TOLERANCE = {
    torch.float64: 1e-12,
    torch.float32: 2e-5,
    torch.float16: 1.5e-3,
    torch.bfloat16: 8e-3,
    # float32 through a GPU's tensor cores: inputs rounded (or truncated) to 10-bit mantissas,
    # at most 2 * 2^-10 relative per product, float32 sums.
    "tf32": 2.5e-3,
}

# make_inputs' layouts.
LAYOUTS = ["contiguous", "channels_last", "channels_last_model", "strided"]


def make_inputs(
    n,
    c_in,
    c_out,
    h,
    w,
    *,
    dtype=torch.float32,
    device="cpu",
    bias=True,
    layout="contiguous",
    generator=None,
):
    """Fresh random (input, weight, bias) for a batch of `n` (None: one unbatched image) in the
    given layout: "contiguous", "channels_last" (the input), "channels_last_model" (the input and
    the weight, as ``model.to(memory_format=torch.channels_last)`` leaves a conv's) or "strided"
    (views with gaps and non-unit inner strides, for input, weight and bias). Drawn in float32,
    then converted, so that every dtype gets the same values from the same `generator`."""
    g = generator

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)

    batch = () if n is None else (n,)
    if layout == "strided":
        x = randn(*batch, c_in, 2 * h + 1, 2 * w + 3)[..., 1::2, 1 : 2 * w + 1 : 2]
        weight = randn(3, 3, c_in, c_out).permute(3, 2, 0, 1)
        b = randn(2 * c_out)[::2] if bias else None
    else:
        x = randn(*batch, c_in, h, w)
        weight = randn(c_out, c_in, 3, 3)
        b = randn(c_out) if bias else None
        if layout in ("channels_last", "channels_last_model") and n is not None:
            x = x.contiguous(memory_format=torch.channels_last)
        if layout == "channels_last_model":
            weight = weight.contiguous(memory_format=torch.channels_last)
    return x, weight, b


def reference(x, w, b, pool=True):
    """float64 stock result (`pool` False: of conv3x3_relu2d) and the error scale of each
    output: sum |w| * |x| + |b|, which bounds the rounding error of every conv value (pooled:
    its max over the window). Computed on the CPU, whose float64 conv sums directly: cuDNN may
    pick a transform (Winograd, FFT) that turns an input Inf into NaN elsewhere, which no direct
    sum gives."""
    x64, w64 = x.double().cpu(), w.double().cpu()
    b64 = None if b is None else b.double().cpu()
    ref = stock_composition(x64, w64, b64, pool)
    absb = None if b is None else b64.abs()
    scale = F.conv2d(x64.abs().nan_to_num(0, 0, 0), w64.abs(), absb, padding=1)
    if pool:
        scale = F.max_pool2d(scale, 2, 2)
    return ref, scale.clamp_min(1e-30)


def reference_conv_grad(x, w, b, grad_out, pool=True):
    """The gradient of the conv output where stock ReLU and, with `pool`,
    the 2x2 max-pool route `grad_out`: in float64 on the CPU, whose conv sums directly (see
    reference)."""
    b64 = None if b is None else b.double().cpu()
    conv = F.conv2d(x.double().cpu(), w.double().cpu(), b64, padding=1).requires_grad_()
    activated = torch.relu(conv)
    (F.max_pool2d(activated, 2, 2) if pool else activated).backward(grad_out.double().cpu())
    return conv.grad


def assert_matches_reference(out, x, w, b, *, dtype=None, pool=True):
    """`out` equals the float64 stock result (`pool` False: of conv3x3_relu2d) within
    TOLERANCE[dtype] * scale (`dtype`: the precision computed in, by default the input's), with
    NaN and +-Inf at exactly the same places. The message says how many elements miss, where
    and by how much, and NaN/Inf mismatches separately."""
    dtype = dtype or x.dtype
    ref, scale = reference(x, w, b, pool)
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != stock {tuple(ref.shape)}"
    assert out.dtype == x.dtype, f"dtype {out.dtype} != input dtype {x.dtype}"
    got = out.double().cpu()
    nan_mismatch = torch.isnan(got) != torch.isnan(ref)
    inf_mismatch = (torch.isinf(got) | torch.isinf(ref)) & (got != ref) & ~torch.isnan(ref)
    assert not nan_mismatch.any(), (
        f"NaN mismatch at {nan_mismatch.sum().item()} of {got.numel()} outputs, first at "
        f"{nan_mismatch.nonzero()[0].tolist()}"
    )
    assert not inf_mismatch.any(), (
        f"Inf mismatch at {inf_mismatch.sum().item()} outputs, first at "
        f"{inf_mismatch.nonzero()[0].tolist()}"
    )
    finite = torch.isfinite(ref)
    err = torch.where(finite, (got - ref).abs() / scale, torch.zeros_like(ref))
    bad = err > TOLERANCE[dtype]
    if bad.any():
        worst = err.argmax()
        idx = list(torch.unravel_index(worst, err.shape))
        raise AssertionError(
            f"{bad.sum().item()} of {got.numel()} outputs differ from the float64 stock result by "
            f"more than {TOLERANCE[dtype]:g} x scale ({dtype}); worst at {[int(i) for i in idx]}: "
            f"got {got.flatten()[worst].item()!r}, expected {ref.flatten()[worst].item()!r} "
            f"(scale {scale.flatten()[worst].item():.3g})"
        )


def saved_for_backward_bytes(model, x) -> int:
    """Bytes the autograd graph keeps for backward after ``model(x)``, each storage counted once
    (views of one tensor, or a tensor saved by several ops, share it)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())
