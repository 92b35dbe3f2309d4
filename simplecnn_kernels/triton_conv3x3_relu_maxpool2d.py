"""The Triton backend of conv3x3_relu_maxpool2d (``backend="triton"``, the default on CUDA).

Three layers, as in Liger-Kernel: ``@triton.jit`` kernels, the host launcher ``forward`` (output,
strides, grid, configs), and the op in ops.py that calls it.

A program computes one image x a block of BLOCK_P *pooled* outputs x a block of BLOCK_CO output
channels. Each of the window's four conv values accumulates in float32 registers starting from
the bias, borders are masked loads instead of a padded copy, and after the max over the window
(propagating NaN, as the stock max-pool does) ReLU is applied once (``max(relu(c)) ==
relu(max(c))``) and only the pooled value is stored: the conv output never reaches memory.

Two kernels:
- ``_dot_kernel``, the default: an implicit GEMM on the tensor cores. The reduction runs over
  K = 9 * C_in, tap-major (k = tap * C_in + ci), in chunks of BLOCK_K: RGB input is one chunk of
  32 (27 used), so matrix units pay off even at 3 input channels. Arithmetic decides there: at
  3->18 an FP32 multiply-add kernel needs more time for its FLOPs than the op's memory traffic
  takes on an H100, the tensor cores do not. The window's four positions run one after another
  into one accumulator and a running max (four live accumulators spilled registers). float32
  uses TF32, as the stock conv does by default (``torch.backends.cudnn.allow_tf32``).
- ``_fma_kernel``: plain float32 multiply-adds on [BLOCK_CO, BLOCK_P] tiles, for float32 when
  the caller disabled TF32 for convolutions, so results keep full float32 precision.

Every autotune config compiles for sm_90 without spilling registers (tests/triton_sm90.py checks
it without a GPU). Under the Triton interpreter (``TRITON_INTERPRET=1`` set before import) the
kernels run on CPU tensors with one fixed config (multi-config autotuning needs a GPU driver).
Nothing here touches a GPU or a Triton driver at import.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_NAN = tl.constexpr(tl.PropagateNan.ALL)  # jit code may only read constexpr globals


@triton.jit
def _dot_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,
    C_in, H, W, C_out, Ho, Wo,
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    sb,
    son, soc, soh, sow,
    N_BUCKET,  # autotune key only: next power of two of the batch
    HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: its bfloat16 dot is wrong, so multiply in float32
):  # fmt: skip
    p_blocks = tl.cdiv(Ho * Wo, BLOCK_P)
    pid = tl.program_id(0)
    n = (pid // p_blocks).to(tl.int64)
    p = (pid % p_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < Ho * Wo
    py = p // Wo
    px = p % Wo
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < C_out
    if HAS_BIAS:  # the bias starts every conv value, as in the stock conv
        bias = tl.load(b_ptr + co.to(tl.int64) * sb, mask=co_ok, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_CO], dtype=tl.float32)

    # Offsets inside one image are 32-bit (choose_kernel sends larger images to _fma_kernel);
    # the image's own base is 64-bit, so batches beyond 2^31 elements are fine.
    x_img = x_ptr + n * sxn
    K = 9 * C_in
    pooled = tl.full([BLOCK_P, BLOCK_CO], float("-inf"), tl.float32)
    for pos in tl.static_range(4):  # window position (a, b) = (pos // 2, pos % 2)
        iy0 = (2 * py - 1 + pos // 2)[:, None]  # input row of tap ky = 0
        ix0 = (2 * px - 1 + pos % 2)[:, None]
        acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32) + bias[None, :]
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < K
            tap = k // C_in
            ci = k % C_in
            ky = tap // 3
            kx = tap % 3
            w = tl.load(
                w_ptr + co[None, :] * swo + (ci * swi + ky * swh + kx * sww)[:, None],
                mask=k_ok[:, None] & co_ok[None, :],
                other=0.0,
            )
            iy = iy0 + ky[None, :]
            ix = ix0 + kx[None, :]
            ok = p_ok[:, None] & k_ok[None, :] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            x = tl.load(x_img + ((ci * sxc)[None, :] + iy * sxh + ix * sxw), mask=ok, other=0.0)
            if UPCAST:
                x = x.to(tl.float32)
            acc = tl.dot(x, w.to(x.dtype), acc, input_precision="tf32")
        pooled = tl.maximum(pooled, acc, propagate_nan=_NAN)

    pooled = tl.maximum(pooled, 0.0, propagate_nan=_NAN)
    out = (
        out_ptr
        + n * son
        + co.to(tl.int64)[None, :] * soc
        + py.to(tl.int64)[:, None] * soh
        + px.to(tl.int64)[:, None] * sow
    )
    tl.store(out, pooled.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & co_ok[None, :])


@triton.jit
def _fma_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,
    C_in, H, W, C_out, Ho, Wo,
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    sb,
    son, soc, soh, sow,
    N_BUCKET,  # autotune key only: next power of two of the batch
    HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_CO: tl.constexpr,
):  # fmt: skip
    p_blocks = tl.cdiv(Ho * Wo, BLOCK_P)
    pid = tl.program_id(0)
    n = (pid // p_blocks).to(tl.int64)
    p = (pid % p_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < Ho * Wo
    py = p // Wo
    px = p % Wo
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < C_out
    if HAS_BIAS:
        bias = tl.load(b_ptr + co.to(tl.int64) * sb, mask=co_ok, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_CO], dtype=tl.float32)
    # acc_ab: conv value (2*py + a, 2*px + b) of each window; pixels on the fast axis.
    acc00 = tl.zeros([BLOCK_CO, BLOCK_P], dtype=tl.float32) + bias[:, None]
    acc01 = acc00
    acc10 = acc00
    acc11 = acc00

    # 64-bit offsets throughout (with 32-bit ones here ptxas spilled); channel ci's plane by
    # advancing pointers.
    x_c = x_ptr + n * sxn
    w_c = w_ptr + co.to(tl.int64) * swo
    for _ci in range(C_in):
        for ky in tl.static_range(3):
            for kx in tl.static_range(3):  # one weight vector per tap, used by all 4 positions
                w = tl.load(w_c + ky * swh + kx * sww, mask=co_ok, other=0.0)
                w = w.to(tl.float32)[:, None]
                for a in tl.static_range(2):
                    iy = 2 * py - 1 + a + ky
                    for b in tl.static_range(2):
                        ix = 2 * px - 1 + b + kx
                        ok = p_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
                        x = tl.load(
                            x_c + iy.to(tl.int64) * sxh + ix.to(tl.int64) * sxw, mask=ok, other=0.0
                        )
                        x = x.to(tl.float32)[None, :]
                        if a == 0 and b == 0:
                            acc00 += w * x
                        elif a == 0:
                            acc01 += w * x
                        elif b == 0:
                            acc10 += w * x
                        else:
                            acc11 += w * x
        x_c += sxc
        w_c += swi

    pooled = tl.maximum(
        tl.maximum(acc00, acc01, propagate_nan=_NAN),
        tl.maximum(acc10, acc11, propagate_nan=_NAN),
        propagate_nan=_NAN,
    )
    pooled = tl.maximum(pooled, 0.0, propagate_nan=_NAN)
    out = (
        out_ptr
        + n * son
        + co.to(tl.int64)[:, None] * soc
        + py.to(tl.int64)[None, :] * soh
        + px.to(tl.int64)[None, :] * sow
    )
    tl.store(out, pooled.to(out_ptr.dtype.element_ty), mask=co_ok[:, None] & p_ok[None, :])


def _image_extent(t: torch.Tensor) -> int:
    """Elements spanned by one image of `t`: the largest offset inside an image, plus one."""
    return 1 + sum(
        (size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:], strict=True)
    )


def _is_interpreted(kernel) -> bool:
    # TRITON_INTERPRET is read when @triton.jit runs, so ask the kernel, not the environment.
    return type(kernel).__name__ == "InterpretedFunction"


INTERPRETED = _is_interpreted(_fma_kernel)

# (kernel, configs on a GPU, the one config under the interpreter)
_AUTOTUNE_KEY = ["C_in", "C_out", "Ho", "Wo", "N_BUCKET"]
_DOT_CONFIGS = [
    triton.Config({"BLOCK_P": p, "BLOCK_CO": co, "BLOCK_K": 32}, num_warps=w, num_stages=1)
    for p, co, w in [(64, 32, 4), (128, 32, 8), (64, 64, 4), (128, 64, 8)]
]
_FMA_CONFIGS = [
    triton.Config({"BLOCK_P": p, "BLOCK_CO": co}, num_warps=w, num_stages=1)
    for p, co, w in [(128, 16, 4), (256, 16, 8), (128, 8, 4)]
]
# The interpreter's cost is per operation, not per element: few, large programs.
_INTERPRETER_META = {
    "dot": {"BLOCK_P": 64, "BLOCK_CO": 32, "BLOCK_K": 32},
    "fma": {"BLOCK_P": 64, "BLOCK_CO": 32},
}

# SIMPLECNN_TRITON_AUTOTUNE=0 (read at import) runs the first config of each list instead of
# autotuning: the GPU test tier compiles dozens of shapes and needs speed, not the best config.
_AUTOTUNE = os.environ.get("SIMPLECNN_TRITON_AUTOTUNE", "1") != "0"
if INTERPRETED or not _AUTOTUNE:
    _KERNELS = {"dot": _dot_kernel, "fma": _fma_kernel}
else:
    _KERNELS = {
        "dot": triton.autotune(_DOT_CONFIGS, key=_AUTOTUNE_KEY)(_dot_kernel),
        "fma": triton.autotune(_FMA_CONFIGS, key=_AUTOTUNE_KEY)(_fma_kernel),
    }


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the Triton kernels cannot run on tensors of this device and dtype, or None."""
    if dtype not in SUPPORTED_DTYPES:
        return f"the Triton kernels take float32, float16 and bfloat16, not {dtype}"
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device"
    if device.type == "cpu":
        if INTERPRETED:
            return None
        return "on CPU tensors it needs the Triton interpreter (TRITON_INTERPRET=1 before import)"
    return f"it runs on CUDA tensors, not {device.type}"


def choose_kernel(input: torch.Tensor, out: torch.Tensor) -> str:
    """The tensor-core kernel, unless float32 must keep full precision (TF32 disallowed for
    convolutions, as torch.backends.cudnn.allow_tf32 = False asks of the stock conv) or an image
    is too large for its 32-bit offsets."""
    if input.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "fma"
    if max(_image_extent(input), _image_extent(out)) >= 2**31:
        return "fma"
    return "dot"


def forward(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str | None = None
) -> torch.Tensor:
    """Launches the fused kernel on a 4-D input (checked by the op). `kernel` ("dot" or "fma")
    overrides `choose_kernel`, for tests and benchmarks."""
    from .ops import output_memory_format

    n, c_in, h, w = input.shape
    c_out, ho, wo = weight.shape[0], h // 2, w // 2
    out = torch.empty(
        (n, c_out, ho, wo),
        dtype=input.dtype,
        device=input.device,
        memory_format=output_memory_format(input, weight),
    )
    if out.numel() == 0:
        return out
    kernel = kernel or choose_kernel(input, out)
    if INTERPRETED:
        meta = dict(_INTERPRETER_META[kernel])
    elif not _AUTOTUNE:
        config = (_DOT_CONFIGS if kernel == "dot" else _FMA_CONFIGS)[0]
        meta = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    else:
        meta = {}
    if kernel == "dot":
        meta["UPCAST"] = INTERPRETED

    def grid(m):
        return (n * triton.cdiv(ho * wo, m["BLOCK_P"]), triton.cdiv(c_out, m["BLOCK_CO"]))

    b = bias if bias is not None else out  # never read without HAS_BIAS
    with torch.cuda.device(input.device) if input.is_cuda else contextlib.nullcontext():
        _KERNELS[kernel][grid](
            input, weight, b, out,
            c_in, h, w, c_out, ho, wo,
            *input.stride(),
            *weight.stride(),
            b.stride(0),
            *out.stride(),
            triton.next_power_of_2(n),
            HAS_BIAS=bias is not None,
            **meta,
        )  # fmt: skip
    return out
