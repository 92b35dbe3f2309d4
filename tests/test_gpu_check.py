"""The GPU check's parts that run without a GPU: bench/gpu_check.sh's syntax and time budget,
bench/summarize.py on recorded sample results, the GPU benchmark's stock variants and timing
bookkeeping (bench/run.py, bench/measure.py), and bench/train_step.py's output folder.

tests/data/gpu_check/ holds the samples: invented figures (not measurements) in the format
bench/run.py and bench/train_step.py write, a junit.xml with a pass, a failure, an error and a
skip, and a log.txt in which the test tier failed and bench-sweep ran out of time mid-line (its
exit marker after its output, as on the H200)."""

import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SCRIPT = BENCH / "gpu_check.sh"
SAMPLES = Path(__file__).resolve().parent / "data" / "gpu_check"
BUDGET_S = 590  # the device tool runs a command for at most 600 s

sys.path.insert(0, str(BENCH))  # the bench scripts import each other as top-level modules
import measure  # noqa: E402
import run  # noqa: E402


def summarize(out: Path) -> str:
    """bench/summarize.py OUT_DIR, as gpu_check.sh runs it: what it prints."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "summarize.py"), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (out / "summary.md").read_text() == done.stdout
    return done.stdout


@pytest.fixture
def results(tmp_path):
    """A copy of the sample results, to cut short or delete from."""
    out = tmp_path / "out"
    shutil.copytree(SAMPLES, out)
    return out


def sample_rows(name):
    return json.loads((SAMPLES / name).read_text())["rows"]


def test_gpu_check_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_check_time_limits_fit_the_budget():
    text = SCRIPT.read_text()
    steps = re.findall(r"^\s*step (\S+) (\d+) ", text, re.M)
    # Every step call has a literal limit (none that this sum would miss)...
    assert len(steps) == len(re.findall(r"^\s*step ", text, re.M))
    names = {name for name, _ in steps}
    assert {"build", "tests", "memcheck", "racecheck", "bench-target", "train"} <= names
    # ...and the summary, run after the steps, has one too.
    others = [int(s) for s in re.findall(r"^\s*timeout (\d+) ", text, re.M)]
    assert others, "the summary runs with a time limit"
    total = sum(int(limit) for _, limit in steps) + sum(others)
    assert total <= BUDGET_S, f"step limits add up to {total} s, over the {BUDGET_S} s budget"


def test_summary_names_failed_steps_and_failing_tests_above_the_speed_tables(results):
    text = summarize(results)
    failed_steps = text[: text.index("## Tests")]
    assert "- tests: exit 1" in failed_steps
    assert "- bench-sweep: out of time" in failed_steps
    assert "build" not in failed_steps and "train" not in failed_steps
    assert "4 tests: 1 passed, 1 failed, 1 errors, 1 skipped" in text
    # Each failing test's id and the first line of its message, on one line.
    failure = (
        "- tests.test_triton::test_kernel_nan_and_inf[dot-torch.float16]: failed: "
        "AssertionError: NaN/Inf mismatch at 12 of 4608 outputs: fused inf, stock nan\n"
    )
    error = (
        "- tests.test_gpu::test_compile_reduce_overhead_cuda_graphs[triton]: error: "
        'failed on setup with "torch.OutOfMemoryError: CUDA out of memory. '
        'Tried to allocate 2.00 GiB"\n'
    )
    assert failure in text and error in text
    assert "test_wide_layer" not in text  # skipped, and passed tests, are only counted
    assert text.index(failure) < text.index("| layer |") < text.index("| what |")


def test_summary_reports_the_target_figures_in_both_timing_modes(results):
    text = summarize(results)
    assert "TF32 allowed: cuDNN conv True, cuBLAS matmul False" in text
    rows = {(r["dtype"], r["provider"]): r for r in sample_rows("cuda-target.json")}
    triton = rows["float32", "fused triton"]
    line = next(
        line for line in text.splitlines() if line.startswith("| layer 3->18 32x32 | float32")
    )
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[3] == "0.412 / 0.398"  # stock eager, cold / warm
    assert cells[5] == "compiled (max-autotune) 0.205 / 0.188"  # the best stock in both modes
    assert cells[6] == "0.052 / 0.044"
    assert cells[7] == f"{triton['speedup_vs_eager']:.2f} (target 6)"
    assert cells[9] == f"{triton['speedup_vs_best_stock']:.2f}"
    assert cells[10] == f"{100 * triton['fraction_of_copy_bandwidth']:.0f}% (target 80%)"
    # cuda over triton in the mode less favourable to cuda: warm, 0.062 / 0.044
    assert cells[12] == f"{0.062 / 0.044:.2f} (target <= 1.5)"


def test_summary_reports_sweep_models_and_training(results):
    text = summarize(results)
    # 64->64 bfloat16: cudnn.benchmark is the fastest stock variant cold, channels_last warm.
    triton_64 = next(
        r
        for r in sample_rows("cuda-sweep.json")
        if r["what"].startswith("layer 64->64") and r["provider"] == "fused triton"
    )
    assert triton_64["best_stock_by_mode"] == {
        "cold": "stock cudnn.benchmark",
        "warm": "stock channels_last",
    }
    assert (
        f"| layer 64->64 32x32 | bfloat16 | 256 | fused triton | 0.097 / 0.089 | "
        f"{triton_64['speedup_vs_eager']:.2f} | {triton_64['speedup_vs_best_stock']:.2f} "
        f"(channels_last) |" in text
    )
    assert "| SimpleCNN model | float32 | 4096 | fused cuda | 1.070 / 1.010 |" in text
    train = json.loads((SAMPLES / "train-cuda.json").read_text())
    fused = next(r for r in train["steps"] if r["model"] == "FusedSimpleCNN")
    assert f"| FusedSimpleCNN | 4096 | 3.91 / 3.70 | {fused['speedup']:.2f} |" in text
    assert "| FusedSimpleCNN memory | 1024 | kept 60 MiB, peak 142 MiB | |" in text


def test_summary_with_files_missing_or_cut_short(results):
    junit = (results / "junit.xml").read_text()
    (results / "junit.xml").write_text(junit[: len(junit) // 2])
    target = (results / "cuda-target.json").read_text()
    (results / "cuda-target.json").write_text(target[: len(target) // 2])
    (results / "train-cuda.json").unlink()
    text = summarize(results)
    assert "junit.xml unreadable" in text
    assert "missing or unreadable: cuda-target.json, train-cuda.json" in text
    assert "| layer |" not in text and "| training step |" not in text
    assert "| SimpleCNN model | float32 | 4096 | fused cuda |" in text  # the rest still shown
    assert "- bench-sweep: out of time" in text


def test_summary_of_an_empty_result_directory(tmp_path):
    text = summarize(tmp_path)
    assert "no log.txt" in text and "no junit.xml" in text
    assert "missing or unreadable: cuda-target.json, cuda-sweep.json" in text


def test_summary_skips_the_test_interrupted_at_the_time_limit(results):
    # pytest, interrupted (SIGINT), writes the running test as a testcase without a name.
    junit = (results / "junit.xml").read_text()
    cut = junit.replace("</testsuite>", '<testcase time="0.000" /></testsuite>')
    (results / "junit.xml").write_text(cut)
    assert "4 tests: 1 passed, 1 failed, 1 errors, 1 skipped" in summarize(results)


@pytest.mark.parametrize(
    ("name", "case"), [("cuda-target.json", "3-18"), ("cuda-models.json", "model")]
)
def test_sample_rows_have_the_keys_run_py_writes(name, case):
    # The samples stay in run.py's format: the keys of a row it makes now, for a layer (with
    # the fraction of copy bandwidth) and for a model (without).
    modes = {
        "cold": {"stock eager": 2.0, "fused cuda": 1.0},
        "warm": {"stock eager": 2.0, "fused cuda": 1.0},
    }
    info = {"device": "cuda", "copy_bandwidth_gbs": 4000.0}
    moved = 10**6 if case in run.LAYERS else None
    fresh = run.rows_for(info, case, torch.float32, 1, modes, {}, 10**9, moved)
    for row in sample_rows(name):
        assert set(row) == set(fresh[0])


@pytest.mark.slow
def test_train_step_creates_its_out_folder(tmp_path):
    out = tmp_path / "new" / "results"  # not there yet, as bench/run.py also allows
    subprocess.run(
        [sys.executable, str(BENCH / "train_step.py"), "--out", str(out), "--batches", "8",
         "--memory-batch", "8", "--compile-mode", "none"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    result = json.loads((out / "train-cpu.json").read_text())
    assert [m["model"] for m in result["memory"]] == ["SimpleCNN", "FusedSimpleCNN"]


def test_stock_variants_per_device():
    # Each variant's call: its layout, its compile mode, and whether cuDNN benchmarks.
    def stock_call(channels_last, mode):
        layout = "channels_last" if channels_last else "nchw"
        return lambda: (layout, mode, torch.backends.cudnn.benchmark)

    assert not torch.backends.cudnn.benchmark
    cuda = run.stock_variants("cuda", "max-autotune", stock_call)
    assert {name: call() for name, call in cuda.items()} == {
        "stock eager": ("nchw", None, False),
        "stock channels_last": ("channels_last", None, False),
        "stock cudnn.benchmark": ("nchw", None, True),
        "stock compiled (max-autotune)": ("nchw", "max-autotune", False),
    }
    cpu = run.stock_variants("cpu", "default", stock_call)
    assert {name: call() for name, call in cpu.items()} == {
        "stock eager": ("nchw", None, False),
        "stock channels_last": ("channels_last", None, False),
        "stock compiled (default)": ("nchw", "default", False),
        "stock compiled channels_last (default)": ("channels_last", "default", False),
    }
    assert list(run.stock_variants("cuda", "none", stock_call)) == [
        "stock eager",
        "stock channels_last",
        "stock cudnn.benchmark",
    ]


def test_cudnn_benchmark_is_on_during_its_provider_calls_only():
    before = torch.backends.cudnn.benchmark
    call = run.with_cudnn_benchmark(lambda: torch.backends.cudnn.benchmark)
    assert call() is True
    assert torch.backends.cudnn.benchmark == before

    def fails():
        raise RuntimeError("conv failed")

    with pytest.raises(RuntimeError):
        run.with_cudnn_benchmark(fails)()
    assert torch.backends.cudnn.benchmark == before


def test_cudnn_benchmark_provider_is_timed_on_a_fresh_thread():
    # ATen caches cuDNN plans per thread, without the benchmark flag in the key: on the timing
    # thread the provider would reuse the plan the eager provider's calls cached.
    threads = []  # names: identities of finished threads are reused
    call = run.with_cudnn_benchmark(lambda: threads.append(threading.current_thread().name))
    for _ in range(2):
        assert measure._timed(lambda fn: fn() or 1.0, call) == 1.0
    assert len(set(threads)) == 2 and threading.current_thread().name not in threads
    measure._timed(lambda fn: fn() or 1.0, lambda: threads.append(threading.current_thread().name))
    assert threads[-1] == threading.current_thread().name  # the others on the timing thread


def test_best_stock_is_the_fastest_variant_in_each_timing_mode():
    modes = {
        "cold": {
            "stock eager": 1.0,
            "stock channels_last": 0.8,
            "stock cudnn.benchmark": 0.5,
            "fused triton": 0.25,
        },
        "warm": {
            "stock eager": 1.0,
            "stock channels_last": 0.3,
            "stock cudnn.benchmark": 0.4,
            "fused triton": 0.2,
        },
    }
    info = {"device": "cuda", "copy_bandwidth_gbs": 4000.0}
    rows = run.rows_for(info, "3-18", torch.float32, 1, modes, {}, 10**9, 10**6)
    triton = next(r for r in rows if r["provider"] == "fused triton")
    assert triton["best_stock_by_mode"] == {
        "cold": "stock cudnn.benchmark",
        "warm": "stock channels_last",
    }
    assert triton["speedup_vs_best_stock_by_mode"] == pytest.approx({"cold": 2.0, "warm": 1.5})
    # The headline: the mode less favourable to the fused kernel.
    assert triton["speedup_vs_best_stock"] == pytest.approx(1.5)
    assert triton["best_stock"] == "stock channels_last"
    assert triton["ms"] == 0.25  # the first mode's (cold)
    assert triton["speedup_vs_eager"] == pytest.approx(4.0)  # cold 4.0, warm 5.0


@pytest.mark.parametrize(
    ("matmul", "overall", "tf32"),
    [
        ("none", "none", False),
        ("none", "tf32", True),
        ("ieee", "tf32", False),
        ("tf32", "ieee", True),
    ],
)
def test_matmul_tf32_read_from_the_precision_api(matmul, overall, tf32):
    # Set and restored through the precision API (reading the legacy flag raises while the
    # matmul precision is "tf32"); monkeypatch cannot restore these module properties.
    settings = (torch.backends.cuda.matmul, torch.backends)
    saved = [s.fp32_precision for s in settings]
    try:
        for setting, precision in zip(settings, (matmul, overall), strict=True):
            setting.fp32_precision = precision
        assert measure._matmul_allows_tf32() is tf32
    finally:
        for setting, precision in zip(settings, saved, strict=True):
            setting.fp32_precision = precision
    assert torch.backends.cuda.matmul.allow_tf32 is False  # the legacy flag reads again


def test_warm_gpu_timing_is_per_call_over_blocks(monkeypatch):
    # CUDA events faked by a clock that each call advances by 0.5 ms: the warm time is the
    # per-call time, within the warm-up and repetition budget of about 125 ms.
    clock = {"ms": 0.0}

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            self.at = clock["ms"]

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return end.at - self.at

    def call():
        clock["ms"] += 0.5

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    assert measure._time_cuda_warm(call) == pytest.approx(0.5)
    assert 100 <= clock["ms"] <= 135


def test_the_peak_a_cpu_row_is_measured_against():
    # float32 against the float32 FMA peak of the level the kernels run at (avx512_bf16's float32
    # kernels are avx512's), bfloat16 at avx512_bf16 against vdpbf16ps's, else none.
    assert run.peak_level("fused cpu", "avx512_bf16", torch.float32) == "avx512"
    assert run.peak_level("fused cpu", "avx512_bf16", torch.bfloat16) == "avx512_bf16"
    assert run.peak_level("fused cpu", "avx512", torch.bfloat16) is None
    assert run.peak_level("fused cpu", "avx2", torch.float32) == "avx2"
    assert run.peak_level("fused@avx2", "avx512_bf16", torch.float32) == "avx2"
    assert run.peak_level("fused@avx2", "avx512_bf16", torch.bfloat16) is None
    assert run.peak_level("fused cpu", "avx512", torch.float16) is None
