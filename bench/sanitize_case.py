"""A small run of CUDA backends (those named as arguments, default all), for compute-sanitizer
(memcheck, racecheck) in bench/gpu_check.sh: odd sizes and partial tiles, all dtypes, results
checked against stock.  usage: python bench/sanitize_case.py [cuda] [triton]"""

import sys

import torch
import torch.nn.functional as F

import simplecnn_kernels as sk

torch.manual_seed(0)
backends = sys.argv[1:] or [b for b in sk.ops.backends_for("cuda") if b != "reference"]
for backend in backends:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for n, c_in, c_out, h, w in [(3, 3, 18, 33, 35), (2, 17, 20, 9, 18)]:
            x = torch.randn(n, c_in, h, w, device="cuda", dtype=dtype)
            weight = torch.randn(c_out, c_in, 3, 3, device="cuda", dtype=dtype)
            bias = torch.randn(c_out, device="cuda", dtype=dtype)
            out = sk.conv3x3_relu_maxpool2d(x, weight, bias, backend=backend)
            ref = F.max_pool2d(
                F.relu(F.conv2d(x.double(), weight.double(), bias.double(), padding=1)), 2
            )
            err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
            assert err < 2e-2, (backend, dtype, err)
    torch.cuda.synchronize()
    print(f"{backend}: ok")
