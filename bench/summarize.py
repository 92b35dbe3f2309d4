"""The short table gpu_check.sh prints last: the issue's speed targets at batch 4096 from
cuda-target.json, the sweeps from cuda-sweep.json and cuda-models.json, training from
train-cuda.json.  usage: python bench/summarize.py OUT_DIR"""

import json
import sys
from pathlib import Path


def load(path):
    return json.loads(path.read_text()) if path.exists() else None


def main(out: Path) -> None:
    lines = []
    target = load(out / "cuda-target.json")
    if target:
        m = target["machine"]
        lines += [
            f"# {m['gpu']}, torch {m['torch']}, triton {m.get('triton')}, "
            f"copy {m['copy_bandwidth_gbs']} GB/s, cuDNN TF32 {m['cudnn_allow_tf32']}",
            "",
            "| layer | dtype | N | stock eager ms | stock compiled ms | triton ms | x eager | "
            "x compiled | % roofline | cuda ms | cuda / triton |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        groups = {}
        for r in target["rows"]:
            groups.setdefault((r["what"], r["dtype"], r["batch"]), {})[r["provider"]] = r
        for (what, dtype, batch), rows in groups.items():
            eager = rows["stock eager"]["ms"]
            comp = next((r["ms"] for p, r in rows.items() if p.startswith("stock compiled")), None)
            tri, cud = rows.get("fused triton"), rows.get("fused cuda")
            cells = [what, dtype, str(batch), f"{eager:.3f}", f"{comp:.3f}" if comp else "-"]
            if tri:
                roof = tri.get("fraction_of_copy_bandwidth")
                cells += [
                    f"{tri['ms']:.3f}",
                    f"{eager / tri['ms']:.2f} (target 6)",
                    f"{comp / tri['ms']:.2f} (target 3)" if comp else "-",
                    f"{100 * roof:.0f}% (target 80%)" if roof else "-",
                ]
            else:
                cells += ["-"] * 4
            if cud:
                ratio = f"{cud['ms'] / tri['ms']:.2f} (target <= 1.5)" if tri else "-"
                cells += [f"{cud['ms']:.3f}", ratio]
            else:
                cells += ["-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
    sweep_rows = [
        row
        for name in ("cuda-sweep.json", "cuda-models.json")
        for row in (load(out / name) or {"rows": []})["rows"]
    ]
    if sweep_rows:
        lines += [
            "",
            "| what | dtype | N | provider | ms | x eager | % roofline |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sweep_rows:
            roof = r.get("fraction_of_copy_bandwidth")
            lines.append(
                f"| {r['what']} | {r['dtype']} | {r['batch']} | {r['provider']} | {r['ms']:.3f} | "
                f"{r['speedup_vs_eager']:.2f} | {'' if roof is None else f'{100 * roof:.0f}%'} |"
            )
    train = load(out / "train-cuda.json")
    if train:
        lines += [
            "",
            "| training step | N | ms | speedup (target 2 at 4096) |",
            "|---|---|---|---|",
        ]
        for r in train["steps"]:
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['step_ms']:.2f} | {r['speedup']:.2f} |"
            )
        for m in train["memory"]:
            kept, peak = m["saved_for_backward_bytes"] / 2**20, m["peak_step_bytes"] / 2**20
            lines.append(
                f"| {m['model']} memory | {m['batch']} | kept {kept:.0f} MB, peak {peak:.0f} MB | |"
            )
    text = "\n".join(lines) if lines else "no benchmark results"
    (out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
