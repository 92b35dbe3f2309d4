"""The CPU kernel's two code paths and the AVX2 kernel's register allocation."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


@pytest.mark.skipif(not {"avx2", "fma"} <= _cpu_flags(), reason="CPU lacks AVX2+FMA")
def test_avx2_kernel_is_used_where_the_cpu_has_it():
    import simplecnn_kernels  # noqa: F401

    assert torch.ops.simplecnn._cpu_kernel() == "avx2"


GENERIC_CHECK = """
import torch
from checks import assert_matches_reference, make_inputs
import simplecnn_kernels as sk

assert torch.ops.simplecnn._cpu_kernel() == "generic"
torch.manual_seed(0)
for shape in [(2, 3, 18, 32, 32), (3, 5, 7, 9, 13), (2, 3, 20, 17, 35), (1, 16, 5, 6, 2)]:
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for layout in ("contiguous", "channels_last", "strided"):
            x, w, b = make_inputs(*shape, dtype=dtype, layout=layout)
            assert_matches_reference(sk.conv3x3_relu_maxpool2d(x, w, b, backend="cpu"), x, w, b)
x, w, b = make_inputs(2, 3, 7, 20, 37)
x.view(-1)[torch.randperm(x.numel())[:12]] = float("nan")
x.view(-1)[torch.randperm(x.numel())[:12]] = float("inf")
assert_matches_reference(sk.conv3x3_relu_maxpool2d(x, w, b, backend="cpu"), x, w, b)
print("ok")
"""


def test_generic_kernel_matches_stock():
    # The portable path runs on CPUs without AVX2; SIMPLECNN_CPU_CAPABILITY=generic forces it
    # (read once per process, hence the subprocess).
    env = {**os.environ, "SIMPLECNN_CPU_CAPABILITY": "generic"}
    result = subprocess.run(
        [sys.executable, "-c", GENERIC_CHECK],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def _ymm_stack_accesses(disassembly: str, function: str) -> tuple[int, int]:
    """(FMA count, ymm loads/stores on the stack) in `function`'s disassembly."""
    blocks = disassembly.split("\n\n")
    body = next(
        (blk for blk in blocks if re.match(rf"[0-9a-f]+ <.*{re.escape(function)}\(", blk)), None
    )
    assert body, f"{function} not found in the object file"
    lines = body.splitlines()
    fmas = sum("vfmadd" in line for line in lines)
    spills = sum(
        bool(re.search(r"ymm.*\((%rsp|%rbp)\)|\((%rsp|%rbp)\).*ymm", line)) for line in lines
    )
    return fmas, spills


@pytest.mark.skipif(
    shutil.which("g++") is None or shutil.which("objdump") is None, reason="needs g++ and objdump"
)
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the AVX2 kernel is x86-64 only")
def test_avx2_kernel_keeps_its_accumulators_in_registers(tmp_path):
    # A regression check on what GCC emits (see csrc/cpu/chunk_avx2.cpp): every FMA is there
    # and the 2 x CO x 2 accumulators are not spilled. Before the unroll pragmas GCC kept them
    # on the stack (40 ymm stack accesses for CO = 3) and ran ~10% slower.
    obj = tmp_path / "chunk_avx2.o"
    subprocess.run(
        [
            "g++",
            "-O3",
            "-std=c++20",
            "-fPIC",
            "-c",
            str(ROOT / "csrc/cpu/chunk_avx2.cpp"),
            "-o",
            str(obj),
        ],
        check=True,
    )
    disassembly = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", str(obj)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for co in (1, 2, 3):
        fmas, spills = _ymm_stack_accesses(disassembly, f"chunk_avx2<{co}>")
        assert fmas == 36 * co, f"chunk_avx2<{co}>: {fmas} FMAs, expected {36 * co}"
        assert spills <= 2, f"chunk_avx2<{co}>: {spills} ymm stack accesses"
