#!/usr/bin/env bash
# The prepared GPU check: build against this machine's torch, the GPU test tier,
# compute-sanitizer on the CUDA kernels, the GPU benchmark; logs and results in OUT_DIR, and a
# short table of the speed targets last. Sized for ~6 minutes on one H100 with no internet:
# nothing is downloaded or installed, the installed torch is never touched.
#
#   bench/gpu_check.sh OUT_DIR          (on the device machine: bench/gpu_check.sh "$OUT")
#
# OUT_DIR gets: log.txt (every step's output), summary.md (the table printed last),
# cuda-target.{json,png} (batch 4096 vs eager and torch.compile max-autotune), cuda-sweep.{json,png},
# train-cuda.json (training steps and memory).
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
step build 150 $PY setup.py build_ext --inplace

# GPU test tier: every backend against stock on the GPU, CUDA graphs, determinism (autotuning
# off: the tier compiles dozens of shapes).
step tests 150 env SIMPLECNN_TRITON_AUTOTUNE=0 $PY -m pytest tests -x -q -m "not slow" -p no:cacheprovider

step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 1 $PY bench/sanitize_case.py
step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 1 $PY bench/sanitize_case.py

# The issue's targets: batch 4096, fp32 and bf16, against stock eager and max-autotune.
step bench-target 150 $PY bench/run.py --device cuda --dtype float32 bfloat16 --cases 3-18 \
  --batches 4096 --out "$out" --name cuda-target
# Generality: batch sizes, wide channels, the model (torch.compile left out for time).
step bench-sweep 120 $PY bench/run.py --device cuda --dtype float32 bfloat16 --compile-mode none \
  --out "$out" --name cuda-sweep

# Training: FusedSimpleCNN vs SimpleCNN steps (target at 4096: 2x), memory at 1024.
step train 60 $PY bench/train_step.py --device cuda --batches 1024 4096 --memory-batch 1024 \
  --out "$out"

echo "failed steps: ${failed[*]:-none}" | tee -a "$log"
$PY bench/summarize.py "$out"
[ ${#failed[@]} -eq 0 ]
