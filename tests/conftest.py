import os
import zlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
# Without a GPU the Triton kernels run through the interpreter on CPU tensors. Triton reads this
# when the kernels are defined, so before simplecnn_kernels is imported.
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import simplecnn_kernels as sk  # noqa: E402

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def device_backends():
    """(device, backend) pairs for every compiled/JIT backend that runs here. CPU backends
    always; CUDA ones only on a GPU machine (the Triton interpreter, too slow for these shapes,
    has its own tests in test_triton.py)."""
    pairs = [("cpu", "cpu")]
    if HAS_CUDA:
        pairs += [("cuda", b) for b in ("triton", "cuda") if b in sk.available_backends()]
    return pairs


@pytest.fixture(autouse=True)
def _seed(request):
    # Different random data in every test, reproducible from the test's id.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _full_precision_float32():
    # The stock conv and the Triton kernel use TF32 for float32 on GPUs by default; the tests
    # compare float32 at float32 precision, and test the TF32 path on its own.
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = saved
