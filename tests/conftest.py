import os
import zlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
# Without a GPU the Triton kernels run through the interpreter on CPU tensors. Triton reads this
# when the kernels are defined, so before simplecnn_kernels is imported.
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The CPU kernels' switches come from the tests, not from the caller's environment: the tests
# force each level and Winograd setting themselves.
for _switch in ("SIMPLECNN_CPU_CAPABILITY", "SIMPLECNN_CPU_WINOGRAD"):
    os.environ.pop(_switch, None)

import simplecnn_kernels as sk  # noqa: E402

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


# The CPU kernels' instruction-set levels this machine runs, best first: tests of the CPU
# backend run on each (the `cpu_level` mark below), so the AVX2 and generic kernels stay tested
# on an AVX-512 machine.
CPU_LEVELS = sk.cpu_capabilities()


def cpu_levels(levels=None):
    """One pytest param per CPU level (all this machine runs, or those of `levels` it runs),
    marked so that the test runs with the CPU kernels forced to that level."""
    return [
        pytest.param(level, id=level, marks=pytest.mark.cpu_level(level))
        for level in CPU_LEVELS
        if levels is None or level in levels
    ]


def device_backends():
    """(device, backend) pairs for every compiled/JIT backend that runs here: the CPU backend
    on every CPU level; CUDA ones only on a GPU machine (the Triton interpreter, too slow for
    these shapes, has its own tests in test_triton.py)."""
    pairs = [
        pytest.param("cpu", "cpu", id=f"cpu-{level}", marks=pytest.mark.cpu_level(level))
        for level in CPU_LEVELS
    ]
    return pairs + [("cuda", b) for b in cuda_backends()]


def cuda_backends():
    """The CUDA backends that run here (none without a GPU)."""
    return [b for b in ("triton", "cuda") if HAS_CUDA and b in sk.available_backends()]


@pytest.fixture(autouse=True)
def _forced_cpu_level(request):
    # Tests marked cpu_level(level) run with the CPU kernels at that level.
    mark = request.node.get_closest_marker("cpu_level")
    if mark is None:
        yield
        return
    with sk.forced_cpu_capability(mark.args[0]):
        yield


@pytest.fixture(autouse=True)
def _seed(request):
    # Different random data in every test, reproducible from the test's id.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


# The cuDNN precision settings (torch's fp32_precision API: conv, RNN, cuDNN-wide, global);
# torch.backends.cudnn.allow_tf32 sets the first two.
_PRECISIONS = (
    torch.backends.cudnn.conv,
    torch.backends.cudnn.rnn,
    torch.backends.cudnn,
    torch.backends,
)


@pytest.fixture(autouse=True)
def _full_precision_float32():
    # The stock conv and the Triton kernel use TF32 for float32 on GPUs by default; the tests
    # compare float32 at float32 precision, and test the TF32 path on its own. Saved and
    # restored through the precision API (reading the legacy flag raises while conv and RNN
    # differ, as a test may leave them); set with the legacy flag, which keeps them equal, as
    # torch's own code (torch.backends.cudnn.flags) reads it.
    saved = [p.fp32_precision for p in _PRECISIONS], torch.backends.cudnn.enabled
    torch.backends.cudnn.allow_tf32 = False
    yield
    conv, rnn = saved[0][:2]
    if conv == rnn:  # the legacy flag too (the precision API leaves it), so that reading it works
        torch.backends.cudnn.allow_tf32 = conv == "tf32"
    for p, precision in zip(_PRECISIONS, saved[0], strict=True):
        p.fp32_precision = precision
    torch.backends.cudnn.enabled = saved[1]
