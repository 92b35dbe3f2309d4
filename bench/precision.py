"""Rounding error of the fused op against the stock path, both measured against float64.

The error of each output is given in units of eps * scale, where scale is the window's largest
sum |w| |x| + |b| (the bound of any summation order; simplecnn_kernels.testing.reference) and
eps the dtype's unit roundoff (2^-24 for float32). Cases: random data, and inputs built to
stress Winograd's transforms (channels of scales 1e-3 .. 1e3, one filter tap 1000x the others).

    python bench/precision.py                    # as the op runs by default
    python bench/precision.py --winograd 2x2     # Winograd kept to F(2x2, 3x3)
    python bench/precision.py --winograd off     # the CPU kernel's direct sums only
"""

from __future__ import annotations

import argparse

import torch

import simplecnn_kernels as sk
from simplecnn_kernels.testing import reference, stock_composition


def random_case(g, c):
    return torch.randn(4, c, 16, 16, generator=g), torch.randn(c, c, 3, 3, generator=g)


def dominant_tap_case(g, c, tap):
    scales = torch.logspace(-3, 3, c)[torch.randperm(c, generator=g)]
    x = torch.randn(4, c, 16, 16, generator=g) * scales.view(1, c, 1, 1)
    w = torch.randn(c, c, 3, 3, generator=g)
    w.view(c, c, 9)[:, :, tap] *= 1e3
    return x, w


def worst_error(out, x, w, b):
    ref, scale = reference(x, w, b)
    return ((out.double().cpu() - ref.cpu()).abs() / scale.cpu()).max().item() / 2**-24


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--trials", type=int, default=5, help="random draws per case")
    parser.add_argument("--winograd", choices=sk.ops.WINOGRAD_SETTINGS, help="default: the op's")
    args = parser.parse_args()
    if args.winograd:
        sk.set_cpu_winograd(args.winograd)
    g = torch.Generator().manual_seed(0)
    c = args.channels
    cases = {"random": lambda: random_case(g, c)}
    cases |= {f"tap {t} x1000": (lambda t=t: dominant_tap_case(g, c, t)) for t in range(9)}
    print(f"float32 error, units of 2^-24 * sum|w||x|, worst of {args.trials} draws, {c} channels")
    print(f"{'case':14} {'algorithm':20} {'fused':>8} {'stock':>8}")
    for name, make in cases.items():
        fused = stock_err = 0.0
        for _ in range(args.trials):
            x, w = make()
            b = torch.randn(c, generator=g)
            x, w, b = (t.to(args.device) for t in (x, w, b))
            out = sk.conv3x3_relu_maxpool2d(x, w, b)
            fused = max(fused, worst_error(out, x, w, b))
            stock_err = max(stock_err, worst_error(stock_composition(x, w, b), x, w, b))
        algorithm = torch.ops.simplecnn._cpu_algorithm(x, w) if x.device.type == "cpu" else "-"
        print(f"{name:14} {algorithm:20} {fused:8.1f} {stock_err:8.1f}")


if __name__ == "__main__":
    main()
