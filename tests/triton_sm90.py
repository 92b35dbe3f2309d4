"""Compiles the Triton kernels for an H100 (sm_90) without a GPU and reads their resource usage.

The triton wheel carries the compiler (ptxas) and cuobjdump, so this runs anywhere triton is
installed. The interpreter never runs the compiler: only this catches compile errors and
register spills. Run it (without TRITON_INTERPRET) for the table of every autotune config and
dtype; it exits 1 if any spills. tests/test_triton.py runs it.

    python tests/triton_sm90.py
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from simplecnn_kernels import triton_conv3x3_relu_maxpool2d as tk

TARGET = GPUTarget("cuda", 90, 32)
_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def compile_config(
    kernel: str, config: triton.Config, dtype: str = "float32", epilogue: str = "pooled"
) -> dict:
    """Compiles `kernel` ("fma" or "dot") with `config` and `epilogue` ("pooled", "conv_grad" or
    "unpooled": the keys of tk.CONFIGS) for sm_90;
    returns registers, stack (spill) and local bytes per thread, and shared memory per program."""
    fn = tk._fma_kernel if kernel == "fma" else tk._dot_kernel
    conv_grad = epilogue == "conv_grad"
    constexprs = {
        "HAS_BIAS": True,
        "CONV_GRAD": conv_grad,
        "ROUND_BEFORE_BIAS": True,  # as on CUDA with cuDNN
        "POOL": epilogue != "unpooled",
        **config.kwargs,
    }
    if kernel == "dot":
        constexprs["UPCAST"] = False
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):  # x, w, b, out, g
            signature[name] = "*" + _TYPES[dtype]
        else:
            signature[name] = "i32"
    src = ASTSource(
        fn=fn,
        signature=signature,
        constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()},
    )
    compiled = triton.compile(
        src, target=TARGET, options={"num_warps": config.num_warps, "num_stages": config.num_stages}
    )
    cuobjdump = os.path.join(
        os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run(
            [cuobjdump, "--dump-resource-usage", cubin.name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return {k.lower(): int(v) for k, v in fields.items()}


def all_configs():
    """(kernel, epilogue, config) for every autotune config of both kernels and epilogues."""
    return [(kernel, ep, c) for (kernel, ep), configs in tk.CONFIGS.items() for c in configs]


if __name__ == "__main__":
    if tk.INTERPRETED:
        raise SystemExit("unset TRITON_INTERPRET: the interpreter does not compile")
    spills = 0
    print(f"{'kernel':16} {'dtype':9} {'config':44} reg stack")
    for kernel, epilogue, config in all_configs():
        for dtype in ("float32", "bfloat16", "float16"):
            r = compile_config(kernel, config, dtype, epilogue)
            name = f"{kernel} {epilogue}"
            meta = f"{config.kwargs} w{config.num_warps} s{config.num_stages}"
            print(f"{name:16} {dtype:9} {meta:44} {r['reg']:3} {r['stack']:5}")
            spills += r["stack"] > 0 or r["local"] > 0
    raise SystemExit(1 if spills else 0)
