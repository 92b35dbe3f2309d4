"""A small run of CUDA backends (those named as arguments, default all), for compute-sanitizer
(memcheck, racecheck) in bench/gpu_check.sh: odd sizes and partial tiles, all dtypes, both ops
(pooled and unpooled), on Triton both kernels; results checked against a float64 reference
computed on the CPU, so that the only CUDA kernels launched are the inputs' copies and the fused
ones (the sanitizer's time goes to those).  usage: python bench/sanitize_case.py [cuda] [triton]"""

import sys

import torch
import torch.nn.functional as F

import simplecnn_kernels as sk

SHAPES = [(3, 3, 18, 33, 35), (2, 17, 20, 9, 18)]  # N, C_in, C_out, H, W


def kernel_calls(backend):
    """(name, call(x, w, b, pool)) for each kernel path of `backend`: the op itself, and on
    Triton each kernel forced (the op picks one per dtype and TF32 setting)."""
    if backend != "triton":
        ops = {True: sk.conv3x3_relu_maxpool2d, False: sk.conv3x3_relu2d}
        return [(backend, lambda x, w, b, pool: ops[pool](x, w, b, backend=backend))]
    from simplecnn_kernels import triton_conv3x3_relu_maxpool2d as triton_kernels

    return [
        (
            f"triton {kernel}",
            lambda x, w, b, pool, k=kernel: triton_kernels.forward(x, w, b, k, pool),
        )
        for kernel in ("dot", "fma")
    ]


def main(backends):
    torch.manual_seed(0)
    for backend in backends:
        for name, call in kernel_calls(backend):
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                for n, c_in, c_out, h, w in SHAPES:
                    args = [
                        torch.randn(n, c_in, h, w, dtype=dtype),
                        torch.randn(c_out, c_in, 3, 3, dtype=dtype),
                        torch.randn(c_out, dtype=dtype),
                    ]
                    conv = F.relu(F.conv2d(*(a.double() for a in args), padding=1))
                    on_gpu = [a.cuda() for a in args]
                    for pool in (True, False):
                        out = call(*on_gpu, pool).cpu()
                        ref = F.max_pool2d(conv, 2) if pool else conv
                        err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
                        assert err < 2e-2, (name, dtype, (n, c_in, c_out, h, w), pool, err)
            print(f"{name}: ok", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or [b for b in sk.ops.backends_for("cuda") if b != "reference"])
