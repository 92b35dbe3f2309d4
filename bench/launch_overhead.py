"""Host time per call at batch 1, where launching costs more than computing: each provider's
calls queued back to back (one synchronize at the end), the op's layers too, and, for the
Triton op (else the default backend), cProfile's top entries by own time, to see which Python
line costs what.

    bench/launch_overhead.py [--device cuda] [--calls 300] [--profile-top 20]
"""

import argparse
import cProfile
import pstats
import time

import torch

import simplecnn_kernels as sk
from simplecnn_kernels.ops import backends_for, stock_composition


def host_us_per_call(fn, calls: int, device: str) -> float:
    for _ in range(10):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--profile-top", type=int, default=20)
    args = parser.parse_args()
    dev = args.device
    x = torch.randn(1, 3, 32, 32, device=dev)
    w = torch.randn(18, 3, 3, 3, device=dev)
    b = torch.randn(18, device=dev)
    providers = {"stock eager": lambda: stock_composition(x, w, b)}
    for backend in backends_for(dev):
        providers[f"op {backend}"] = lambda backend=backend: sk.conv3x3_relu_maxpool2d(
            x, w, b, backend=backend
        )
    # The layers under the public function: the op through torch.ops (dispatch, autograd,
    # checks, backend choice) and the compiled kernel alone.
    providers["torch.ops, default backend"] = lambda: torch.ops.simplecnn.conv3x3_relu_maxpool2d(
        x, w, b
    )
    if {"cpu", "cuda"} & set(backends_for(dev)):
        providers["compiled kernel (_fused_forward)"] = lambda: torch.ops.simplecnn._fused_forward(
            x, w, b, True
        )
    if "triton" in backends_for(dev):
        from simplecnn_kernels import triton_conv3x3_relu_maxpool2d as tk

        for kernel in ("dot", "fma"):
            providers[f"triton forward, {kernel} kernel"] = lambda k=kernel: tk.forward(
                x, w, b, kernel=k
            )
    print(f"# host us per call, batch 1, 3->18 32x32 float32, {args.calls} calls queued ({dev})")
    for name, fn in providers.items():
        print(f"{name:32s} {host_us_per_call(fn, args.calls, dev):8.1f}")
    profiled = "op triton" if "op triton" in providers else f"op {backends_for(dev)[0]}"
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.calls):
        providers[profiled]()
    profiler.disable()
    print(f"\n# cProfile of {args.calls} calls of {profiled}, by own time")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile_top)


if __name__ == "__main__":
    main()
