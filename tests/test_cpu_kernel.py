"""The CPU kernel: its instruction-set levels, its algorithms (direct, Winograd F(2x2) and
F(4x4), implicit GEMM) and the register allocation of its SIMD micro-kernels."""

import itertools
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import cpu_levels

import simplecnn_kernels as sk
from simplecnn_kernels.testing import LAYOUTS, assert_matches_reference, make_inputs

ROOT = Path(__file__).resolve().parents[1]


def _cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def _expected_levels():
    """The levels /proc/cpuinfo says this CPU runs (the kernel's own check is CPUID + XGETBV;
    the kernel lists the flags only when the OS enabled their registers)."""
    flags = _cpu_flags()
    levels = []
    avx512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "f16c"}
    if avx512 | {"avx512_bf16"} <= flags:
        levels.append("avx512_bf16")
    if avx512 <= flags:
        levels.append("avx512")
    if {"avx2", "fma", "f16c"} <= flags:
        levels.append("avx2")
    return levels + ["generic"]


def test_the_best_level_the_cpu_runs_is_the_default():
    assert sk.cpu_capabilities() == _expected_levels()
    # The suite may force levels; a fresh process takes the best.
    _run_with_env(
        "import simplecnn_kernels as sk; assert sk.cpu_capability() == sk.cpu_capabilities()[0];"
        " print('ok')"
    )


@pytest.mark.parametrize("level", ["avx512_bf16", "avx512", "avx2", "generic"])
def test_environment_forces_a_level_or_names_what_the_cpu_has(level):
    script = f"""
import torch
import simplecnn_kernels as sk
from simplecnn_kernels.testing import make_inputs
x, w, b = make_inputs(2, 3, 8, 8, 8)
try:
    sk.conv3x3_relu_maxpool2d(x, w, b)
except RuntimeError as error:
    assert "{level}" not in sk.cpu_capabilities(), error
    assert "SIMPLECNN_CPU_CAPABILITY='{level}': this CPU cannot run it" in str(error), error
    assert ", ".join(sk.cpu_capabilities()) in str(error), error
    try:  # and so does every later call
        sk.conv3x3_relu_maxpool2d(x, w, b)
    except RuntimeError:
        pass
    else:
        raise AssertionError("a second call ran at a level the CPU lacks")
else:
    assert sk.cpu_capability() == "{level}"
    assert torch.ops.simplecnn._cpu_algorithm(x, w) == "direct/{level}"
print("ok")
"""
    _run_with_env(script, SIMPLECNN_CPU_CAPABILITY=level)


def test_an_unknown_level_is_an_error():
    script = """
import simplecnn_kernels as sk
from simplecnn_kernels.testing import make_inputs
for call in range(2):  # every call raises
    try:
        sk.conv3x3_relu_maxpool2d(*make_inputs(2, 3, 8, 8, 8))
    except RuntimeError as error:
        assert "'avx1024': not a CPU capability level; this CPU runs: " in str(error), error
    else:
        raise AssertionError(f"call {call} ran")
print("ok")
"""
    _run_with_env(script, SIMPLECNN_CPU_CAPABILITY="avx1024")
    with (
        pytest.raises(RuntimeError, match="not a CPU capability level; this CPU runs: "),
        sk.forced_cpu_capability("sse9"),
    ):
        pass


@pytest.mark.parametrize("level", cpu_levels())
def test_forcing_a_level_in_process(level):
    before = sk.cpu_capability()
    with sk.forced_cpu_capability(level):
        assert sk.cpu_capability() == level
        x, w, b = make_inputs(3, 5, 13, 9, 37)
        assert torch.ops.simplecnn._cpu_algorithm(x, w) == f"direct/{level}"
        assert_matches_reference(sk.conv3x3_relu_maxpool2d(x, w, b), x, w, b)
    assert sk.cpu_capability() == before
    with pytest.raises(ValueError, match="inside"), sk.forced_cpu_capability(level):
        raise ValueError("inside")
    assert sk.cpu_capability() == before  # restored after an exception too


@pytest.mark.parametrize("level", cpu_levels())
@pytest.mark.parametrize("shape", [(40, 3, 18, 64, 64), (40, 3, 18, 62, 66)], ids=str)
def test_large_outputs_streamed_past_the_caches(shape, level):
    # Outputs over 2 MB (here 2.9 MB) are written with non-temporal stores where a vector is a
    # whole, aligned cache line (AVX-512); odd widths mix them with ordinary and masked stores.
    x, w, b = make_inputs(*shape)
    assert_matches_reference(sk.conv3x3_relu_maxpool2d(x, w, b), x, w, b)


GENERIC_CHECK = """
import torch
from simplecnn_kernels.testing import assert_matches_reference, make_inputs
import simplecnn_kernels as sk

assert sk.cpu_capability() == "generic"
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
for dtype in (torch.float32, torch.bfloat16, torch.float16):  # the backward's window routing
    x, w, b = make_inputs(4, 3, 18, 32, 32, dtype=dtype)
    conv = torch.nn.functional.conv2d(x, w, b, padding=1).requires_grad_()
    pooled = torch.nn.functional.max_pool2d(conv.relu(), 2, 2)
    grad_out = torch.randn_like(pooled)
    pooled.backward(grad_out)
    routed = torch.ops.simplecnn._conv_grad(grad_out, x, w, b)
    torch.testing.assert_close(routed, conv.grad, rtol=0, atol=0)
print("ok")
"""


def _run_with_env(script: str, **env) -> None:
    """Runs `script` in a fresh process with these environment settings (the switches are read
    once per process; conftest cleared the caller's) and checks it printed "ok"."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parent,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_generic_kernel_matches_stock():
    # The portable path runs on CPUs without AVX2; SIMPLECNN_CPU_CAPABILITY=generic forces it.
    _run_with_env(GENERIC_CHECK, SIMPLECNN_CPU_CAPABILITY="generic")


def _vector_stack_accesses(disassembly: str, function: str, fma: str = "vfmadd") -> tuple[int, int]:
    """(FMA count, ymm/zmm loads/stores on the stack between its first and last FMA, the hot
    loop) in `function`'s disassembly; `fma` names the instruction (vdpbf16ps for bfloat16
    pairs)."""
    blocks = disassembly.split("\n\n")
    body = next(
        (blk for blk in blocks if re.match(rf"[0-9a-f]+ <.*{re.escape(function)}\(", blk)), None
    )
    assert body, f"{function} not found in the object file"
    lines = body.splitlines()
    fma_lines = [i for i, line in enumerate(lines) if fma in line]
    hot = lines[fma_lines[0] : fma_lines[-1] + 1] if fma_lines else []
    spills = sum(
        bool(re.search(r"[yz]mm.*\((%rsp|%rbp)\)|\((%rsp|%rbp)\).*[yz]mm", line)) for line in hot
    )
    return len(fma_lines), spills


def _disassemble(source: str, tmp_path) -> str:
    obj = tmp_path / (Path(source).stem + ".o")
    subprocess.run(
        ["g++", "-O3", "-std=c++20", "-fPIC", "-c", str(ROOT / source), "-o", str(obj)], check=True
    )
    return subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", str(obj)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


needs_toolchain = pytest.mark.skipif(
    shutil.which("g++") is None
    or shutil.which("objdump") is None
    or os.uname().machine != "x86_64",
    reason="needs g++ and objdump on x86-64",
)


@needs_toolchain
def test_simd_kernels_keep_their_accumulators_in_registers(tmp_path):
    # A regression check on what GCC emits (compiled as setup.py does, -O3): every FMA is there
    # and the accumulators are not spilled. Before the unroll pragmas in direct_kernel.h GCC kept
    # them on the stack (40 ymm stack accesses for 3 channels) and ran ~10% slower.
    for level, max_co in [("avx2", 3), ("avx512", 6)]:
        direct = _disassemble(f"csrc/cpu/kernels_{level}.cpp", tmp_path)
        # Pooled and unpooled (conv3x3_relu2d) epilogues; the unpooled one's stores cost GCC
        # one more spilled register at AVX2's 3 channels (its hot loop keeps 15 of 16 live).
        # AVX-512 also over bfloat16 channel pairs (the avx512_bf16 level): one vdpbf16ps per
        # FMA of the float32 kernel.
        inputs = [("OneChannel<float> >", "vfmadd")]
        if level == "avx512":
            inputs.append(("Bf16Pairs>", "vdpbf16ps"))
        for co, pool, (source, fma) in itertools.product(
            range(1, max_co + 1), ("true", "false"), inputs
        ):
            name = f"{level}::direct_chunk<float, {co}, 2, {pool}, simplecnn::cpu::{level}::"
            name += source
            fmas, spills = _vector_stack_accesses(direct, name, fma)
            assert fmas == 36 * co, f"{name}: {fmas} {fma}, expected {36 * co}"
            allowed = 4 if co == 1 or (level, co, pool) == ("avx2", 3, "false") else 2
            assert spills <= allowed, f"{name}: {spills} stack accesses"
        # Winograd's GEMM: tiles x 16 channels (AVX2: 2 ymm per tile, up to 6 tiles; AVX-512:
        # 1 zmm, up to 16); the implicit GEMM: 4 window positions x 16 channels.
        vectors, max_rows = (2, 6) if level == "avx2" else (1, 16)
        for rows in (1, max_rows):
            name = f"{level}::winograd::gemm_tiles<{rows}>"
            fmas, spills = _vector_stack_accesses(direct, name)
            assert fmas == vectors * rows, f"{name}: {fmas} FMAs, expected {vectors * rows}"
            assert spills == 0, f"{name}: {spills} stack accesses"
        for source, fma in inputs:  # float32, and at AVX-512 bfloat16 pairs too
            name = f"{level}::implicit_gemm::window_gemm<simplecnn::cpu::{level}::{source}"
            fmas, spills = _vector_stack_accesses(direct, name, fma)
            assert fmas == 4 * vectors, f"{name}: {fmas} {fma}, expected {4 * vectors}"
            assert spills == 0, f"{name}: {spills} stack accesses"
        # The backward's gradient loops: 18 FMAs per vector of columns (4 input rows x 3 taps,
        # two conv rows each but the first and last row).
        for loop in ("grad_weight", "grad_input"):
            name = f"{level}::backward::{loop}<float>"
            fmas, spills = _vector_stack_accesses(direct, name)
            assert fmas == 18, f"{name}: {fmas} FMAs, expected 18"
            assert spills == 0, f"{name}: {spills} stack accesses"


# --- the Winograd path (wide layers) -----------------------------------------------------------

# Every level has the wide-layer kernels (Winograd, implicit GEMM).
all_levels = pytest.mark.parametrize("level", cpu_levels())


def _algorithm(x, w):
    """The algorithm the CPU kernel takes for x and w, without the level of its kernel."""
    return torch.ops.simplecnn._cpu_algorithm(x, w).split("/")[0]


def _on_level(algorithm, x, level):
    """`algorithm` as _cpu_algorithm names it for input x at `level`: bfloat16 at avx512_bf16
    takes the kernels over channel pairs, the direct one always, the implicit GEMM from 16
    pooled windows per call."""
    windows = x.shape[0] * (x.shape[2] // 2) * (x.shape[3] // 2)
    pairs = (x.dtype, level) == (torch.bfloat16, "avx512_bf16") and (
        algorithm == "direct" or (algorithm == "implicit_gemm" and windows >= 16)
    )
    return algorithm + "_bf16" if pairs else algorithm


@all_levels
def test_algorithm_choice(level):
    wide = make_inputs(1, 64, 64, 16, 16)
    assert _algorithm(*wide[:2]) == "winograd_2x2"  # 16 4x4 tiles: too few for F(4x4)
    assert torch.ops.simplecnn._cpu_algorithm(*wide[:2]) == f"winograd_2x2/{level}"
    assert torch.ops.simplecnn._cpu_algorithm(*make_inputs(2, 3, 18, 32, 32)[:2]) == (
        f"direct/{level}"
    )
    assert _algorithm(*make_inputs(1, 64, 64, 32, 32)[:2]) == "winograd_4x4"  # 64 tiles
    assert _algorithm(*make_inputs(16, 16, 16, 14, 14)[:2]) == "winograd_4x4"  # 7x7 windows
    # 5x5 windows per image: 3x3 tiles of 4x4 do 19% less GEMM work than 25 of 2x2 (9 x 36
    # against 25 x 16 products), short of the 20% that F(4x4) must save.
    assert _algorithm(*make_inputs(16, 16, 16, 10, 10)[:2]) == "winograd_2x2"
    assert _algorithm(*make_inputs(2, 3, 18, 32, 32)[:2]) == "direct"  # few input channels
    # Too few windows for Winograd: the implicit GEMM, unless the image fills the direct
    # kernel's 16-column chunks.
    assert _algorithm(*make_inputs(1, 64, 64, 8, 8)[:2]) == "implicit_gemm"
    assert _algorithm(*make_inputs(1, 64, 64, 14, 8)[:2]) == "implicit_gemm"
    assert _algorithm(*make_inputs(1, 64, 64, 4, 14)[:2]) == "implicit_gemm"
    # 8 pooled columns fill AVX2's 16-column chunks, half of AVX-512's 32.
    eight_pooled_columns = "implicit_gemm" if level.startswith("avx512") else "direct"
    assert _algorithm(*make_inputs(1, 64, 64, 4, 16)[:2]) == eight_pooled_columns
    assert _algorithm(*make_inputs(1, 64, 64, 2, 33)[:2]) == "direct"  # 32 of 32 columns
    assert _algorithm(*make_inputs(1, 15, 64, 4, 4)[:2]) == "direct"  # narrow layer
    x, w, _ = make_inputs(2, 64, 64, 16, 16, dtype=torch.float64)
    assert _algorithm(x, w) == "direct"  # float64 keeps the direct sums
    # bfloat16 by vdpbf16ps where the level has it (the implicit GEMM from 16 windows on, where
    # that repays pairing the weights); float16 on float32.
    bf16_pairs = level == "avx512_bf16"
    x, w, _ = make_inputs(2, 3, 18, 32, 32, dtype=torch.bfloat16)
    assert _algorithm(x, w) == ("direct_bf16" if bf16_pairs else "direct")
    x, w, _ = make_inputs(1, 64, 64, 8, 8, dtype=torch.bfloat16)  # 16 windows
    assert _algorithm(x, w) == ("implicit_gemm_bf16" if bf16_pairs else "implicit_gemm")
    x, w, _ = make_inputs(1, 64, 64, 6, 8, dtype=torch.bfloat16)  # 12 windows
    assert _algorithm(x, w) == "implicit_gemm"
    # Below 64 channels the pairs beat the float32 Winograd where the direct kernel fills its
    # chunks: not on 16 columns (half of AVX-512's 32), nor at 64 channels.
    x, w, _ = make_inputs(8, 32, 48, 32, 32, dtype=torch.bfloat16)
    assert _algorithm(x, w) == ("direct_bf16" if bf16_pairs else "winograd_4x4")
    x, w, _ = make_inputs(4, 32, 32, 16, 16, dtype=torch.bfloat16)
    assert _algorithm(x, w) == "winograd_4x4"
    x, w, _ = make_inputs(8, 64, 64, 32, 32, dtype=torch.bfloat16)
    assert _algorithm(x, w) == "winograd_4x4"
    x, w, _ = make_inputs(2, 3, 18, 32, 32, dtype=torch.float16)
    assert _algorithm(x, w) == "direct"
    for dtype, layout in [(torch.float32, "contiguous"), (torch.float32, "strided"),
                          (torch.bfloat16, "contiguous"), (torch.float16, "strided")]:  # fmt: skip
        x, w, _ = make_inputs(1, 64, 64, 16, 16, dtype=dtype, layout=layout)
        w[3, 5, 1, 1] = float("inf")
        # Not Winograd: its transform would give inf - inf = NaN.
        assert _algorithm(x, w) == _on_level(eight_pooled_columns, x, level), (dtype, layout)
    x, w, _ = make_inputs(16, 64, 64, 8, 8)
    assert _algorithm(x, w) == "winograd_4x4"
    w[3, 5, 1, 1] = float("inf")
    assert _algorithm(x, w) == "implicit_gemm"  # direct sums on a narrow image


@all_levels
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pool", [True, False], ids=["pooled", "unpooled"])
def test_bfloat16_layers_under_64_channels_as_stock(layout, pool, level):
    # Winograd on other levels; the direct kernel over pairs at avx512_bf16 (odd channels, 62
    # of its 64 columns filled).
    x, w, b = make_inputs(2, 33, 17, 30, 62, dtype=torch.bfloat16, layout=layout)
    assert _algorithm(x, w) == ("direct_bf16" if level == "avx512_bf16" else "winograd_4x4")
    op = sk.conv3x3_relu_maxpool2d if pool else sk.conv3x3_relu2d
    assert_matches_reference(op(x, w, b, backend="cpu"), x, w, b, pool=pool)


@all_levels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("pool", [True, False], ids=["pooled", "unpooled"])
def test_direct_kernel_carries_sums_across_input_channel_blocks(dtype, pool, level):
    # 67 input channels: 3 blocks of 32 channels per call, or at avx512_bf16 2 blocks of 32
    # bfloat16 pairs, the last pair padded; partial sums kept between the calls.
    x, w, b = make_inputs(2, 67, 8, 8, 33, dtype=dtype)
    assert _algorithm(x, w) == _on_level("direct", x, level)
    op = sk.conv3x3_relu_maxpool2d if pool else sk.conv3x3_relu2d
    assert_matches_reference(op(x, w, b, backend="cpu"), x, w, b, pool=pool)


IMPLICIT_GEMM_SHAPES = [
    (1, 256, 512, 4, 4),  # the deepest CifarVGG layer at batch 1
    (1, 16, 16, 5, 7),  # odd H and W, C_out one block
    (2, 17, 33, 9, 9),  # C_in not a multiple of 8 (nor of the 48-channel blocks), C_out of 16
    (3, 100, 20, 2, 2),  # one window per image; C_in in 3 blocks (48, 48, 4)
    (2, 101, 20, 8, 8),  # 32 windows (bfloat16 pairs at avx512_bf16), C_in in 3 blocks, odd
]


@all_levels
def test_implicit_gemm_on_a_tall_image_stages_blocks_of_rows(level):
    # An infinite weight keeps this many windows off Winograd; the image is staged in 3 blocks
    # of pooled rows.
    x, w, b = make_inputs(1, 256, 20, 200, 4, layout="strided")
    w[7, 100, 2, 0] = float("inf")
    assert _algorithm(x, w) == "implicit_gemm"
    assert_matches_reference(sk.conv3x3_relu_maxpool2d(x, w, b, backend="cpu"), x, w, b)


@all_levels
@pytest.mark.parametrize("special", [float("nan"), float("inf"), -float("inf")], ids=str)
@pytest.mark.parametrize("where", ["input", "weight", "input and bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_implicit_gemm_nan_and_inf_as_stock(special, where, dtype, level):
    # 18 windows: bfloat16 takes the pairs kernel at avx512_bf16.
    x, w, b = make_inputs(2, 32, 24, 6, 6, dtype=dtype, bias=where == "input and bias")
    target = w if where == "weight" else x
    target.view(-1)[torch.randperm(target.numel())[:3]] = special
    if b is not None:  # stock: conv value + bias per position, so -inf + inf = NaN there
        b[::2] = -special
    assert _algorithm(x, w) == _on_level("implicit_gemm", x, level)
    out = sk.conv3x3_relu_maxpool2d(x, w, b, backend="cpu")
    assert_matches_reference(out, x, w, b)
    assert not torch.isfinite(out).all()


WINOGRAD_SETTING_CHECK = """
import os
import torch
import simplecnn_kernels as sk
from simplecnn_kernels.testing import assert_matches_reference, make_inputs

setting = os.environ["SIMPLECNN_CPU_WINOGRAD"]
x, w, b = make_inputs(2, 32, 32, 16, 64)  # 128 tiles of 4x4: F(4x4) by default
try:
    algorithm = torch.ops.simplecnn._cpu_algorithm(x, w).split("/")[0]
except RuntimeError as error:
    assert setting == "bogus", error
    assert "SIMPLECNN_CPU_WINOGRAD='bogus': expected" in str(error), error
    try:  # a narrow layer's call too
        sk.conv3x3_relu_maxpool2d(*make_inputs(2, 3, 8, 8, 8))
    except RuntimeError as error:
        assert "SIMPLECNN_CPU_WINOGRAD='bogus': expected" in str(error), error
    else:
        raise AssertionError("a narrow layer ran with a bad SIMPLECNN_CPU_WINOGRAD")
else:
    expected = {"0": "direct", "off": "direct", "2x2": "winograd_2x2", "4x4": "winograd_4x4"}
    assert algorithm == expected[setting], algorithm
    assert sk.get_cpu_winograd() == {"0": "off"}.get(setting, setting)
    assert_matches_reference(sk.conv3x3_relu_maxpool2d(x, w, b), x, w, b)
print("ok")
"""


@pytest.mark.parametrize("setting", ["0", "off", "2x2", "4x4", "bogus"])
def test_winograd_default_comes_from_the_environment(setting):
    _run_with_env(WINOGRAD_SETTING_CHECK, SIMPLECNN_CPU_WINOGRAD=setting)


@all_levels
def test_winograd_setting_is_read_per_call(level):
    x, w, b = make_inputs(2, 32, 32, 16, 64)
    before = sk.get_cpu_winograd()
    for setting, expected in [("off", "direct"), ("2x2", "winograd_2x2"), ("4x4", "winograd_4x4")]:
        with sk.cpu_winograd(setting):
            assert sk.get_cpu_winograd() == setting
            assert _algorithm(x, w) == expected
            assert_matches_reference(sk.conv3x3_relu_maxpool2d(x, w, b), x, w, b)
        assert sk.get_cpu_winograd() == before
    with pytest.raises(ValueError, match="Winograd setting '8x8': expected one of"):
        sk.set_cpu_winograd("8x8")
    with pytest.raises(RuntimeError, match="Winograd setting '8x8': expected"):
        torch.ops.simplecnn._set_cpu_winograd("8x8")
    assert sk.get_cpu_winograd() == before


WINOGRAD_2X2_SHAPES = [
    (1, 64, 64, 16, 16),
    (4, 17, 20, 9, 11),  # C_in not a multiple of 8, C_out not of 16, odd H and W
    (3, 32, 48, 6, 40),  # several images and rows per call, a long row
    (20, 24, 16, 4, 4),  # 2x2 windows per image: whole images per call
    (4, 256, 272, 8, 8),  # 4.5 MB of transformed weights: streamed past the caches
]
WINOGRAD_4X4_SHAPES = [
    (1, 64, 64, 32, 32),
    (4, 17, 20, 31, 27),  # 15x13 windows: tiles past the last row and column; odd channels
    (64, 24, 16, 4, 4),  # one tile per image: whole images per call
    (2, 16, 40, 34, 18),  # tile rows of one image per call, 3 output blocks
    (4, 192, 160, 16, 16),  # 4.4 MB of transformed weights: streamed past the caches
]


@all_levels
@pytest.mark.parametrize(
    ("algorithm", "shape"),
    [("winograd_2x2", s) for s in WINOGRAD_2X2_SHAPES]
    + [("winograd_4x4", s) for s in WINOGRAD_4X4_SHAPES]
    + [("implicit_gemm", s) for s in IMPLICIT_GEMM_SHAPES],
    ids=str,
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pool", [True, False], ids=["pooled", "unpooled"])
def test_wide_layer_algorithms_match_stock(algorithm, shape, dtype, layout, pool, level):
    # Unpooled (conv3x3_relu2d): the same windows cover the conv output, odd last rows and
    # columns included.
    x, w, b = make_inputs(*shape, dtype=dtype, layout=layout)
    assert _algorithm(x, w) == _on_level(algorithm, x, level)
    op = sk.conv3x3_relu_maxpool2d if pool else sk.conv3x3_relu2d
    assert_matches_reference(op(x, w, b, backend="cpu"), x, w, b, pool=pool)


@all_levels
@pytest.mark.parametrize("special", [float("nan"), float("inf"), -float("inf")], ids=str)
@pytest.mark.parametrize(("algorithm", "n"), [("winograd_2x2", 3), ("winograd_4x4", 4)])
@pytest.mark.parametrize("pool", [True, False], ids=["pooled", "unpooled"])
def test_winograd_tiles_with_nan_or_inf_fall_back_to_direct_sums(
    special, algorithm, n, pool, level
):
    # inf - inf inside the transforms would give NaN where the stock sum gives +-inf; those
    # windows are recomputed with direct sums, so the result equals stock everywhere.
    x, w, b = make_inputs(n, 32, 32, 16, 16)
    x.view(-1)[torch.randperm(x.numel())[:5]] = special
    assert _algorithm(x, w) == algorithm
    op = sk.conv3x3_relu_maxpool2d if pool else sk.conv3x3_relu2d
    out = op(x, w, b, backend="cpu")
    assert_matches_reference(out, x, w, b, pool=pool)
    assert not torch.isfinite(out).all()


@all_levels
@pytest.mark.parametrize(
    ("algorithm", "shape"),
    [("winograd_2x2", (16, 16, 80, 4, 4)), ("winograd_4x4", (64, 16, 80, 4, 4))],
    ids=str,
)
def test_winograd_splits_output_channels_when_threads_outnumber_tile_groups(
    algorithm, shape, level
):
    # With more threads than groups of tiles, items take ranges of output-channel blocks;
    # the fallback to direct sums then redoes only its range.
    threads = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        x, w, b = make_inputs(*shape)
        assert _algorithm(x, w) == algorithm
        assert_matches_reference(sk.conv3x3_relu_maxpool2d(x, w, b, backend="cpu"), x, w, b)
        x[1, 3, 2, 2] = float("inf")
        x[-1, 5, 0, 1] = float("nan")
        out = sk.conv3x3_relu_maxpool2d(x, w, b, backend="cpu")
        assert_matches_reference(out, x, w, b)
        assert not torch.isfinite(out).all()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("special", [float("nan"), float("inf")], ids=str)
def test_wide_layer_with_non_finite_weights(special):
    x, w, b = make_inputs(2, 32, 32, 16, 16)
    w[7, 3, 0, 2] = special
    assert_matches_reference(sk.conv3x3_relu_maxpool2d(x, w, b, backend="cpu"), x, w, b)


@all_levels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("algorithm", "shape"),
    [("direct", (2, 5, 9, 37)), ("implicit_gemm", (1, 20, 6, 6)), ("implicit_gemm", (2, 21, 8, 8))],
    ids=str,
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_half_storage_rounds_to_nearest_even(dtype, algorithm, shape, layout, level):
    # An identity conv (centre tap 1 from channel c to c) and a bias: each conv value is x + b,
    # exact in float32, rounded once to the dtype when stored. It must be torch's rounding of
    # that sum bit for bit (to nearest even; x and b of one dtype often sum half-way between two
    # of its values), through the level's conversions of input and output; +-Inf and NaN from
    # the bias, float16's overflow past 65504.
    n, c, h, w = shape
    x = (torch.randn(n, c, h, w) * 100).to(dtype)
    x[0, 0, 0, :3] = torch.tensor([65504.0, -65504.0, 65472.0]).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.zeros(c, c, 3, 3, dtype=dtype)
    weight[range(c), range(c), 1, 1] = 1.0
    bias = torch.randn(c).to(dtype)
    bias[0], bias[1], bias[2], bias[3] = 30.0, math.inf, -math.inf, math.nan
    # At avx512_bf16, bfloat16 by vdpbf16ps: each product exact, as an FMA's.
    assert _algorithm(x, weight) == _on_level(algorithm, x, level)
    conv = (x.float() + bias.float()[:, None, None]).to(dtype).float()
    for pool in (False, True):
        expected = torch.relu(conv)
        expected = (F.max_pool2d(expected, 2, 2) if pool else expected).to(dtype)
        op = sk.conv3x3_relu_maxpool2d if pool else sk.conv3x3_relu2d
        got = op(x, weight, bias, backend="cpu")
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
