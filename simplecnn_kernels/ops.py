"""The fused operators ``torch.ops.simplecnn.conv3x3_relu_maxpool2d`` and
``torch.ops.simplecnn.conv3x3_relu2d``, and their dispatch.

The first equals ``F.max_pool2d(F.relu(F.conv2d(x, w, b, stride=1, padding=1)), 2, 2)``, its
sibling ``F.relu(F.conv2d(x, w, b, stride=1, padding=1))`` (the same kernels, storing the conv
values instead of their max). Their schemas are registered in C++
(csrc/conv3x3_relu_maxpool2d.cpp); this module gives them the rest:

- the argument checks (the same messages as the C++ checks, which guard the compiled kernels),
- the device implementation, which picks a backend and runs it (on CPU tensors the C++ kernel
  forward_cpu runs the default "cpu" backend itself and comes here for the others),
- the fake (meta) kernel, so ``torch.compile`` and ``torch.export`` keep the op as one node,
- the CUDA kernel of the conv-output gradient the backward takes; autograd is C++
  (csrc/autograd.cpp).

Backends: ``"cpu"`` (the C++ kernel in csrc/cpu), ``"triton"`` (triton_conv3x3_relu_maxpool2d.py,
when triton is installed; the default on CUDA but for small calls), ``"cuda"`` (the CUDA C++
kernel in csrc/cuda, when built; the default on CUDA for small calls: _small_cuda_call) and
``"reference"`` (the stock PyTorch composition).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import warnings

import torch
import torch.nn.functional as F
import torch.onnx
from torch import Tensor
from torch._prims_common import suggest_memory_format

from . import _C  # noqa: F401  (loads the library that registers torch.ops.simplecnn)
from .stock_conv import conv_grad_memory_format, output_memory_format

BACKENDS = ("cpu", "triton", "cuda", "reference")
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

_OP_NAME = "simplecnn::conv3x3_relu_maxpool2d"
_UNPOOLED_OP_NAME = "simplecnn::conv3x3_relu2d"


def conv3x3_relu_maxpool2d(
    input: Tensor, weight: Tensor, bias: Tensor | None = None, *, backend: str | None = None
) -> Tensor:
    """``max_pool2d(relu(conv2d(input, weight, bias, stride=1, padding=1)), 2, 2)`` in one pass.

    Args:
        input: (N, C_in, H, W) or (C_in, H, W), H and W at least 2; any strides.
        weight: (C_out, C_in, 3, 3).
        bias: (C_out,) or None.
        backend: None picks the best backend for the tensors' device; else one of
            ``available_backends()``.

    Returns:
        (N, C_out, H // 2, W // 2) (or without N), in the input's dtype.

    Example:
        >>> x, w, b = torch.randn(8, 3, 32, 32), torch.randn(18, 3, 3, 3), torch.randn(18)
        >>> conv3x3_relu_maxpool2d(x, w, b).shape
        torch.Size([8, 18, 16, 16])
    """
    if _in_onnx_export(input):  # see "ONNX" below
        return _STOCK["conv3x3_relu_maxpool2d"](input, weight, bias, backend=backend)
    return torch.ops.simplecnn.conv3x3_relu_maxpool2d(input, weight, bias, backend=backend)


def conv3x3_relu2d(
    input: Tensor, weight: Tensor, bias: Tensor | None = None, *, backend: str | None = None
) -> Tensor:
    """``relu(conv2d(input, weight, bias, stride=1, padding=1))`` in one pass: the sibling of
    conv3x3_relu_maxpool2d for convs without a pool, with the same kernels, backends and checks.

    Args:
        input: (N, C_in, H, W) or (C_in, H, W); any strides.
        weight: (C_out, C_in, 3, 3).
        bias: (C_out,) or None.
        backend: None picks the best backend for the tensors' device; else one of
            ``available_backends()``.

    Returns:
        (N, C_out, H, W) (or without N), in the input's dtype.
    """
    if _in_onnx_export(input):  # see "ONNX" below
        return _STOCK["conv3x3_relu2d"](input, weight, bias, backend=backend)
    return torch.ops.simplecnn.conv3x3_relu2d(input, weight, bias, backend=backend)


def _op_name(pool: bool) -> str:
    return "conv3x3_relu_maxpool2d" if pool else "conv3x3_relu2d"


# --- argument checks -------------------------------------------------------------------------


def _check_inputs(input: Tensor, weight: Tensor, bias: Tensor | None, pool: bool = True) -> None:
    """Raises RuntimeError naming the problem and the op (conv3x3_relu_maxpool2d, or with `pool`
    False conv3x3_relu2d), as the stock ops and the C++ checks do."""

    def fail(msg: str) -> None:
        raise RuntimeError(f"{_op_name(pool)}: {msg}")

    if input.dim() not in (3, 4):
        fail(f"expected input of shape (N, C_in, H, W) or (C_in, H, W), got shape {_shape(input)}")
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        fail(f"expected weight of shape (C_out, C_in, 3, 3), got shape {_shape(weight)}")
    c_in = input.shape[-3]
    if c_in != weight.shape[1]:
        fail(
            f"input has {c_in} channels but weight expects C_in={weight.shape[1]} "
            f"(weight shape {_shape(weight)})"
        )
    if c_in == 0 or weight.shape[0] == 0:
        fail(f"C_in and C_out must be positive, got weight shape {_shape(weight)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        fail(f"expected bias of shape (C_out,) = ({weight.shape[0]},), got shape {_shape(bias)}")
    if input.dtype not in SUPPORTED_DTYPES:
        fail(f"expected a float32, float64, float16 or bfloat16 input, got dtype {input.dtype}")
    if weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        fail(
            "input, weight and bias must have the same dtype, got input "
            f"{input.dtype}, weight {weight.dtype}, bias {None if bias is None else bias.dtype}"
        )
    if weight.device != input.device or (bias is not None and bias.device != input.device):
        fail(
            "input, weight and bias must be on the same device, got input "
            f"{input.device}, weight {weight.device}, bias {None if bias is None else bias.device}"
        )
    if pool and (input.shape[-2] < 2 or input.shape[-1] < 2):
        fail(f"the 2x2 max-pool needs H >= 2 and W >= 2, got input shape {_shape(input)}")
    if not pool and (input.shape[-2] < 1 or input.shape[-1] < 1):
        fail(f"the conv needs H >= 1 and W >= 1, got input shape {_shape(input)}")


def _shape(t: Tensor) -> list:
    return list(t.shape)


# --- backends ----------------------------------------------------------------------------------


def _cuda_kernel_built() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("simplecnn::_fused_forward", "CUDA")


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _unavailable_reason(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the (known) `backend` cannot run on tensors of this device and dtype, or None."""
    if backend == "cpu":
        return None if device.type == "cpu" else "it runs on CPU tensors only"
    if backend == "triton":
        if not _triton_installed():
            return "triton is not installed"
        from . import triton_conv3x3_relu_maxpool2d as triton_kernel

        return triton_kernel.unavailable_reason(device, dtype)
    if backend == "cuda":
        if not _cuda_kernel_built():
            return "this build of simplecnn_kernels has no CUDA kernel"
        if device.type != "cuda":
            return "it runs on CUDA tensors only"
        if torch.cuda.is_available():  # (fake CUDA tensors on machines without a GPU: no check)
            index = device.index if device.index is not None else torch.cuda.current_device()
            if index >= torch.cuda.device_count():
                return f"there is no CUDA device {index}"
            if not _cuda_kernel_runs_on(index):
                major, minor = torch.cuda.get_device_capability(index)
                return (
                    f"this build has no kernel image for {torch.cuda.get_device_name(index)} "
                    f"(sm_{major}{minor}); rebuild on that GPU, or with TORCH_CUDA_ARCH_LIST "
                    "naming it"
                )
        return None
    return None  # "reference" runs wherever PyTorch does


@functools.cache
def _cuda_kernel_runs_on(index: int) -> bool:
    """Whether the CUDA kernel was compiled for GPU `index` (builds without a GPU: sm_80 and
    sm_90 + PTX, setup.py)."""
    return torch.ops.simplecnn._cuda_kernel_runs_on(torch.device("cuda", index))


def _check_backend_name(backend: str | None, op: str = "conv3x3_relu_maxpool2d") -> None:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose one of {BACKENDS} or None")


_warned_fallback: set[str] = set()


# The default per device type, best first: on CUDA Triton, then the CUDA C++ kernel (no
# triton, or float64), then the stock composition.
_PREFERENCE = {"cpu": ("cpu",), "cuda": ("triton", "cuda")}
# Small calls default to the CUDA C++ kernel: a Triton launch cost ~160 us of Python on the
# H200's host (the CUDA C++ op 36 us, bench/results/h200-launch-overhead.txt), more than the
# CUDA C++ kernel needs for them. H200, float32, CUDA C++ against Triton: 3->18 32x32 N=256
# (0.25 GFLOP) 0.04-0.07 against 0.16-0.36 ms, 64->64 N=1 0.10-0.15 against 0.19-0.35 ms; from
# 3->18 N=4096 (4 GFLOP) Triton wins (0.37 against 0.57 ms), and 64->64 N=256 (19 GFLOP) by 4x.
# Small: under _CUDA_SMALL_CALL_FLOPS of the direct conv and, as measured, at most
# _CUDA_SMALL_CALL_MAX_C_IN input channels (each CUDA C++ thread loops over all of them: wider
# layers at small batches were not timed).
_CUDA_SMALL_CALL_FLOPS = 1e9
_CUDA_SMALL_CALL_MAX_C_IN = 64


def _small_cuda_call(input: Tensor, weight: Tensor) -> bool:
    """Whether a call on CUDA tensors is small enough for the CUDA C++ kernel to be the default
    (checked arguments; `input` batched or not)."""
    n = input.shape[0] if input.dim() == 4 else 1
    c_out, c_in = weight.shape[0], weight.shape[1]
    flops = 2 * n * c_out * input.shape[-2] * input.shape[-1] * c_in * 9
    return flops < _CUDA_SMALL_CALL_FLOPS and c_in <= _CUDA_SMALL_CALL_MAX_C_IN


def _default_backend(
    device: torch.device, dtype: torch.dtype, op: str, small_call: bool = False
) -> str:
    preference = _PREFERENCE.get(device.type, ())
    if device.type == "cuda" and small_call:
        preference = ("cuda", "triton")
    for backend in preference:
        if _unavailable_reason(backend, device, dtype) is None:
            return backend
    key = f"{op} {device.type} {dtype}"
    if key not in _warned_fallback:
        _warned_fallback.add(key)
        warnings.warn(
            f"{op}: no fused kernel runs on {device.type} {dtype} tensors here; using the stock "
            "composition (backend='reference')",
            stacklevel=3,
        )
    return "reference"


def resolve_backend(
    backend: str | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    op: str = "conv3x3_relu_maxpool2d",
    small_call: bool = False,
) -> str:
    """The backend that runs for `backend` (None: the best one) on tensors of this device and
    dtype; `op` names the op in errors. `small_call` (_small_cuda_call): on CUDA, small calls
    default to the CUDA C++ kernel, whose launch costs less than Triton's."""
    _check_backend_name(backend, op)
    if backend is None:
        return _default_backend(device, dtype, op, small_call)
    reason = _unavailable_reason(backend, device, dtype)
    if reason is not None:
        raise RuntimeError(
            f"{op}: backend {backend!r} cannot run on {device.type} {dtype} tensors: {reason}. "
            f"Available here: {available_backends()}"
        )
    return backend


def backends_for(device: torch.device | str, dtype: torch.dtype = torch.float32) -> list[str]:
    """The backends that can run on tensors of this device and dtype."""
    device = torch.device(device)
    return [b for b in BACKENDS if _unavailable_reason(b, device, dtype) is None]


def available_backends() -> list[str]:
    """The backends that can run on this machine (on float32 tensors of one of its devices)."""
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return [b for b in BACKENDS if any(b in backends_for(d) for d in devices)]


def cpu_capability() -> str:
    """The instruction-set level the CPU kernels run at now: ``"avx512_bf16"`` (AVX-512 with
    AVX512_BF16: bfloat16 direct and implicit-GEMM sums by ``vdpbf16ps``), ``"avx512"``,
    ``"avx2"`` or ``"generic"``. The best this CPU (and its OS) supports, unless the environment
    variable ``SIMPLECNN_CPU_CAPABILITY`` (read at the first CPU call) names a lower one."""
    return torch.ops.simplecnn._cpu_capability()


def cpu_capabilities() -> list[str]:
    """Every level this CPU can run, best first (``"generic"`` last)."""
    return list(torch.ops.simplecnn._cpu_capabilities())


@contextlib.contextmanager
def _process_setting(get, set_, value):
    """`value` set with `set_` inside the block, the value `get` gave before restored after it."""
    saved = get()
    set_(value)
    try:
        yield
    finally:
        set_(saved)


def forced_cpu_capability(level: str):
    """Runs the CPU kernels at ``level`` inside the block (for tests and benchmarks that compare
    levels in one process); a level this CPU lacks raises a RuntimeError naming the ones it has.
    Not thread-safe: the level is process-wide."""
    return _process_setting(cpu_capability, torch.ops.simplecnn._set_cpu_capability, level)


WINOGRAD_SETTINGS = ("4x4", "2x2", "off")


def get_cpu_winograd() -> str:
    """How far the CPU kernel may use Winograd transforms for float32, float16 and bfloat16
    layers of 16 channels and more: ``"4x4"`` (F(4x4, 3x3) where it pays, else F(2x2, 3x3); the
    default), ``"2x2"`` (F(2x2, 3x3) only) or ``"off"`` (direct sums). Fewer products are faster
    and round more: README "Precision" has the figures. The CPU's counterpart of
    ``torch.backends.cudnn.allow_tf32`` / ``torch.set_float32_matmul_precision``; the default
    comes from the environment variable ``SIMPLECNN_CPU_WINOGRAD`` (``0`` or ``off``, ``2x2``,
    ``4x4``)."""
    return torch.ops.simplecnn._cpu_winograd()


def set_cpu_winograd(setting: str) -> None:
    """Sets how far the CPU kernel may use Winograd (see get_cpu_winograd), for every later call
    of the process."""
    if setting not in WINOGRAD_SETTINGS:
        raise ValueError(f"Winograd setting {setting!r}: expected one of {WINOGRAD_SETTINGS}")
    torch.ops.simplecnn._set_cpu_winograd(setting)


def cpu_winograd(setting: str):
    """The Winograd setting (see get_cpu_winograd) inside the block, the previous one after it:
    ``with simplecnn_kernels.cpu_winograd("off"): ...``. Process-wide, not per thread."""
    return _process_setting(get_cpu_winograd, set_cpu_winograd, setting)


def stock_composition(
    input: Tensor, weight: Tensor, bias: Tensor | None, pool: bool = True
) -> Tensor:
    """The stock PyTorch composition conv3x3_relu_maxpool2d equals, ``max_pool2d(relu(conv2d(
    input, weight, bias, stride=1, padding=1)), 2, 2)`` (`pool` False: conv3x3_relu2d's, without
    the pool): the ``"reference"`` backend, and what simplecnn_kernels.testing compares with."""
    activated = F.relu(F.conv2d(input, weight, bias, stride=1, padding=1))
    return F.max_pool2d(activated, 2, 2) if pool else activated


def _run_backend(
    backend: str, input: Tensor, weight: Tensor, bias: Tensor | None, pool: bool
) -> Tensor:
    """Runs one backend on a 4-D input."""
    if backend in ("cpu", "cuda"):
        return torch.ops.simplecnn._fused_forward(input, weight, bias, pool)
    if backend == "triton":
        from . import triton_conv3x3_relu_maxpool2d as triton_kernel

        return triton_kernel.forward(input, weight, bias, pool=pool)
    return stock_composition(input, weight, bias, pool)


# --- the ops' implementations ------------------------------------------------------------------


def _forward_by_backend(
    input: Tensor, weight: Tensor, bias: Tensor | None, pool: bool, backend: str | None
) -> Tensor:
    """Both ops (`pool` choosing which) on any device: checks, picks the backend, runs it."""
    _check_inputs(input, weight, bias, pool)
    small = backend is None and input.is_cuda and _small_cuda_call(input, weight)
    backend = resolve_backend(backend, input.device, input.dtype, _op_name(pool), small)
    if input.dim() == 4:
        return _run_backend(backend, input, weight, bias, pool)
    out = _run_backend(backend, input.unsqueeze(0), weight, bias, pool)
    # Unbatched: the stock max-pool returns it contiguous, whatever the conv's layout; the stock
    # conv the batched result's layout, batch squeezed out. Not as a view: autograd would refuse
    # in-place changes of a custom op's view output, which stock allows.
    return (out.contiguous() if pool else out).squeeze(0).detach()


# The CPU kernel of the public ops (csrc/cpu, forward_cpu) runs the "cpu" backend without
# Python and comes back here, through this private op, for the others.
torch.library.register_kernel("simplecnn::_forward_by_backend", None)(_forward_by_backend)


# The public ops' implementation on every device but the CPU.
@torch.library.register_kernel(_OP_NAME, None)
def _forward(
    input: Tensor, weight: Tensor, bias: Tensor | None = None, *, backend: str | None = None
) -> Tensor:
    return _forward_by_backend(input, weight, bias, True, backend)


@torch.library.register_kernel(_UNPOOLED_OP_NAME, None)
def _forward_unpooled(
    input: Tensor, weight: Tensor, bias: Tensor | None = None, *, backend: str | None = None
) -> Tensor:
    return _forward_by_backend(input, weight, bias, False, backend)


@torch.library.register_fake(_OP_NAME)
def _forward_fake(
    input: Tensor, weight: Tensor, bias: Tensor | None = None, *, backend: str | None = None
) -> Tensor:
    _check_inputs(input, weight, bias)
    _check_backend_name(backend)
    batch = input.shape[:-3]
    return torch.empty(
        (*batch, weight.shape[0], input.shape[-2] // 2, input.shape[-1] // 2),
        dtype=input.dtype,
        device=input.device,
        memory_format=output_memory_format(input, weight),
    )


@torch.library.register_fake(_UNPOOLED_OP_NAME)
def _forward_unpooled_fake(
    input: Tensor, weight: Tensor, bias: Tensor | None = None, *, backend: str | None = None
) -> Tensor:
    _check_inputs(input, weight, bias, pool=False)
    _check_backend_name(backend, "conv3x3_relu2d")
    batched = input if input.dim() == 4 else input.unsqueeze(0)
    out = torch.empty(
        (batched.shape[0], weight.shape[0], *batched.shape[2:]),
        dtype=input.dtype,
        device=input.device,
        memory_format=output_memory_format(batched, weight),
    )
    return out if input.dim() == 4 else out.squeeze(0).clone(memory_format=torch.preserve_format)


# --- autograd ----------------------------------------------------------------------------------
# In C++ (csrc/autograd.cpp), so that CPU calls run no Python; here only the CUDA kernel of the
# conv-output gradient its backward takes (Triton's, else the stock ops').


@torch.library.register_kernel("simplecnn::_conv_grad", "cuda")
def _conv_grad_cuda(grad_output: Tensor, input: Tensor, weight: Tensor, bias) -> Tensor:
    if _unavailable_reason("triton", input.device, input.dtype) is None:
        from . import triton_conv3x3_relu_maxpool2d as triton_kernel

        return triton_kernel.conv_grad(grad_output, input, weight, bias)
    grad = torch.ops.simplecnn._conv_grad_stock(grad_output, input, weight, bias)
    return grad.contiguous(memory_format=conv_grad_memory_format(input, weight))


@torch.library.register_fake("simplecnn::_conv_grad")
def _conv_grad_fake(grad_output: Tensor, input: Tensor, weight: Tensor, bias) -> Tensor:
    return torch.empty(
        (input.shape[0], weight.shape[0], *input.shape[2:]),
        dtype=input.dtype,
        device=input.device,
        memory_format=conv_grad_memory_format(input, weight),
    )


@torch.library.register_fake("simplecnn::_fused_backward")
def _fused_backward_fake(grad_output: Tensor, input: Tensor, weight: Tensor, bias, output_mask):
    return (
        torch.empty_like(input, memory_format=suggest_memory_format(input))
        if output_mask[0]
        else None,
        torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else None,
        torch.empty((weight.shape[0],), dtype=weight.dtype, device=weight.device)
        if output_mask[2]
        else None,
    )


# --- autocast ----------------------------------------------------------------------------------
# Under torch.autocast the op runs in the autocast dtype of the moment, as nn.Conv2d does
# (torch.library.register_autocast fixes the dtype when registering and takes no keyword
# arguments such as `backend`).

_autocast_lib = torch.library.Library("simplecnn", "IMPL")


def _register_autocast(op_name: str, device_type: str, dispatch_key: str) -> None:
    keys = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, dispatch_key))
    op = getattr(torch.ops.simplecnn, op_name)

    def autocast_kernel(input, weight, bias=None, *, backend=None):
        dtype = torch.get_autocast_dtype(device_type)

        def cast(t):  # what autocast casts: floating tensors of its device, never float64
            if (
                t is not None
                and t.is_floating_point()
                and t.dtype != torch.float64
                and t.device.type == device_type
            ):
                return t.to(dtype)
            return t

        with torch._C._ExcludeDispatchKeyGuard(keys):
            return op(cast(input), cast(weight), cast(bias), backend=backend)

    _autocast_lib.impl(op_name, autocast_kernel, dispatch_key)


for _op in ("conv3x3_relu_maxpool2d", "conv3x3_relu2d"):
    _register_autocast(_op, "cpu", "AutocastCPU")
    _register_autocast(_op, "cuda", "AutocastCUDA")


# --- ONNX ----------------------------------------------------------------------------------------
# ONNX has no ops of ours. While torch.onnx.export traces a model (torch.onnx.is_in_onnx_export(),
# both exporters), the public functions run the stock composition, which it translates to Conv,
# Relu and MaxPool; eager, torch.compile and torch.export keep the ops. Not a decomposition in
# torch._decomp's global table, which the ONNX exporter would also read: Inductor refuses to
# compile an op that has one when the environment sets CI (torch/_inductor/lowering.py,
# make_fallback). A program exported beforehand lowers with run_decompositions(decompositions()).


def _in_onnx_export(input: Tensor) -> bool:
    """torch.onnx.is_in_onnx_export(), asked only where an exporter can be tracing: under Dynamo
    (strict torch.export), jit tracing (the TorchScript exporter) or on a tensor subclass
    (FakeTensor: non-strict torch.export). It costs a microsecond, its imports, on every call."""
    if (
        type(input) is Tensor
        and not torch.compiler.is_compiling()
        and torch._C._get_tracing_state() is None
    ):
        return False
    return torch.onnx.is_in_onnx_export()


def _stock_under_onnx_export(op_name: str, pool: bool):
    def stock(
        input: Tensor, weight: Tensor, bias: Tensor | None = None, *, backend: str | None = None
    ) -> Tensor:
        _check_inputs(input, weight, bias, pool)
        _check_backend_name(backend, op_name)
        return stock_composition(input, weight, bias, pool)

    stock.__name__ = stock.__qualname__ = f"{op_name}_stock"
    return stock


_STOCK = {
    "conv3x3_relu_maxpool2d": _stock_under_onnx_export("conv3x3_relu_maxpool2d", True),
    "conv3x3_relu2d": _stock_under_onnx_export("conv3x3_relu2d", False),
}


def decompositions() -> dict:
    """{op overload: its stock composition} for both ops, for
    ``ExportedProgram.run_decompositions``: ``torch.onnx.export(ep.run_decompositions(
    sk.decompositions()), dynamo=True)`` turns a program exported beforehand into standard ONNX
    (Conv, Relu, MaxPool)."""
    return {getattr(torch.ops.simplecnn, name).default: fn for name, fn in _STOCK.items()}
