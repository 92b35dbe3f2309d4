"""What bench/gpu_check.sh prints last (and writes to OUT_DIR/summary.md): the steps that failed
or ran out of time (log.txt), the test tier's counts and every failing test with the first line
of its message (junit.xml), then the speed tables: the issue's targets at batch 4096
(cuda-target.json), the sweeps (cuda-sweep.json, cuda-models.json) and training
(train-cuda.json). Any of these files may be missing, or cut short by a step out of time: its
part then says so, and the rest is still shown.  usage: python bench/summarize.py OUT_DIR"""

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

OUT_OF_TIME = {124, 137}  # timeout's exit status: out of time, then killed
OUTCOMES = {"failure": "failed", "error": "errors", "skipped": "skipped"}  # junit element: outcome


def load(path: Path) -> dict | None:
    """The JSON result file, or None where it is missing or unreadable (cut short)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def step_lines(log: Path) -> list[str]:
    """The steps that failed, from gpu_check.sh's "== NAME: exit RC" lines."""
    if not log.exists():
        return ["- no log.txt: no step ran"]
    # Not anchored at the line's start: a step cut off mid-line (pytest's dots, run.py's
    # "... " before a case's time) leaves its marker after that output.
    steps = re.findall(r"== (\S+): exit (\d+)$", log.read_text(errors="replace"), re.M)
    failed = [
        f"- {name}: " + ("out of time" if int(rc) in OUT_OF_TIME else f"exit {rc}")
        for name, rc in steps
        if rc != "0"
    ]
    return failed or [f"- none of {len(steps)} failed"]


def test_lines(junit: Path) -> list[str]:
    """The test tier's counts, then each failing test (id, outcome, first line of its message)."""
    try:
        root = ET.parse(junit).getroot()
    except FileNotFoundError:
        return ["no junit.xml: the test tier did not finish (see log.txt)"]
    except ET.ParseError as e:
        return [f"junit.xml unreadable ({e}): the test tier was cut short (see log.txt)"]
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    problems = []
    for case in root.iter("testcase"):
        if case.get("name") is None:  # the test running when pytest was interrupted (SIGINT)
            continue
        test_id = f"{case.get('classname')}::{case.get('name')}"
        child = next((c for c in case if c.tag in OUTCOMES), None)
        kind = "passed" if child is None else OUTCOMES[child.tag]
        counts[kind] += 1
        if kind in ("failed", "errors"):
            problems.append(
                f"- {test_id}: {'error' if kind == 'errors' else kind}: {message(child)}"
            )
    total = sum(counts.values())
    return [f"{total} tests: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()), *problems]


def message(element) -> str:
    """The first line of a junit failure's or error's message (its text where it has none)."""
    text = element.get("message") or element.text or ""
    return next((line.strip() for line in text.splitlines() if line.strip()), "(no message)")


def per_mode(values: dict, fmt: str = "{:.3f}") -> str:
    """One figure per timing mode ("cold / warm" on a GPU)."""
    return " / ".join(fmt.format(v) for v in values.values())


def machine_line(results: list[dict]) -> str | None:
    m = next((r["machine"] for r in results if r), None)
    if m is None:
        return None
    copy = f", copy {m['copy_bandwidth_gbs']} GB/s" if m.get("copy_bandwidth_gbs") else ""
    return (
        f"# {m['gpu']}, torch {m['torch']}, triton {m.get('triton')}{copy}; TF32 allowed: "
        f"cuDNN conv {m['cudnn_allow_tf32']}, cuBLAS matmul {m.get('matmul_allow_tf32')}"
    )


def modes_of(rows: list[dict], key: str = "ms_by_mode") -> str:
    return " / ".join(rows[0][key]) if rows else ""


def target_lines(target: dict) -> list[str]:
    """The issue's targets: per layer, dtype and batch, the stock variants against the fused
    kernels; each x is the less favourable timing mode's."""
    modes = modes_of(target["rows"])
    lines = [
        f"ms: {modes}; best stock: the fastest stock variant in each mode; x: in the mode less "
        "favourable to the fused kernel",
        "",
        "| layer | dtype | N | stock eager ms | stock compiled ms | best stock ms | triton ms | "
        "x eager | x compiled | x best stock | % roofline | cuda ms | cuda / triton |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups = {}
    for r in target["rows"]:
        groups.setdefault((r["what"], r["dtype"], r["batch"]), {})[r["provider"]] = r
    for (what, dtype, batch), rows in groups.items():
        eager = rows["stock eager"]
        comp = next((r for p, r in rows.items() if p.startswith("stock compiled")), None)
        best = eager["best_stock_by_mode"]
        tri, cud = rows.get("fused triton"), rows.get("fused cuda")
        cells = [
            what,
            dtype,
            str(batch),
            per_mode(eager["ms_by_mode"]),
            per_mode(comp["ms_by_mode"]) if comp else "-",
            best_stock_cell(best, rows),
        ]
        if tri:
            roof = tri.get("fraction_of_copy_bandwidth")
            vs_compiled = tri["speedup_vs_compiled"]
            cells += [
                per_mode(tri["ms_by_mode"]),
                f"{tri['speedup_vs_eager']:.2f} (target 6)",
                "-" if vs_compiled is None else f"{vs_compiled:.2f} (target 3)",
                f"{tri['speedup_vs_best_stock']:.2f}",
                "-" if roof is None else f"{100 * roof:.0f}% (target 80%)",
            ]
        else:
            cells += ["-"] * 5
        if cud:
            # cuda over triton in the mode less favourable to cuda
            ratio = None
            if tri:
                ratio = max(ms / tri["ms_by_mode"][m] for m, ms in cud["ms_by_mode"].items())
            cells += [
                per_mode(cud["ms_by_mode"]),
                "-" if ratio is None else f"{ratio:.2f} (target <= 1.5)",
            ]
        else:
            cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def best_stock_cell(best: dict, rows: dict) -> str:
    """The fastest stock variant's ms in each mode (`best`: mode -> provider), named once where
    one variant is the fastest in every mode."""
    ms = [rows[p]["ms_by_mode"][mode] for mode, p in best.items()]
    names = [p.removeprefix("stock ") for p in best.values()]
    if len(set(names)) == 1:
        return f"{names[0]} " + " / ".join(f"{v:.3f}" for v in ms)
    return " / ".join(f"{name} {v:.3f}" for name, v in zip(names, ms, strict=True))


def sweep_lines(rows: list[dict]) -> list[str]:
    lines = [
        f"ms: {modes_of(rows)}",
        "",
        "| what | dtype | N | provider | ms | x eager | x best stock (best) | % roofline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        roof = r.get("fraction_of_copy_bandwidth")
        lines.append(
            f"| {r['what']} | {r['dtype']} | {r['batch']} | {r['provider']} | "
            f"{per_mode(r['ms_by_mode'])} | {r['speedup_vs_eager']:.2f} | "
            f"{r['speedup_vs_best_stock']:.2f} ({r['best_stock'].removeprefix('stock ')}) | "
            f"{'' if roof is None else f'{100 * roof:.0f}%'} |"
        )
    return lines


def train_lines(train: dict) -> list[str]:
    lines = [
        "| training step | N | ms (" + modes_of(train["steps"], "step_ms_by_mode") + ") | "
        "x SimpleCNN (target 2 at 4096) |",
        "|---|---|---|---|",
    ]
    for r in train["steps"]:
        lines.append(
            f"| {r['model']} | {r['batch']} | {per_mode(r['step_ms_by_mode'], '{:.2f}')} | "
            f"{r['speedup']:.2f} |"
        )
    for m in train["memory"]:
        kept, peak = m["saved_for_backward_bytes"] / 2**20, m["peak_step_bytes"] / 2**20
        lines.append(
            f"| {m['model']} memory | {m['batch']} | kept {kept:.0f} MiB, peak {peak:.0f} MiB | |"
        )
    return lines


def summary(out: Path) -> str:
    lines = ["## Failed steps", *step_lines(out / "log.txt"), "", "## Tests (junit.xml)"]
    lines += test_lines(out / "junit.xml")
    names = ["cuda-target.json", "cuda-sweep.json", "cuda-models.json", "train-cuda.json"]
    results = {name: load(out / name) for name in names}
    lines += ["", "## Speed"]
    missing = [name for name, result in results.items() if result is None]
    if missing:
        lines.append(f"missing or unreadable: {', '.join(missing)}")
    header = machine_line(list(results.values()))
    if header:
        lines.append(header)
    if results["cuda-target.json"]:
        lines += ["", *target_lines(results["cuda-target.json"])]
    sweep_rows = [
        row
        for name in ("cuda-sweep.json", "cuda-models.json")
        for row in (results[name] or {"rows": []})["rows"]
    ]
    if sweep_rows:
        lines += ["", *sweep_lines(sweep_rows)]
    if results["train-cuda.json"]:
        lines += ["", *train_lines(results["train-cuda.json"])]
    return "\n".join(lines) + "\n"


def main(out: Path) -> None:
    text = summary(out)
    (out / "summary.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
