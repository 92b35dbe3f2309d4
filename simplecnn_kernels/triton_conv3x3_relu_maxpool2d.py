"""The Triton backend of conv3x3_relu_maxpool2d and conv3x3_relu2d (``backend="triton"``, the
default on CUDA).

Three layers, as in Liger-Kernel: ``@triton.jit`` kernels, the host launcher ``forward`` (output,
strides, grid, configs), and the op in ops.py that calls it.

A program computes one image x a block of BLOCK_P *pooled* outputs x a block of BLOCK_CO output
channels. Each of the window's four conv values accumulates in float32 registers starting from
the bias (where the stock conv is cuDNN's: from zero, then rounded to the dtype before the bias
is added, as cuDNN + ``add_`` round), borders are masked loads instead of a padded copy, and
after the max over the window (propagating NaN, as the stock max-pool does) ReLU is applied
once (``max(relu(c)) == relu(max(c))``) and only the pooled value is stored: the conv output
never reaches memory.
Unpooled (conv3x3_relu2d, ``POOL=False``), the same windows cover the conv output and each of
the four values is stored after ReLU.

Two kernels:
- ``_dot_kernel``, the default: an implicit GEMM on the tensor cores. The reduction runs over
  K = 9 * C_in, tap-major (k = tap * C_in + ci), in chunks of BLOCK_K: RGB input is one chunk of
  32 (27 used). The window's four positions run one after another into one accumulator and a
  running max (four live accumulators spilled registers). float32 uses TF32 where torch lets
  the stock conv use it (``conv_allows_tf32``: the default).
- ``_fma_kernel``: plain float32 multiply-adds on [BLOCK_CO, BLOCK_P] tiles, for float32 when
  the caller disabled TF32 for convolutions, so results keep full float32 precision, and for
  float32 RGB input, where it measured faster than the tensor cores (choose_kernel).

Every autotune config compiles for sm_90 without spilling registers (tests/triton_sm90.py checks
it without a GPU). Under the Triton interpreter (``TRITON_INTERPRET=1`` set before import) the
kernels run on CPU tensors with one fixed config (multi-config autotuning needs a GPU driver).
Nothing here touches a GPU or a Triton driver at import.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from .stock_conv import conv_allows_tf32, conv_grad_memory_format, stock_conv_uses_cudnn

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_NAN = tl.constexpr(tl.PropagateNan.ALL)  # jit code may only read constexpr globals


@triton.jit
def _stored_value(v, dtype: tl.constexpr):
    """`v` (float32) rounded to `dtype` and back, as torch stores it: to nearest, ties to even.
    bfloat16 by bit arithmetic, which rounds the same on GPUs and in the interpreter (whose
    conversion truncates)."""
    if dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return tl.where(v != v, v, bits.to(tl.float32, bitcast=True))  # NaN stays NaN
    else:
        return v.to(dtype).to(tl.float32)


@triton.jit
def _stored_conv_value(acc, bias, dtype: tl.constexpr, ROUND_BEFORE_BIAS: tl.constexpr):
    """The conv value + bias that stock stores and routes by: `acc` the conv value with the
    bias in it, or, with ROUND_BEFORE_BIAS, without it (see _conv_rounds_before_bias)."""
    if ROUND_BEFORE_BIAS:
        return _stored_value(_stored_value(acc, dtype) + bias, dtype)
    else:
        return _stored_value(acc, dtype)


@triton.jit
def _program_tile(
    C_out, Ho, Wo, b_ptr, sb,
    HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr,
):  # fmt: skip
    """This program's image n, its block of pooled outputs (rows py, columns px, mask p_ok),
    its block of output channels (co, mask co_ok) and their bias, which starts every conv
    value, as in the stock conv."""
    p_blocks = tl.cdiv(Ho * Wo, BLOCK_P)
    pid = tl.program_id(0)
    n = (pid // p_blocks).to(tl.int64)
    p = (pid % p_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < C_out
    bias = _load_bias(b_ptr, sb, co, co_ok, HAS_BIAS, BLOCK_CO)
    return n, p // Wo, p % Wo, p < Ho * Wo, co, co_ok, bias


@triton.jit
def _load_bias(b_ptr, sb, co, co_ok, HAS_BIAS: tl.constexpr, BLOCK_CO: tl.constexpr):
    if HAS_BIAS:
        return tl.load(b_ptr + co.to(tl.int64) * sb, mask=co_ok, other=0.0).to(tl.float32)
    else:
        return tl.zeros([BLOCK_CO], dtype=tl.float32)


@triton.jit
def _running_max(best, best_pos, value, pos):
    """The stock max-pool's running max over a window, `value` at window position `pos` next:
    it takes a greater value or a NaN (NaN propagates, ties keep the first, the last NaN wins).
    Returns the max and its position."""
    take = (value > best) | (value != value)
    return tl.where(take, value, best), tl.where(take, pos, best_pos)


@triton.jit
def _store_result(
    best, best_pos, out_ptr, son, soc, soh, sow, g_ptr, sgn, sgc, sgh, sgw,
    n, py, px, co, ok, CONV_GRAD: tl.constexpr,
):  # fmt: skip
    """The kernels' epilogue, on tiles of window maxima (bias included, before ReLU) `best` and
    their positions. Forward: the pooled output, ReLU applied once after the max
    (max(relu(c)) == relu(max(c))). CONV_GRAD: the gradient of the conv output, out_ptr a
    (N, C_out, H, W) tensor: each window's four conv positions get the pooled gradient where the
    stock max-pool + ReLU route it (the max's position, if the max is > 0 or NaN), else 0."""
    co64 = co.to(tl.int64)
    if CONV_GRAD:
        flows = (best > 0.0) | (best != best)
        grad = tl.load(
            g_ptr + n * sgn + co64 * sgc + py.to(tl.int64) * sgh + px.to(tl.int64) * sgw,
            mask=ok,
            other=0.0,
        )
        for pos in tl.static_range(4):
            y = (2 * py + pos // 2).to(tl.int64)
            x = (2 * px + pos % 2).to(tl.int64)
            value = tl.where(flows & (best_pos == pos), grad, 0.0).to(out_ptr.dtype.element_ty)
            tl.store(out_ptr + n * son + co64 * soc + y * soh + x * sow, value, mask=ok)
    else:
        pooled = tl.maximum(best, 0.0, propagate_nan=_NAN)
        out = out_ptr + n * son + co64 * soc + py.to(tl.int64) * soh + px.to(tl.int64) * sow
        tl.store(out, pooled.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _store_conv_value(acc, out_ptr, son, soc, soh, sow, n, y, x, co, ok, H, W):
    """Unpooled: relu(conv value) at conv position (y, x), where it is inside the output (the
    last windows of odd sizes reach past it)."""
    value = tl.maximum(acc, 0.0, propagate_nan=_NAN).to(out_ptr.dtype.element_ty)
    out = out_ptr + n * son + co.to(tl.int64) * soc + y.to(tl.int64) * soh + x.to(tl.int64) * sow
    tl.store(out, value, mask=ok & (y < H) & (x < W))


@triton.jit
def _dot_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,
    C_in, H, W, C_out, Ho, Wo,
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    sb,
    son, soc, soh, sow,
    g_ptr, sgn, sgc, sgh, sgw,  # CONV_GRAD: the pooled output's gradient
    N_BUCKET,  # autotune key only: next power of two of the batch
    HAS_BIAS: tl.constexpr,
    CONV_GRAD: tl.constexpr,  # False: store the pooled output; True: see _store_result
    ROUND_BEFORE_BIAS: tl.constexpr,  # see _conv_rounds_before_bias
    POOL: tl.constexpr,  # False: store the conv values after ReLU (conv3x3_relu2d)
    BLOCK_P: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: its bfloat16 dot is wrong, so multiply in float32
):  # fmt: skip
    n, py, px, p_ok, co, co_ok, bias = _program_tile(
        C_out, Ho, Wo, b_ptr, sb, HAS_BIAS, BLOCK_P, BLOCK_CO
    )

    # Offsets inside one image are 32-bit (choose_kernel sends larger images to _fma_kernel);
    # the image's own base is 64-bit, so batches beyond 2^31 elements are fine.
    x_img = x_ptr + n * sxn
    K = 9 * C_in
    best = tl.full([BLOCK_P, BLOCK_CO], float("-inf"), tl.float32)
    best_pos = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.int32)
    for pos in tl.static_range(4):  # window position (a, b) = (pos // 2, pos % 2)
        iy0 = (2 * py - 1 + pos // 2)[:, None]  # input row of tap ky = 0
        ix0 = (2 * px - 1 + pos % 2)[:, None]
        if ROUND_BEFORE_BIAS:
            acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)
        else:
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
        if CONV_GRAD or ROUND_BEFORE_BIAS:  # the values stock stores, rounded as it rounds
            acc = _stored_conv_value(
                acc, bias[None, :], out_ptr.dtype.element_ty, ROUND_BEFORE_BIAS
            )
        if POOL:
            best, best_pos = _running_max(best, best_pos, acc, pos)
        else:
            _store_conv_value(
                acc, out_ptr, son, soc, soh, sow, n, iy0 + 1, ix0 + 1, co[None, :],
                p_ok[:, None] & co_ok[None, :], H, W,
            )  # fmt: skip

    if POOL:
        _store_result(
            best, best_pos, out_ptr, son, soc, soh, sow, g_ptr, sgn, sgc, sgh, sgw,
            n, py[:, None], px[:, None], co[None, :], p_ok[:, None] & co_ok[None, :], CONV_GRAD,
        )  # fmt: skip


@triton.jit
def _fma_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,
    C_in, H, W, C_out, Ho, Wo,
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    sb,
    son, soc, soh, sow,
    g_ptr, sgn, sgc, sgh, sgw,  # CONV_GRAD: the pooled output's gradient
    N_BUCKET,  # autotune key only: next power of two of the batch
    HAS_BIAS: tl.constexpr,
    CONV_GRAD: tl.constexpr,  # False: store the pooled output; True: see _store_result
    ROUND_BEFORE_BIAS: tl.constexpr,  # see _conv_rounds_before_bias
    POOL: tl.constexpr,  # False: store the conv values after ReLU (conv3x3_relu2d)
    BLOCK_P: tl.constexpr,
    BLOCK_CO: tl.constexpr,
):  # fmt: skip
    n, py, px, p_ok, co, co_ok, bias = _program_tile(
        C_out, Ho, Wo, b_ptr, sb, HAS_BIAS, BLOCK_P, BLOCK_CO
    )
    # acc_ab: conv value (2*py + a, 2*px + b) of each window; pixels on the fast axis.
    if ROUND_BEFORE_BIAS:
        acc00 = tl.zeros([BLOCK_CO, BLOCK_P], dtype=tl.float32)
    else:
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

    if CONV_GRAD or ROUND_BEFORE_BIAS:  # the values stock stores, rounded as it rounds
        if ROUND_BEFORE_BIAS:  # loaded again: live through the loop, ptxas spilled (float16)
            bias = _load_bias(b_ptr, sb, co, co_ok, HAS_BIAS, BLOCK_CO)
        dtype = out_ptr.dtype.element_ty
        acc00 = _stored_conv_value(acc00, bias[:, None], dtype, ROUND_BEFORE_BIAS)
        acc01 = _stored_conv_value(acc01, bias[:, None], dtype, ROUND_BEFORE_BIAS)
        acc10 = _stored_conv_value(acc10, bias[:, None], dtype, ROUND_BEFORE_BIAS)
        acc11 = _stored_conv_value(acc11, bias[:, None], dtype, ROUND_BEFORE_BIAS)
    if not POOL:
        ok = co_ok[:, None] & p_ok[None, :]
        y, x = 2 * py[None, :], 2 * px[None, :]
        _store_conv_value(acc00, out_ptr, son, soc, soh, sow, n, y, x, co[:, None], ok, H, W)
        _store_conv_value(acc01, out_ptr, son, soc, soh, sow, n, y, x + 1, co[:, None], ok, H, W)
        _store_conv_value(acc10, out_ptr, son, soc, soh, sow, n, y + 1, x, co[:, None], ok, H, W)
        _store_conv_value(
            acc11, out_ptr, son, soc, soh, sow, n, y + 1, x + 1, co[:, None], ok, H, W
        )
        return
    best, best_pos = acc00, tl.zeros([BLOCK_CO, BLOCK_P], dtype=tl.int32)
    best, best_pos = _running_max(best, best_pos, acc01, 1)
    best, best_pos = _running_max(best, best_pos, acc10, 2)
    best, best_pos = _running_max(best, best_pos, acc11, 3)

    _store_result(
        best, best_pos, out_ptr, son, soc, soh, sow, g_ptr, sgn, sgc, sgh, sgw,
        n, py[None, :], px[None, :], co[:, None], co_ok[:, None] & p_ok[None, :], CONV_GRAD,
    )  # fmt: skip


def _image_extent(t: torch.Tensor) -> int:
    """Elements spanned by one image of `t`: the largest offset inside an image, plus one."""
    return 1 + sum(
        (size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:], strict=True)
    )


def _is_interpreted(kernel) -> bool:
    # TRITON_INTERPRET is read when @triton.jit runs, so ask the kernel, not the environment.
    return type(kernel).__name__ == "InterpretedFunction"


INTERPRETED = _is_interpreted(_fma_kernel)

_AUTOTUNE_KEY = ["C_in", "C_out", "Ho", "Wo", "N_BUCKET"]


def _dot_configs(shapes):
    return [
        triton.Config({"BLOCK_P": p, "BLOCK_CO": co, "BLOCK_K": 32}, num_warps=w, num_stages=1)
        for p, co, w in shapes
    ]


def _fma_configs(shapes):
    return [
        triton.Config({"BLOCK_P": p, "BLOCK_CO": co}, num_warps=w, num_stages=1)
        for p, co, w in shapes
    ]


# Autotune configs per (kernel, epilogue), the epilogue being what a launch stores: the pooled
# output, the conv gradient (CONV_GRAD) or the unpooled output (POOL False). Only ones that
# compile for sm_90 without spilling (tests/triton_sm90.py); the conv_grad and unpooled
# epilogues (stores at four positions) spill at 64 output channels per program.
_DOT_32_CHANNELS = _dot_configs([(64, 32, 4), (128, 32, 8)])
_FMA_CONFIGS = _fma_configs([(128, 16, 4), (256, 16, 8), (128, 8, 4)])
CONFIGS = {
    ("dot", "pooled"): _DOT_32_CHANNELS + _dot_configs([(64, 64, 4), (128, 64, 8)]),
    ("dot", "conv_grad"): _DOT_32_CHANNELS,
    ("dot", "unpooled"): _DOT_32_CHANNELS,
    ("fma", "pooled"): _FMA_CONFIGS,
    ("fma", "conv_grad"): _FMA_CONFIGS,
    ("fma", "unpooled"): _FMA_CONFIGS,
}
# The interpreter's cost is per operation, not per element: few, large programs.
_INTERPRETER_META = {
    "dot": {"BLOCK_P": 64, "BLOCK_CO": 32, "BLOCK_K": 32},
    "fma": {"BLOCK_P": 64, "BLOCK_CO": 32},
}

# SIMPLECNN_TRITON_AUTOTUNE=0 (read at import) runs the first config of each list instead of
# autotuning: the GPU test tier compiles dozens of shapes and needs speed, not the best config.
_AUTOTUNE = os.environ.get("SIMPLECNN_TRITON_AUTOTUNE", "1") != "0"
_JIT = {"dot": _dot_kernel, "fma": _fma_kernel}


@functools.cache
def _autotuner(key: tuple[str, str]):
    return triton.autotune(CONFIGS[key], key=_AUTOTUNE_KEY)(_JIT[key[0]])


# The config autotuning chose for each (kernel, epilogue) and autotune key values: later launches
# call the kernel with it directly, past triton.autotune's per-call wrapper (a seventh of the
# Triton op's Python time on the H200's host, bench/results/h200-launch-overhead.txt).
_TUNED: dict[tuple, triton.Config] = {}


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


# float32 layers whose whole reduction (K = 9 * C_in) fits one K chunk take the multiply-add
# kernel even where TF32 is allowed: at 3 channels it was faster on an H200 (3->18 32x32, batch
# 4096: 0.348 against 0.370 ms; 16384: 1.364 against 1.454 ms) and it keeps float32's precision.
_FMA_MAX_FLOAT32_C_IN = 3


def choose_kernel(input: torch.Tensor, out: torch.Tensor) -> str:
    """The tensor-core kernel, unless float32 must keep full precision (TF32 not allowed for the
    stock conv: conv_allows_tf32), float32 has at most _FMA_MAX_FLOAT32_C_IN input channels, or
    an image is too large for its 32-bit offsets."""
    if input.dtype == torch.float32 and (
        not conv_allows_tf32() or input.shape[1] <= _FMA_MAX_FLOAT32_C_IN
    ):
        return "fma"
    if max(_image_extent(input), _image_extent(out)) >= 2**31:
        return "fma"
    return "dot"


def forward(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kernel: str | None = None,
    pool: bool = True,
    config: triton.Config | None = None,
) -> torch.Tensor:
    """The fused op on a 4-D input (checked by the op): conv3x3_relu_maxpool2d, or with `pool`
    False conv3x3_relu2d. `kernel` ("dot" or "fma") overrides `choose_kernel` and `config` (one
    of CONFIGS) autotuning, for tests and benchmarks."""
    with _on_device(input):
        out = torch.ops.simplecnn._empty_output(input, weight, pool)  # stock_conv's layout rule
        return _launch(input, weight, bias, out, None, kernel, pool, config)


def conv_grad(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kernel: str | None = None,
    config: triton.Config | None = None,
) -> torch.Tensor:
    """The gradient of the conv output (before bias and ReLU), full-size, given the pooled
    output's gradient: the forward recomputed, routed as the stock max-pool + ReLU route it.
    `kernel` and `config` as for forward."""
    n, _, h, w = input.shape
    out = torch.empty(
        (n, weight.shape[0], h, w),
        dtype=input.dtype,
        device=input.device,
        memory_format=conv_grad_memory_format(input, weight),
    )
    if h % 2 or w % 2:  # the last row or column gets no gradient; the kernel writes the rest
        out.zero_()
    with _on_device(input):
        return _launch(input, weight, bias, out, grad_output, kernel, config=config)


def _on_device(t: torch.Tensor):
    """The block runs with `t`'s GPU current (Triton launches on the current one), if on one."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _conv_rounds_before_bias(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the stock conv on tensors of this device and dtype rounds its output to the dtype
    before adding the bias: where cuDNN convolves (stock_conv_uses_cudnn), `output.add_(bias)`
    follows (two roundings in float16 and bfloat16: a float16 sum >= 65520 is Inf there whatever
    the bias); without cuDNN, and on the CPU with oneDNN, the bias is inside (one). The kernels
    round as stock does: the forward's values, and the values the conv gradient routes by."""
    return stock_conv_uses_cudnn(device, dtype)


def _launcher(key: tuple[str, str], tuning_key: tuple, config: triton.Config | None):
    """What runs a launch and the meta-parameters it takes: the kernel with `config`, with the
    interpreter's or the first config (autotuning off), with the config tuned for these keys, or
    else the autotuner (`{}`), except inside a CUDA graph capture, where autotuning's benchmark
    (it synchronizes) would break the capture: there the first config. `key`: (kernel,
    epilogue); `tuning_key`: the autotune key's values."""
    kernel = key[0]
    if config is None and INTERPRETED:
        return _JIT[kernel], dict(_INTERPRETER_META[kernel])
    if config is None and _AUTOTUNE:
        config = _TUNED.get((key, tuning_key))
        if config is None and not torch.cuda.is_current_stream_capturing():
            return _autotuner(key), {}
    # all_kwargs, as the autotuner launches: Triton caches compiled kernels by these options.
    return _JIT[kernel], (config or CONFIGS[key][0]).all_kwargs()


def _launch(input, weight, bias, out, grad_output, kernel, pool=True, config=None):
    """Launches `kernel` (None: choose_kernel's) into `out`, with the input's GPU current
    (the callers' _on_device)."""
    n, c_in, h, w = input.shape
    c_out = weight.shape[0]
    # The pool windows: pooled, the output's pixels; unpooled, those that cover the output.
    ho, wo = (h // 2, w // 2) if pool else ((h + 1) // 2, (w + 1) // 2)
    if out.numel() == 0:
        return out
    kernel = kernel or choose_kernel(input, out)
    epilogue = "conv_grad" if grad_output is not None else "pooled" if pool else "unpooled"
    key = (kernel, epilogue)
    n_bucket = triton.next_power_of_2(n)
    tuning_key = (c_in, c_out, ho, wo, n_bucket, input.dtype)  # _AUTOTUNE_KEY's values

    def grid(m):
        return (n * triton.cdiv(ho * wo, m["BLOCK_P"]), triton.cdiv(c_out, m["BLOCK_CO"]))

    b = bias if bias is not None else out  # never read without HAS_BIAS
    g = grad_output if grad_output is not None else out  # never read in the forward
    launcher, meta = _launcher(key, tuning_key, config)
    launcher[grid](
        input, weight, b, out,
        c_in, h, w, c_out, ho, wo,
        *input.stride(),
        *weight.stride(),
        b.stride(0),
        *out.stride(),
        g, *g.stride(),
        n_bucket,
        HAS_BIAS=bias is not None,
        CONV_GRAD=grad_output is not None,
        ROUND_BEFORE_BIAS=_conv_rounds_before_bias(input.device, input.dtype),
        POOL=pool,
        **({"UPCAST": INTERPRETED} if kernel == "dot" else {}),
        **meta,
    )  # fmt: skip
    if launcher is not _JIT[kernel] and getattr(launcher, "best_config", None) is not None:
        _TUNED[(key, tuning_key)] = launcher.best_config  # the config it launched
    return out
