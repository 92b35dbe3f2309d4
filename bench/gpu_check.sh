#!/usr/bin/env bash
# The prepared GPU check: build against this machine's torch, the GPU test tier,
# compute-sanitizer on the CUDA C++ and Triton kernels, the GPU benchmark; logs and results in
# OUT_DIR, and a summary last (failed steps, test counts and failures, the speed tables).
# Nothing is downloaded or installed, the installed torch is never touched.
#
# Budget: 590 s, under the device tool's 600 s per command, of a 15-minute GPU window (the
# machine's start takes ~40 s; what is left reruns the build and a step or two:
# `bench/gpu_check.sh OUT_DIR STEP...` runs the machine and build steps and the named ones
# only, a fresh machine keeps nothing). Every step has its own time limit (a slow step cannot
# take the rest with it; each gets SIGINT 5 s before its limit, so pytest still writes its junit
# file, then SIGKILL at it), and the limits of the steps below plus the summary's add up to
# 590 s (tests/test_gpu_check.py checks that they stay within it). The limits come from the
# first run, on an H200 with 16 cores (2026-11-29, bench/results/h200-*): importing torch the
# first time 10+ s, the build 27 s, the test tier 137 s on 14 workers, the sanitizer steps 29 s
# and 15 s, the launch step 12 s warm, bench-target 69 s (two torch.compile max-autotune
# compiles), each new layer and dtype of the sweep ~13 s of Triton compiles and autotuning and
# each new batch size ~11 s, the models over 40 s. run.py writes its JSON after every case, so a
# bench step that runs out of time keeps what it measured (train_step.py writes at its end).
#
#   bench/gpu_check.sh OUT_DIR [STEP...]    (on the device machine: bench/gpu_check.sh "$OUT")
#
# OUT_DIR gets: log.txt (every step's output), junit.xml (the test tier, every test's outcome),
# summary.md (what is printed last), cuda-target.json (batch 4096 vs the stock variants, among
# them torch.compile max-autotune), cuda-sweep.json, cuda-models.json, train-cuda.json (training
# steps and memory). Charts are not kept: the device tool returns at most 8 files.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUT_DIR [STEP...]}
only=" ${*:2} "  # the steps to run; blank: all
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
log="$out/log.txt"
failed=()

# step NAME SECONDS COMMAND...: runs COMMAND with a time limit, its output appended to log.txt;
# summarize.py reads the "== NAME: exit RC" lines (RC 124 or 137: out of time).
step() {
  local name=$1 limit=$2
  shift 2
  if [ "$only" != "  " ] && [[ "$only" != *" $name "* ]] && [[ " machine build " != *" $name "* ]]; then
    return
  fi
  echo "== $(date +%T) $name (limit ${limit}s)" | tee -a "$log"
  timeout --signal=INT --kill-after=5 "$((limit - 5))" "$@" >>"$log" 2>&1
  local rc=$?
  echo >>"$log" # a step cut off mid-line: its marker still on a line of its own
  echo "== $name: exit $rc" | tee -a "$log"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

step machine 25 bash -c 'nvidia-smi; nvcc --version | tail -2; "$0" -c "$1"' "$PY" \
  "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  'triton', triton.__version__, torch.cuda.get_device_name())"

# Build in place with the machine's torch (no pip: nothing fetched, nothing upgraded), for the
# visible GPU's architecture (setup.py leaves TORCH_CUDA_ARCH_LIST to torch when a GPU is there).
export MAX_JOBS=$(nproc) SIMPLECNN_BUILD_CUDA=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step build 40 $PY setup.py build_ext --inplace

# GPU test tier: every GPU backend against stock (values, layouts, NaN/Inf, gradients), CUDA
# graphs, determinism, the Triton tests on the GPU; the CPU-only tests ran in CI. Not -x: one
# run shows every failure (junit.xml). 14 workers of one CPU thread each (the float64
# references run on the CPU): the tests are light on the GPU and the time goes to Triton
# compiles on the CPU. Autotuning off: the tier compiles dozens of shapes.
step tests 155 env SIMPLECNN_TRITON_AUTOTUNE=0 OMP_NUM_THREADS=1 $PY -m pytest tests -q -m "not slow" \
  -p no:cacheprovider -n 14 --tb=short --junitxml="$out/junit.xml" -k "cuda or gpu or triton"

# compute-sanitizer on the project's kernels only (--kernel-name: the CUDA C++ kernel, Triton's
# two), small odd shapes, the first Triton config (autotuning under the sanitizer would run
# every config many times). No caching allocator: out-of-bounds reads of its slack inside a
# cached block would go unseen.
sanitizer=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 SIMPLECNN_TRITON_AUTOTUNE=0
  compute-sanitizer --error-exitcode 1 --kernel-name kns=fused_forward_kernel
  --kernel-name kns=_dot_kernel --kernel-name kns=_fma_kernel)
# First without the sanitizer: the cases' values, and their Triton kernels compiled into the
# disk cache (the tier compiles other specializations), which the sanitized runs then load.
step sanitize-warmup 30 env SIMPLECNN_TRITON_AUTOTUNE=0 $PY bench/sanitize_case.py cuda triton
step memcheck 35 "${sanitizer[@]}" --tool memcheck $PY bench/sanitize_case.py cuda triton
step racecheck 20 "${sanitizer[@]}" --tool racecheck $PY bench/sanitize_case.py cuda triton

# Host time per call at batch 1 (launch-bound), and where the Triton op's Python time goes.
# Autotuning off: tuned shapes launch the same way (_TUNED), without compiling every config
# of both kernels first (the step ran out of 15 s on the H200 with it on).
step launch 25 env SIMPLECNN_TRITON_AUTOTUNE=0 $PY bench/launch_overhead.py --device cuda --calls 200

# The issue's targets: batch 4096, fp32 and bf16, against every stock variant (eager,
# channels_last, cudnn.benchmark, torch.compile max-autotune: two max-autotune compiles).
step bench-target 80 $PY bench/run.py --device cuda --dtype float32 bfloat16 --cases 3-18 \
  --batches 4096 --out "$out" --name cuda-target
# Generality: batch sizes, wide channels, the models (torch.compile left out for time; the seed
# layer's batch sizes ran on the H200, bench/results/h200-cuda-sweep.json, and its batch 1 is
# the launch step's). Batch 1 (a small call: the CUDA C++ kernel by default) and 4096 (Triton):
# each new batch size costs ~11 s of autotuning.
step bench-sweep 80 $PY bench/run.py --device cuda --dtype float32 bfloat16 --compile-mode none \
  --batches 1 4096 --cases 64-64 --out "$out" --name cuda-sweep
step bench-models 60 $PY bench/run.py --device cuda --compile-mode none --batches 4096 \
  --cases model vgg --out "$out" --name cuda-models

# Training: FusedSimpleCNN vs SimpleCNN steps (target at 4096: 2x), memory at 1024.
step train 30 $PY bench/train_step.py --device cuda --batches 4096 --memory-batch 1024 \
  --out "$out"

rm -f "$out"/*.png # at most 8 files come back from the device machine
timeout 10 $PY bench/summarize.py "$out"
[ ${#failed[@]} -eq 0 ]
