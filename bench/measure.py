"""Timing and machine description for the benchmarks.

CPU: each provider is timed two ways, both reported (medians): "interleaved", the providers of one
comparison one call each per round, so the ±15% drift of a shared machine hits all of them alike;
and "block", each provider's calls back to back after its warm-up, as a program calling one of
them would run (caches and branch predictors warm with its own code and data only).
GPU: each provider is timed two ways too: "cold", ``triton.testing.do_bench`` (CUDA events per
call after warm-up, the L2 flushed before each call: nothing of the last call's data is cached),
and "warm", CUDA events around blocks of back-to-back calls after warm-up, without a flush (the
input, weights and output stay in the 50-60 MB L2 where they fit, as in a loop over one batch).
Where triton is missing only "warm" is timed.
"""

from __future__ import annotations

import concurrent.futures
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import torch

from simplecnn_kernels.stock_conv import conv_allows_tf32, tf32_precision


def machine(device: str) -> dict:
    """What the numbers were measured on."""
    info = {
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn_allow_tf32=conv_allows_tf32(),  # what the fused Triton kernel follows too
            matmul_allow_tf32=_matmul_allows_tf32(),
        )
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    return info


def machine_label(info: dict) -> str:
    if info["device"] == "cuda":
        return f"{info['gpu']} (torch {info['torch']})"
    return f"{info['cpu']}, {info['threads']} threads (torch {info['torch']})"


def _matmul_allows_tf32() -> bool:
    """Whether float32 matmuls (cuBLAS) may use TF32: torch.backends.cuda.matmul.fp32_precision,
    "none" deferring to the global precision. The legacy flag
    torch.backends.cuda.matmul.allow_tf32 raises once the precision API was used, so it is read
    only where that API is missing."""
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        return bool(matmul.allow_tf32)
    return tf32_precision(matmul.fp32_precision, torch.backends.fp32_precision)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def time_cpu(
    fns: dict[str, Callable[[], object]],
    *,
    min_rounds: int = 5,
    max_rounds: int = 50,
    budget_s: float = 2.0,
) -> dict[str, dict[str, float]]:
    """Median milliseconds per call of each function, per timing mode: {"interleaved": {name: ms},
    "block": {name: ms}}; each mode takes as many calls of each function (the rounds that fit in
    `budget_s`, within `min_rounds` to `max_rounds`)."""
    for fn in fns.values():  # warm-up: first-call allocation, thread pool start, compiled code
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < budget_s):
        for name in names[rounds % len(names) :] + names[: rounds % len(names)]:
            samples[name].append(_call_ms(fns[name]))
        rounds += 1
    interleaved = {name: statistics.median(s) for name, s in samples.items()}
    block = {}
    for name, fn in fns.items():
        fn()  # warm again: the other providers ran since
        fn()
        block[name] = statistics.median(_call_ms(fn) for _ in range(rounds))
    return {"interleaved": interleaved, "block": block}


def _call_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def speedup(modes: dict[str, dict[str, float]], base: str, provider: str) -> float:
    """`base`'s time over `provider`'s, in the timing mode (of `modes`: mode -> name -> ms) less
    favourable to `provider`."""
    return min(times[base] / times[provider] for times in modes.values())


def time_cuda(fns: dict[str, Callable[[], object]]) -> dict[str, dict[str, float]]:
    """Median milliseconds per call of each function on the GPU, per timing mode:
    {"cold": {name: ms}, "warm": {name: ms}} ("warm" only where triton is missing)."""
    try:
        from triton.testing import do_bench
    except ImportError:
        return {"warm": {name: _timed(_time_cuda_warm, fn) for name, fn in fns.items()}}

    def cold(fn):
        return do_bench(fn, warmup=25, rep=100, return_mode="median")

    return {
        "cold": {name: _timed(cold, fn) for name, fn in fns.items()},
        "warm": {name: _timed(_time_cuda_warm, fn) for name, fn in fns.items()},
    }


def on_own_thread(fn: Callable[[], object]) -> Callable[[], object]:
    """Marks `fn` to be timed on a fresh thread of its own (time_cuda), for what ATen keeps per
    thread: its cuDNN plans, cached without the benchmark flag in their key, so that a call
    with torch.backends.cudnn.benchmark on would reuse the plan another provider's calls cached
    on the timing thread instead of benchmarking."""
    fn.own_thread = True
    return fn


def _timed(timer: Callable[[Callable[[], object]], float], fn: Callable[[], object]) -> float:
    if not getattr(fn, "own_thread", False):
        return timer(fn)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(timer, fn).result()


def _time_cuda_warm(
    fn: Callable[[], object], *, warmup_ms: float = 25, rep_ms: float = 100, blocks: int = 10
) -> float:
    """Median over `blocks` blocks of back-to-back calls of the milliseconds per call, L2 not
    flushed. Blocks rather than an event pair per call: a small call's launch then overlaps the
    previous call's work, as in a training or inference loop (do_bench's cold figure hides it
    behind the L2 flush)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        fn()
    end.record()
    end.synchronize()
    estimate_ms = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate_ms))):
        fn()
    calls = max(1, int(rep_ms / blocks / estimate_ms))
    per_call = []
    for _ in range(blocks):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) / calls)
    return statistics.median(per_call)


def cpu_fma_peak_gflops(threads: int) -> dict[str, float]:
    """The CPU's FMA peak on `threads` threads per instruction-set level ("avx2", and
    "avx512" where the CPU has AVX-512F: float32 FMAs; "avx512_bf16" where it has AVX512_BF16:
    vdpbf16ps, two bfloat16 products per float32 lane), from bench/fma_peak.cpp (empty where it
    cannot be built: no g++, or not x86-64)."""
    if shutil.which("g++") is None or platform.machine() != "x86_64":
        return {}
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fma_peak.cpp")
    with tempfile.TemporaryDirectory() as tmp:
        binary = os.path.join(tmp, "fma_peak")
        subprocess.run(["g++", "-O2", "-fopenmp", source, "-o", binary], check=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run([binary], env=env, check=True, capture_output=True, text=True).stdout
    return {line.split()[0]: float(line.split()[1]) for line in out.splitlines()}


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """The GPU's measured device-to-device copy bandwidth (bytes read + written per second)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    # The faster timing mode: 1 GiB each way, the L2 plays no part.
    ms = min(times["copy"] for times in time_cuda({"copy": lambda: dst.copy_(src)}).values())
    return 2 * nbytes / (ms * 1e-3) / 1e9
