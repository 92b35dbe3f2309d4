"""Training-step benchmark: FusedSimpleCNN against SimpleCNN, eager and ``torch.compile``d,
forward + backward + SGD.

Times full steps (on the CPU in one process, interleaved and each in a block of its own; on a
GPU with the L2 flushed before each step and not; see measure.py; every speedup is the less
favourable of the two) and measures memory at a given batch: the bytes autograd keeps for
backward (each saved storage once, via saved-tensor hooks) and the peak memory training adds
(on a GPU torch.cuda.max_memory_allocated around a step; on the CPU the profiler's memory
timeline).
Writes bench/results/train-<device>.json.

    python bench/train_step.py                       # CPU: time at 64, 256, 1024, memory at 1024
    python bench/train_step.py --device cuda --batches 4096 --memory-batch 4096
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from measure import machine, machine_label, speedup, time_cpu, time_cuda

import simplecnn_kernels as sk
from simplecnn_kernels.testing import saved_for_backward_bytes

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"SimpleCNN": sk.SimpleCNN, "FusedSimpleCNN": sk.FusedSimpleCNN}
COMPILED = "SimpleCNN compiled"
# The GPU check's training step has no time for a compile; `--compile-mode default` adds it.
DEFAULT_COMPILE_MODE = {"cpu": "default", "cuda": "none"}


def make_step(cls, batch: int, device: str, compile_mode: str = "none"):
    """A training step of a fresh `cls`; with a compile mode, of the model ``torch.compile``d
    (forward and, through AOTAutograd, backward; the optimizer step stays eager, as in the
    others)."""
    torch.manual_seed(0)
    model = cls(device=device)
    forward = model
    if compile_mode != "none":
        forward = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(10, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        opt.step()

    return model, x, step


def peak_step_memory(name: str, batch: int, device: str) -> int:
    """Bytes of memory one training step adds at its peak."""
    if device == "cuda":
        _, _, step = make_step(MODELS[name], batch, device)
        step()  # the optimizer's state and the gradients exist from here on
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    # CPU: the profiler's memory timeline of one step (a private API: the CPU allocator keeps
    # no statistics of its own), its peak over its start.
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    _, _, step = make_step(MODELS[name], batch, device)
    step()
    cpu = torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(
        activities=[cpu], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        step()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    totals = [sum(s) for s in sizes]
    return max(totals) - totals[0]


def run(args) -> None:
    device = args.device
    info = machine(device)
    compile_mode = args.compile_mode or DEFAULT_COMPILE_MODE[device]
    rows = []
    for batch in args.batches:
        print(f"timing steps at batch {batch} ...", file=sys.stderr)
        steps = {"SimpleCNN": make_step(sk.SimpleCNN, batch, device)[2]}
        if compile_mode != "none":
            torch._dynamo.reset()  # a fresh cache per batch: no recompile limit
            steps[COMPILED] = make_step(sk.SimpleCNN, batch, device, compile_mode)[2]
        steps["FusedSimpleCNN"] = make_step(sk.FusedSimpleCNN, batch, device)[2]
        modes = time_cuda(steps) if device == "cuda" else time_cpu(steps)
        first = next(iter(modes.values()))  # "interleaved" on the CPU, "cold" on a GPU
        for name, ms in first.items():
            vs_compiled = speedup(modes, COMPILED, name) if COMPILED in first else None
            rows.append(
                {
                    "batch": batch,
                    "model": name,
                    "step_ms": ms,
                    "step_ms_by_mode": {mode: times[name] for mode, times in modes.items()},
                    "speedup": speedup(modes, "SimpleCNN", name),
                    "speedup_vs_compiled": vs_compiled,
                    "images_per_s": batch / ms * 1e3,
                }
            )
    memory = []
    print(f"memory at batch {args.memory_batch} ...", file=sys.stderr)
    for name, cls in MODELS.items():
        model, x, _ = make_step(cls, args.memory_batch, device)
        memory.append(
            {
                "batch": args.memory_batch,
                "model": name,
                "saved_for_backward_bytes": saved_for_backward_bytes(model, x),
                "peak_step_bytes": peak_step_memory(name, args.memory_batch, device),
            }
        )
    result = {
        "machine": info,
        "command": " ".join(sys.argv),
        "compile_mode": compile_mode,
        "steps": rows,
        "memory": memory,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"train-{device}.json"
    out.write_text(json.dumps(result, indent=1))

    print(f"\n## Training step, {machine_label(info)}")
    modes = " / ".join(rows[0]["step_ms_by_mode"]) if rows else ""
    print(f"| batch | model | step ms (median, {modes}) | x SimpleCNN | x compiled | images/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        step_ms = " / ".join(f"{ms:.2f}" for ms in r["step_ms_by_mode"].values())
        vs_compiled = r["speedup_vs_compiled"]
        print(
            f"| {r['batch']} | {r['model']} | {step_ms} | {r['speedup']:.2f} | "
            f"{'' if vs_compiled is None else f'{vs_compiled:.2f}'} | {r['images_per_s']:,.0f} |"
        )
    print("\n| batch | model | kept for backward (MiB) | peak added by a step (MiB) |")
    print("|---|---|---|---|")
    for m in memory:
        print(
            f"| {m['batch']} | {m['model']} | {m['saved_for_backward_bytes'] / 2**20:.1f} | "
            f"{m['peak_step_bytes'] / 2**20:.1f} |"
        )
    print(f"wrote {out}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--memory-batch", type=int, default=1024)
    parser.add_argument(
        "--compile-mode",
        help="torch.compile mode for the stock model, or 'none' to leave it out "
        "(default: cpu 'default', cuda 'none')",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
