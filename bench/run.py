"""The benchmark (`make bench`): the fused op and FusedSimpleCNN against the stock path.

For every device here (the CPU; a CUDA GPU when present) and every fused backend that runs on
it, it checks the fused result against a float64 stock result, then times it side by side with
stock eager (NCHW), stock channels_last and ``torch.compile`` of the stock composition, over batch
sizes, for the layer and for the whole model. It prints a table (median ms, speedups, GFLOP/s,
% of peak, images/s) and writes bench/results/<name>.json (after every case, so an interrupted
run keeps what it measured) and <name>.png.

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
import torch.nn.functional as F
from measure import (
    copy_bandwidth_gbs,
    cpu_fma_peak_gflops,
    machine,
    machine_label,
    time_cpu,
    time_cuda,
)

import simplecnn_kernels as sk

RESULTS = Path(__file__).resolve().parent / "results"
LAYERS = {  # case name: (C_in, C_out, H, W)
    "3-18": (3, 18, 32, 32),  # the SimpleCNN layer
    "64-64": (64, 64, 32, 32),  # wide channels
}
MODELS = {"model": sk.SimpleCNN, "vgg": sk.CifarVGG}  # case name: model class
CASES = [*LAYERS, *MODELS]
DEFAULT_BATCHES = {
    "cpu": {
        "3-18": [1, 16, 64, 256, 1024],
        "64-64": [1, 16, 64],
        "model": [1, 16, 64, 256, 1024],
        "vgg": [1, 16, 64],
    },
    "cuda": {
        "3-18": [1, 256, 4096, 16384],
        "64-64": [64, 1024],
        "model": [256, 4096],
        "vgg": [64, 1024],
    },
}
DEFAULT_COMPILE_MODE = {"cpu": "default", "cuda": "max-autotune"}
MODEL_NAMES = {"model": "SimpleCNN model", "vgg": "CifarVGG model (fuse)"}


def stock(x, w, b):
    return F.max_pool2d(F.relu(F.conv2d(x, w, b, stride=1, padding=1)), 2, 2)


def fused_backends(device: str) -> list[str]:
    return [b for b in sk.ops.backends_for(device) if b != "reference"]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


def compiled(fn, mode: str):
    torch._dynamo.reset()  # a fresh cache per case: no recompile limit, no stale guards
    return torch.compile(fn, mode=None if mode == "default" else mode, dynamic=False)


def layer_case(device, dtype, case, batch, compile_mode):
    c_in, c_out, h, w_ = LAYERS[case]
    x = torch.randn(batch, c_in, h, w_, device=device, dtype=dtype)
    w = torch.randn(c_out, c_in, 3, 3, device=device, dtype=dtype) / (3 * c_in**0.5)
    b = torch.randn(c_out, device=device, dtype=dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w_cl = w.contiguous(memory_format=torch.channels_last)
    providers = {
        "stock eager": lambda: stock(x, w, b),
        "stock channels_last": lambda: stock(x_cl, w_cl, b),
    }
    if compile_mode != "none":
        stock_compiled = compiled(stock, compile_mode)
        providers[f"stock compiled ({compile_mode})"] = lambda: stock_compiled(x, w, b)
    fused = {
        f"fused {backend}": lambda backend=backend: sk.conv3x3_relu_maxpool2d(
            x, w, b, backend=backend
        )
        for backend in fused_backends(device)
    }
    if device == "cuda" and "triton" in fused_backends(device):
        from simplecnn_kernels import triton_conv3x3_relu_maxpool2d as tk

        # The multiply-add kernel too, to check the choice of the tensor-core one.
        fused["fused triton (fma kernel)"] = lambda: tk.forward(x, w, b, kernel="fma")
    ref = stock(x.double(), w.double(), b.double())
    errors = {name: rel_err(fn(), ref) for name, fn in fused.items()}
    providers.update(fused)
    flops = 2 * batch * c_out * h * w_ * c_in * 9
    itemsize = x.element_size()
    moved = batch * (c_in * h * w_ + c_out * (h // 2) * (w_ // 2)) * itemsize
    return providers, errors, flops, moved


def model_case(device, dtype, case, batch, compile_mode):
    """A whole model, stock against fused: FusedSimpleCNN for SimpleCNN, fuse() for others."""
    cls = MODELS[case]
    stock_model = cls(device=device, dtype=dtype).eval()
    x = torch.randn(batch, 3, 32, 32, device=device, dtype=dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    stock_cl = cls(device=device, dtype=dtype).eval().to(memory_format=torch.channels_last)
    stock_cl.load_state_dict(stock_model.state_dict())
    ref_model = cls(device=device, dtype=torch.float64).eval()
    ref_model.load_state_dict(stock_model.state_dict())
    ref = ref_model(x.double())
    providers = {
        "stock eager": lambda: stock_model(x),
        "stock channels_last": lambda: stock_cl(x_cl),
    }
    if compile_mode != "none":
        stock_compiled = compiled(stock_model, compile_mode)
        providers[f"stock compiled ({compile_mode})"] = lambda: stock_compiled(x)
    errors = {}
    for backend in fused_backends(device):
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
        info = machine(device)
        compile_mode = args.compile_mode or DEFAULT_COMPILE_MODE[device]
        timer = time_cuda if device == "cuda" else time_cpu
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
            with torch.no_grad():
                if case in MODELS:
                    providers, errors, flops, moved = model_case(
                        device, dtype, case, batch, compile_mode
                    )
                else:
                    providers, errors, flops, moved = layer_case(
                        device, dtype, case, batch, compile_mode
                    )
                times = timer(providers)
            result["rows"] += rows_for(info, case, dtype, batch, times, errors, flops, moved)
            (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
            print(f" {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        print_table(result)
        plot(result, args.out / f"{name}.png")
        print(f"wrote {args.out / f'{name}.json'} and {args.out / f'{name}.png'}", file=sys.stderr)


def rows_for(info, case, dtype, batch, times, errors, flops, moved) -> list[dict]:
    eager = times["stock eager"]
    stock_compiled = next((v for k, v in times.items() if k.startswith("stock compiled")), None)
    rows = []
    for provider, ms in times.items():
        row = {
            "what": MODEL_NAMES.get(case, f"layer {case.replace('-', '->')} 32x32"),
            "dtype": str(dtype).removeprefix("torch."),
            "batch": batch,
            "provider": provider,
            "ms": ms,
            "speedup_vs_eager": eager / ms,
            "speedup_vs_compiled": None if stock_compiled is None else stock_compiled / ms,
            "gflops": flops / ms / 1e6,
            "images_per_s": batch / ms * 1e3,
            "max_rel_err": errors.get(provider),
        }
        if info.get("fma_peak_gflops"):
            row["fraction_of_peak"] = row["gflops"] / info["fma_peak_gflops"]
        if moved is not None and info.get("copy_bandwidth_gbs"):
            row["fraction_of_copy_bandwidth"] = (
                moved / (ms * 1e-3) / 1e9 / info["copy_bandwidth_gbs"]
            )
        rows.append(row)
    return rows


def print_table(result: dict) -> None:
    info = result["machine"]
    print(f"\n## {machine_label(info)}")
    if info.get("fma_peak_gflops"):
        print(f"% peak: GFLOP/s over the measured FMA peak, {info['fma_peak_gflops']:.0f} GFLOP/s.")
    if info.get("copy_bandwidth_gbs"):
        print(
            "% peak (layers): input read once + output written once, over the measured copy "
            f"bandwidth, {info['copy_bandwidth_gbs']:.0f} GB/s."
        )
    if info.get("device") == "cuda":
        print(f"cuDNN TF32 allowed: {info['cudnn_allow_tf32']}; timings with L2 flushed (cold).")
    print(
        "GFLOP/s count the direct convolution's FLOPs (2 * N * C_out * H * W * C_in * 9), also "
        "for the Winograd path, which does fewer; for models, their convolutions and linear layers."
    )
    header = ["what", "dtype", "N", "provider", "median ms", "x eager", "x compiled", "GFLOP/s"]
    header += ["% peak", "images/s", "max rel err"]
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
                f"{r['ms']:.3f}",
                f"{r['speedup_vs_eager']:.2f}",
                "" if vs_compiled is None else f"{vs_compiled:.2f}",
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
