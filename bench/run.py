"""The benchmark (`make bench`): the fused ops, FusedSimpleCNN and fuse()d models (CifarVGG,
torchvision's VGG-11 and VGG-16-BN) against the stock path.

For every device here (the CPU; a CUDA GPU when present) and every fused backend that runs on
it, it checks the fused result against a float64 stock result, then times it side by side with
the stock variants a user could pick: eager (NCHW), channels_last, on a GPU eager with
``torch.backends.cudnn.benchmark`` on, ``torch.compile`` of the stock composition (max-autotune
on a GPU) and, on the CPU, ``torch.compile`` of it in channels_last (input and weights or
model), over batch sizes, for the layer and for the whole model. On CPUs with AVX-512 it also
times the fused op with its kernels held to AVX2 ("fused@avx2"). Every provider is timed two
ways (measure.py): on the CPU interleaved with the others and in a block of its own, on a GPU
with the L2 flushed (cold) and not (warm); every speedup is the less favourable of the two, and
"x best stock" compares with the fastest stock variant of each way.
It prints a table (median ms, speedups, GFLOP/s, % of peak, images/s) and writes
bench/results/<name>.json (after every case, so an interrupted run keeps what it measured) and
<name>.png.

    python bench/run.py                      # every device here, float32
    python bench/run.py --device cuda --dtype float32 bfloat16 --cases 3-18 --batches 4096
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from measure import (
    copy_bandwidth_gbs,
    cpu_fma_peak_gflops,
    machine,
    machine_label,
    on_own_thread,
    speedup,
    time_cpu,
    time_cuda,
)

import simplecnn_kernels as sk
from simplecnn_kernels.testing import stock_composition

RESULTS = Path(__file__).resolve().parent / "results"
LAYERS = {  # case name: (C_in, C_out, H, W, pooled: conv3x3_relu_maxpool2d or conv3x3_relu2d)
    "3-18": (3, 18, 32, 32, True),  # the SimpleCNN layer
    "64-64": (64, 64, 32, 32, True),  # wide channels
    "128-128": (128, 128, 16, 16, True),  # wider, on a smaller image (as deeper in a network)
    "relu-64-64": (64, 64, 32, 32, False),  # no pool: conv3x3_relu2d
    "relu-256-256": (256, 256, 14, 14, False),  # VGG-16's conv4/conv5 layers at 224 / 2
}


def _torchvision(name):
    """A torchvision model with random weights (nothing downloaded), eval mode."""

    def build(device=None, dtype=None):
        import torchvision

        return getattr(torchvision.models, name)(weights=None).to(device=device, dtype=dtype)

    return build


# case name: (model class or builder, input side)
MODELS = {
    "model": (sk.SimpleCNN, 32),
    "vgg": (sk.CifarVGG, 32),
    "vgg11": (_torchvision("vgg11"), 224),
    "vgg16_bn": (_torchvision("vgg16_bn"), 224),
}
CASES = [*LAYERS, *MODELS]
DEFAULT_BATCHES = {
    "cpu": {
        "3-18": [1, 16, 64, 256, 1024],
        "64-64": [1, 16, 64],
        "128-128": [1, 64],
        "model": [1, 16, 64, 256, 1024],
        "vgg": [1, 16, 64],
        "relu-64-64": [1, 64],
        "relu-256-256": [1, 8],
        "vgg11": [1, 8],
        "vgg16_bn": [1, 8],
    },
    "cuda": {
        "3-18": [1, 256, 4096, 16384],
        "64-64": [64, 1024],
        "128-128": [64, 1024],
        "model": [256, 4096],
        "vgg": [64, 1024],
        "relu-64-64": [64, 1024],
        "relu-256-256": [8, 256],
        "vgg11": [8, 64],
        "vgg16_bn": [8, 64],
    },
}
DEFAULT_COMPILE_MODE = {"cpu": "default", "cuda": "max-autotune"}
MODEL_NAMES = {
    "model": "SimpleCNN model",
    "vgg": "CifarVGG model (fuse)",
    "vgg11": "torchvision vgg11 224x224 (fuse)",
    "vgg16_bn": "torchvision vgg16_bn 224x224 (fuse)",
}
# Where the CPU kernels can run at AVX-512, the AVX2 level is timed too (provider "fused@avx2").
AVX2_TOO = {"avx512", "avx2"} <= set(sk.cpu_capabilities())


def fused_backends(device: str, dtype: torch.dtype = torch.float32) -> list[str]:
    return [b for b in sk.ops.backends_for(device, dtype) if b != "reference"]


def at_avx2(fn):
    """`fn` with the CPU kernels held to the AVX2 level."""

    def call():
        with sk.forced_cpu_capability("avx2"):
            return fn()

    return call


def with_cudnn_benchmark(fn):
    """`fn` with cuDNN's benchmark mode on (on a shape's first call it times the conv algorithms
    and keeps the fastest), restored after each call so that the other providers run with
    torch's setting; timed on a thread of its own (measure.on_own_thread says why)."""

    def call():
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            return fn()
        finally:
            torch.backends.cudnn.benchmark = before

    return on_own_thread(call)


def stock_variants(device: str, compile_mode: str, stock_call) -> dict:
    """The stock variants a user could pick, by provider name. `stock_call(channels_last, mode)`
    gives the stock path as a call without arguments: on NCHW or channels_last input (and
    weights or model), eager (mode None) or ``torch.compile``d with that mode."""
    providers = {
        "stock eager": stock_call(False, None),
        "stock channels_last": stock_call(True, None),
    }
    if device == "cuda":
        providers["stock cudnn.benchmark"] = with_cudnn_benchmark(providers["stock eager"])
    if compile_mode != "none":
        providers[f"stock compiled ({compile_mode})"] = stock_call(False, compile_mode)
        # CPU only: on the GPU each max-autotune compile takes much of bench/gpu_check.sh's time.
        if device == "cpu":
            cl_name = f"stock compiled channels_last ({compile_mode})"
            providers[cl_name] = stock_call(True, compile_mode)
    return providers


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


def compiled(fn, mode: str):
    return torch.compile(fn, mode=None if mode == "default" else mode, dynamic=False)


def layer_case(device, dtype, case, batch, compile_mode):
    c_in, c_out, h, w_, pooled = LAYERS[case]

    def stock(x, w, b):
        return stock_composition(x, w, b, pooled)

    op = sk.conv3x3_relu_maxpool2d if pooled else sk.conv3x3_relu2d
    x = torch.randn(batch, c_in, h, w_, device=device, dtype=dtype)
    w = torch.randn(c_out, c_in, 3, 3, device=device, dtype=dtype) / (3 * c_in**0.5)
    b = torch.randn(c_out, device=device, dtype=dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w_cl = w.contiguous(memory_format=torch.channels_last)

    def stock_call(channels_last, mode):
        fn = stock if mode is None else compiled(stock, mode)
        args = (x_cl, w_cl, b) if channels_last else (x, w, b)
        return lambda: fn(*args)

    providers = stock_variants(device, compile_mode, stock_call)
    fused = {
        f"fused {backend}": lambda backend=backend: op(x, w, b, backend=backend)
        for backend in fused_backends(device, dtype)
    }
    if device == "cpu" and AVX2_TOO:
        fused["fused@avx2"] = at_avx2(lambda: op(x, w, b, backend="cpu"))
    if device == "cuda" and "triton" in fused_backends(device, dtype):
        from simplecnn_kernels import triton_conv3x3_relu_maxpool2d as tk

        # The multiply-add kernel too, to check the choice of the tensor-core one.
        fused["fused triton (fma kernel)"] = lambda: tk.forward(x, w, b, kernel="fma", pool=pooled)
    if device == "cuda" and len(fused_backends(device, dtype)) > 1:
        # What a user gets without naming a backend (the choice depends on the call's size).
        fused["fused (default backend)"] = lambda: op(x, w, b)
    ref = stock(x.double(), w.double(), b.double())
    errors = {name: rel_err(fn(), ref) for name, fn in fused.items()}
    providers.update(fused)
    flops = 2 * batch * c_out * h * w_ * c_in * 9
    itemsize = x.element_size()
    out_pixels = (h // 2) * (w_ // 2) if pooled else h * w_
    moved = batch * (c_in * h * w_ + c_out * out_pixels) * itemsize
    return providers, errors, flops, moved


def model_case(device, dtype, case, batch, compile_mode):
    """A whole model, stock against fused: FusedSimpleCNN for SimpleCNN, fuse() for others."""
    cls, side = MODELS[case]
    stock_model = cls(device=device, dtype=dtype).eval()
    x = torch.randn(batch, 3, side, side, device=device, dtype=dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    stock_cl = cls(device=device, dtype=dtype).eval().to(memory_format=torch.channels_last)
    stock_cl.load_state_dict(stock_model.state_dict())
    ref_model = cls(device=device, dtype=torch.float64).eval()
    ref_model.load_state_dict(stock_model.state_dict())
    ref = ref_model(x.double())

    def stock_call(channels_last, mode):
        model, inp = (stock_cl, x_cl) if channels_last else (stock_model, x)
        if mode is not None:
            model = compiled(model, mode)
        return lambda: model(inp)

    providers = stock_variants(device, compile_mode, stock_call)
    errors = {}
    for backend in fused_backends(device, dtype):
        if cls is sk.SimpleCNN:
            fused = sk.FusedSimpleCNN(device=device, dtype=dtype, backend=backend).eval()
            fused.load_state_dict(stock_model.state_dict())
        else:
            fused = sk.fuse(stock_model, backend=backend)
        providers[f"fused {backend}"] = lambda m=fused: m(x)
        errors[f"fused {backend}"] = rel_err(fused(x), ref)
        if compile_mode != "none":
            fused_compiled = compiled(fused, compile_mode)
            providers[f"fused {backend} compiled"] = lambda m=fused_compiled: m(x)
        if backend == "cpu" and AVX2_TOO:
            providers["fused@avx2"] = at_avx2(lambda m=fused: m(x))
            errors["fused@avx2"] = rel_err(providers["fused@avx2"](), ref)
    flops = model_flops(stock_model, x)
    return providers, errors, flops, None


def model_flops(model, x) -> int:
    """The model's multiply-add FLOPs (2 per MAC) on `x`: its convolutions and linear layers."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def run(args) -> None:
    if args.device == "all":
        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    else:
        devices = [args.device]
    for device in devices:
        start = time.perf_counter()
        info = machine(device)
        compile_mode = args.compile_mode or DEFAULT_COMPILE_MODE[device]
        plan = [
            (getattr(torch, dtype), case, batch)
            for dtype in args.dtype
            for case in args.cases
            for batch in (args.batches or DEFAULT_BATCHES[device][case])
        ]
        print(
            f"# {device}: {machine_label(info)}; fused: {fused_backends(device)}", file=sys.stderr
        )
        if device == "cuda":
            info["copy_bandwidth_gbs"] = round(copy_bandwidth_gbs(), 1)
        else:
            info["cpu_capability"] = sk.cpu_capability()  # the level the fused "cpu" calls run at
            info["fma_peak_gflops"] = cpu_fma_peak_gflops(torch.get_num_threads())
        name = args.name or device
        result = {"machine": info, "command": " ".join(sys.argv), "compile_mode": compile_mode}
        result["rows"] = []
        args.out.mkdir(parents=True, exist_ok=True)
        for i, (dtype, case, batch) in enumerate(plan, 1):
            t0 = time.perf_counter()
            label = (
                f"[{i}/{len(plan)}] {device} {str(dtype).removeprefix('torch.')} {case} N={batch}"
            )
            print(label + " ...", end="", file=sys.stderr, flush=True)
            torch._dynamo.reset()  # a fresh cache per case: no recompile limit, no stale guards
            with torch.no_grad():
                if case in MODELS:
                    providers, errors, flops, moved = model_case(
                        device, dtype, case, batch, compile_mode
                    )
                else:
                    providers, errors, flops, moved = layer_case(
                        device, dtype, case, batch, compile_mode
                    )
                modes = time_cuda(providers) if device == "cuda" else time_cpu(providers)
            result["rows"] += rows_for(info, case, dtype, batch, modes, errors, flops, moved)
            # Replaced whole: a step killed mid-write (bench/gpu_check.sh) keeps the last one.
            partial = args.out / f"{name}.json.partial"
            partial.write_text(json.dumps(result, indent=1))
            partial.replace(args.out / f"{name}.json")
            print(f" {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        print_table(result)
        plot(result, args.out / f"{name}.png")
        print(
            f"wrote {args.out / f'{name}.json'} and {args.out / f'{name}.png'} "
            f"({time.perf_counter() - start:.0f}s)",
            file=sys.stderr,
        )


def rows_for(info, case, dtype, batch, modes, errors, flops, moved) -> list[dict]:
    """One row per provider; `modes`: timing mode -> provider -> median ms. "ms" is the first
    mode's ("interleaved" on the CPU, "cold" on a GPU); every speedup is the less favourable of
    the modes."""
    first = next(iter(modes.values()))
    stocks = [p for p in first if p.startswith("stock")]
    stock_compiled = next((p for p in stocks if p.startswith("stock compiled")), None)
    best = {mode: min(stocks, key=times.get) for mode, times in modes.items()}
    peaks = info.get("fma_peak_gflops", {})
    rows = []
    for provider, ms in first.items():
        vs_best = {mode: times[best[mode]] / times[provider] for mode, times in modes.items()}
        headline_mode = min(vs_best, key=vs_best.get)
        vs_compiled = None if stock_compiled is None else speedup(modes, stock_compiled, provider)
        row = {
            "what": case_label(case),
            "dtype": str(dtype).removeprefix("torch."),
            "batch": batch,
            "provider": provider,
            "ms": ms,
            "ms_by_mode": {mode: times[provider] for mode, times in modes.items()},
            "speedup_vs_eager": speedup(modes, "stock eager", provider),
            "speedup_vs_compiled": vs_compiled,
            "speedup_vs_best_stock": vs_best[headline_mode],
            "best_stock": best[headline_mode],
            "speedup_vs_best_stock_by_mode": vs_best,
            "best_stock_by_mode": best,
            "gflops": flops / ms / 1e6,
            "images_per_s": batch / ms * 1e3,
            "max_rel_err": errors.get(provider),
        }
        peak = peaks.get(peak_level(provider, info.get("cpu_capability"), dtype))
        if peak:
            row["fraction_of_peak"] = row["gflops"] / peak
        if moved is not None and info.get("copy_bandwidth_gbs"):
            row["fraction_of_copy_bandwidth"] = (
                moved / (ms * 1e-3) / 1e9 / info["copy_bandwidth_gbs"]
            )
        rows.append(row)
    return rows


def peak_level(provider: str, level: str | None, dtype: torch.dtype) -> str | None:
    """Which peak of bench/fma_peak.cpp bounds `provider` at CPU `level`: float32 the level's
    float32 FMA peak (avx512_bf16's float32 kernels are avx512's), bfloat16 at avx512_bf16 the
    vdpbf16ps peak (twice as many products per instruction; also where the call takes a float32
    path, Winograd or a small implicit GEMM: the level's best); None where there is none (the
    generic level, and float16 and bfloat16 elsewhere: stock's bfloat16 dot products in oneDNN
    go past the float32 peak)."""
    if provider == "fused@avx2":
        level = "avx2"
    if dtype == torch.float32:
        return "avx512" if level == "avx512_bf16" else level
    if dtype == torch.bfloat16 and level == "avx512_bf16":
        return level
    return None


def case_label(case: str) -> str:
    if case in MODELS:
        return MODEL_NAMES[case]
    c_in, c_out, h, w, pooled = LAYERS[case]
    return f"layer {c_in}->{c_out} {h}x{w}" + ("" if pooled else " conv3x3_relu2d (no pool)")


def print_table(result: dict) -> None:
    info = result["machine"]
    print(f"\n## {machine_label(info)}")
    if info.get("fma_peak_gflops"):
        peaks = ", ".join(f"{level} {gf:.0f}" for level, gf in info["fma_peak_gflops"].items())
        levels = info["cpu_capability"] + (", avx2 for fused@avx2" if AVX2_TOO else "")
        print(
            f"% peak: GFLOP/s over the measured FMA peak (GFLOP/s: {peaks}) of the level the "
            f"kernels run at ({levels}; float32 at avx512_bf16: avx512's; bfloat16 there: "
            "vdpbf16ps's)."
        )
    if info.get("copy_bandwidth_gbs"):
        print(
            "% peak (layers): input read once + output written once, over the measured copy "
            f"bandwidth, {info['copy_bandwidth_gbs']:.0f} GB/s."
        )
    if info.get("device") == "cuda":
        print(
            f"TF32 allowed: cuDNN conv {info['cudnn_allow_tf32']}, cuBLAS matmul "
            f"{info['matmul_allow_tf32']}."
        )
    modes = list(result["rows"][0]["ms_by_mode"]) if result["rows"] else []
    if len(modes) > 1:
        print(
            f"Two values: the timing modes {' / '.join(modes)}. Speedups (x) take the mode less "
            "favourable to the row; x best stock: against the fastest stock variant (named) of "
            "that mode."
        )
    print(
        "GFLOP/s count the direct convolution's FLOPs (2 * N * C_out * H * W * C_in * 9), also "
        "for the Winograd path, which does fewer; for models, their convolutions and linear layers."
    )
    header = ["what", "dtype", "N", "provider", "median ms", "x eager", "x compiled"]
    header += ["x best stock", "per mode", "best stock", "GFLOP/s", "% peak", "images/s"]
    header += ["max rel err"]
    lines = []
    for r in result["rows"]:
        peak = r.get("fraction_of_peak", r.get("fraction_of_copy_bandwidth"))
        vs_compiled = r["speedup_vs_compiled"]
        lines.append(
            [
                r["what"],
                r["dtype"],
                str(r["batch"]),
                r["provider"],
                " / ".join(f"{ms:.3f}" for ms in r["ms_by_mode"].values()),
                f"{r['speedup_vs_eager']:.2f}",
                "" if vs_compiled is None else f"{vs_compiled:.2f}",
                f"{r['speedup_vs_best_stock']:.2f}",
                " / ".join(f"{x:.2f}" for x in r["speedup_vs_best_stock_by_mode"].values()),
                r["best_stock"].removeprefix("stock "),
                f"{r['gflops']:.1f}",
                "" if peak is None else f"{100 * peak:.0f}%",
                f"{r['images_per_s']:,.0f}",
                "" if r["max_rel_err"] is None else f"{r['max_rel_err']:.1e}",
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)
        return
    groups = sorted({(r["what"], r["dtype"]) for r in result["rows"]})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, (what, dtype) in zip(axes[0], groups, strict=True):
        rows = [r for r in result["rows"] if (r["what"], r["dtype"]) == (what, dtype)]
        for provider in dict.fromkeys(r["provider"] for r in rows):
            pts = sorted(
                (r["batch"], r["speedup_vs_eager"]) for r in rows if r["provider"] == provider
            )
            ax.plot(*zip(*pts, strict=True), marker="o", label=provider)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{what} ({dtype})")
        ax.set_xlabel("batch size")
        ax.set_ylabel("speedup over stock eager")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(machine_label(result["machine"]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    parser.add_argument(
        "--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"]
    )
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--batches", nargs="+", type=int, help="default: per device and case")
    parser.add_argument(
        "--compile-mode",
        help="torch.compile mode for the stock path, or 'none' to leave it out "
        "(default: cpu 'default', cuda 'max-autotune')",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", help="results file name (default: the device)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
