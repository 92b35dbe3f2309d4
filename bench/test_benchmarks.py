"""pytest-benchmark versions of the main comparisons (`make bench-pytest`), grouped per shape:
stock eager, stock channels_last and the fused op on every backend that runs on the device."""

import pytest
import torch

import simplecnn_kernels as sk
from simplecnn_kernels.testing import stock_composition

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = {"SimpleCNN layer N=256 3->18 32x32": (256, 3, 18), "wide N=16 64->64 32x32": (16, 64, 64)}
BACKENDS = [b for b in sk.ops.backends_for(DEVICE) if b != "reference"]


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    "provider", ["stock eager", "stock channels_last", *[f"fused {b}" for b in BACKENDS]]
)
def test_layer(benchmark, case, provider):
    n, c_in, c_out = CASES[case]
    x = torch.randn(n, c_in, 32, 32, device=DEVICE)
    w = torch.randn(c_out, c_in, 3, 3, device=DEVICE)
    b = torch.randn(c_out, device=DEVICE)
    if provider == "stock channels_last":
        x, w = (
            x.contiguous(memory_format=torch.channels_last),
            w.contiguous(memory_format=torch.channels_last),
        )
    if provider.startswith("fused"):
        backend = provider.split()[1]

        def fn():
            return sk.conv3x3_relu_maxpool2d(x, w, b, backend=backend)
    else:

        def fn():
            return stock_composition(x, w, b)

    benchmark.group = case
    benchmark(lambda: (fn(), _sync()))
