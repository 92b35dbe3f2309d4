import zlib

import pytest
import torch

import simplecnn_kernels as sk

HAS_CUDA = torch.cuda.is_available()

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def device_backends():
    """(device, backend) pairs for every compiled/JIT backend that runs here. CPU backends
    always; CUDA ones only on a GPU machine (the Triton interpreter has its own tests)."""
    pairs = [("cpu", "cpu")]
    if HAS_CUDA:
        pairs += [("cuda", b) for b in ("triton", "cuda") if b in sk.available_backends()]
    return pairs


@pytest.fixture(autouse=True)
def _seed(request):
    # Different random data in every test, reproducible from the test's id.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
