"""Timing and machine description for the benchmarks.

CPU: the providers of one comparison run interleaved, one call each per round, so the ±15% drift
of a shared machine hits all of them alike; medians of the rounds are reported.
GPU: ``triton.testing.do_bench`` (CUDA events, after warm-up, L2 flushed before each call, so
the numbers are cold-cache) or CUDA events directly where triton is missing.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import torch


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
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
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
) -> dict[str, float]:
    """Median milliseconds per call of each function, measured in interleaved rounds."""
    for fn in fns.values():  # warm-up: first-call allocation, thread pool start, compiled code
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    start = time.perf_counter()
    for round_ in range(max_rounds):
        if round_ >= min_rounds and time.perf_counter() - start > budget_s:
            break
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def time_cuda(fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median milliseconds per call of each function on the GPU (cold L2 with triton)."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    out = {}
    for name, fn in fns.items():
        if do_bench is not None:
            out[name] = do_bench(fn, warmup=25, rep=100, return_mode="median")
        else:
            out[name] = _time_cuda_events(fn)
    return out


def _time_cuda_events(fn: Callable[[], object], reps: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cpu_fma_peak_gflops(threads: int) -> float | None:
    """The CPU's float32 FMA peak on `threads` threads, from bench/fma_peak.cpp (None where it
    cannot be built: no g++, or not x86-64)."""
    if shutil.which("g++") is None or platform.machine() != "x86_64":
        return None
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fma_peak.cpp")
    with tempfile.TemporaryDirectory() as tmp:
        binary = os.path.join(tmp, "fma_peak")
        subprocess.run(["g++", "-O2", "-fopenmp", source, "-o", binary], check=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run([binary], env=env, check=True, capture_output=True, text=True).stdout
    return float(out.split()[0])


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """The GPU's measured device-to-device copy bandwidth (bytes read + written per second)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = time_cuda({"copy": lambda: dst.copy_(src)})["copy"]
    return 2 * nbytes / (ms * 1e-3) / 1e9
