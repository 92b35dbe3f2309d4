#!/usr/bin/env bash
# The prepared GPU check: build against this machine's torch, the GPU test tier,
# compute-sanitizer on the CUDA kernels, the GPU benchmark; logs and results in OUT_DIR, and a
# short table of the speed targets last. Sized for ~6-7 minutes on one H100 with no internet
# (each step has its own time limit, so a slow step cannot take the rest with it):
# nothing is downloaded or installed, the installed torch is never touched.
#
#   bench/gpu_check.sh OUT_DIR          (on the device machine: bench/gpu_check.sh "$OUT")
#
# OUT_DIR gets: log.txt (every step's output), summary.md (the table printed last),
# cuda-target.json (batch 4096 vs eager and torch.compile max-autotune), cuda-sweep.json,
# cuda-models.json, train-cuda.json (training steps and memory). Charts are not kept: the device
# tool returns at most 8 files.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
log="$out/log.txt"
failed=()

# step NAME SECONDS COMMAND...: runs COMMAND with a time limit, its output appended to log.txt.
step() {
  local name=$1 limit=$2
  shift 2
  echo "== $(date +%T) $name (limit ${limit}s)" | tee -a "$log"
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  echo "== $name: exit $rc" | tee -a "$log"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

{
  nvidia-smi
  nvcc --version | tail -2
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
} >>"$log" 2>&1

# Build in place with the machine's torch (no pip: nothing fetched, nothing upgraded).
arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=$(nproc) SIMPLECNN_BUILD_CUDA=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step build 120 $PY setup.py build_ext --inplace

# GPU test tier: every GPU backend against stock (values, layouts, NaN/Inf, gradients), CUDA
# graphs, determinism, the Triton tests on the GPU. Autotuning off: the tier compiles dozens of
# shapes; the CPU-only tests ran in CI.
step tests 110 env SIMPLECNN_TRITON_AUTOTUNE=0 $PY -m pytest tests -x -q -m "not slow" \
  -p no:cacheprovider -k "cuda or gpu or triton"

# compute-sanitizer on the CUDA C++ kernel, small odd shapes.
step memcheck 40 compute-sanitizer --tool memcheck --error-exitcode 1 $PY bench/sanitize_case.py cuda
step racecheck 40 compute-sanitizer --tool racecheck --error-exitcode 1 $PY bench/sanitize_case.py cuda

# The issue's targets: batch 4096, fp32 and bf16, against stock eager and max-autotune.
step bench-target 100 $PY bench/run.py --device cuda --dtype float32 bfloat16 --cases 3-18 \
  --batches 4096 --out "$out" --name cuda-target
# Generality: batch sizes, wide channels, the models (torch.compile left out for time).
step bench-sweep 60 $PY bench/run.py --device cuda --dtype float32 bfloat16 --compile-mode none \
  --batches 1 256 16384 --cases 3-18 64-64 --out "$out" --name cuda-sweep
step bench-models 40 $PY bench/run.py --device cuda --compile-mode none --batches 4096 \
  --cases model vgg --out "$out" --name cuda-models

# Training: FusedSimpleCNN vs SimpleCNN steps (target at 4096: 2x), memory at 1024.
step train 40 $PY bench/train_step.py --device cuda --batches 4096 --memory-batch 1024 \
  --out "$out"

rm -f "$out"/*.png  # at most 8 files come back from the device machine
echo "failed steps: ${failed[*]:-none}" | tee -a "$log"
$PY bench/summarize.py "$out"
[ ${#failed[@]} -eq 0 ]
