#!/usr/bin/env bash
# On a machine with a GPU: build fastnn against the torch installed there, run the CUDA
# tests, compute-sanitizer (memcheck, racecheck) over every op, the kernel checks, and (full
# mode) the benchmarks and MNIST training. Logs and results go to OUTDIR; a summary is
# printed last.
#
#   scripts/gpu_check.sh OUTDIR [quick]
#
# STEPS="tests memcheck ..." runs only the named steps (after the build, which is
# incremental when the build folder is kept), so the checks can be split over several
# shorter runs: build tests gemm_check wgmma_check tma_check tma_bench ops_check fuzz
# memcheck racecheck wgmma_memcheck wgmma_racecheck tma_memcheck tma_racecheck, and in full
# mode bench wmma_bench train train_graph. fuzz runs scripts/fuzz_ops.py on the GPU for
# FUZZ_SECONDS (default 120). The tma_* steps check and time the TMA wgmma kernel
# (FASTNN_WGMMA=tma-all / tma), which is not the default until it has been measured.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR [quick]}
MODE=${2:-full}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONUNBUFFERED=1
# The GPU image's default compiler (CC/CXX=/opt/gcc/bin/..., a wrapper with its own
# toolchain paths) links a second libstdc++ into the extension, which crashes as soon
# as c10 formats a number into an error message. Build with the system compiler
# (override with FASTNN_CC / FASTNN_CXX).
if [ -x "${FASTNN_CXX:-/usr/bin/g++}" ]; then
  export CC=${FASTNN_CC:-/usr/bin/gcc} CXX=${FASTNN_CXX:-/usr/bin/g++}
fi
declare -A status
ALL_STEPS="build tests gemm_check wgmma_check tma_check tma_bench ops_check fuzz memcheck racecheck wgmma_memcheck wgmma_racecheck tma_memcheck tma_racecheck bench wmma_bench train train_graph"
if [ -n "${STEPS:-}" ]; then
  STEPS=$(echo "$STEPS" | tr ',\t\n' '   ')
  for s in $STEPS; do
    [[ " $ALL_STEPS " == *" $s "* ]] || { echo "gpu_check.sh: unknown step '$s' in STEPS (known: $ALL_STEPS)"; exit 2; }
  done
fi
selected() { [ -z "${STEPS:-}" ] || [[ " $STEPS " == *" $1 "* ]]; }

step() {  # step NAME LOGFILE CMD...: run CMD, log to OUT/LOGFILE, record pass/fail
  local name=$1 log=$2; shift 2
  if [ "$name" != build ] && ! selected "$name"; then
    return 0
  fi
  local t0=$SECONDS
  "$@" > "$OUT/$log" 2>&1
  local rc=$?
  status[$name]="rc=$rc $((SECONDS - t0))s"
  echo "== $name: rc=$rc ($((SECONDS - t0)) s)"
  [ $rc -eq 0 ] || tail -n 25 "$OUT/$log"
  return $rc
}

{ nvidia-smi; $PY -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; } > "$OUT/machine.txt" 2>&1
step build build.log $PY -m pip install --no-build-isolation --no-deps -v -e . || exit 1
# The suite in parallel workers when pytest-xdist is there (about 1.5 minutes on the H100
# machine with 8), without tests/test_cuda_emu.py: the emulator runs CUDA code on the CPU.
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")
step tests pytest.log env OMP_NUM_THREADS=2 $PY -m pytest -q -rs $XDIST --ignore=tests/test_cuda_emu.py tests
step gemm_check gemm_check.log $PY scripts/gemm_check.py
# The Hopper wgmma GEMM (on by default for large products; gemm_check times it): correctness
# on every shape it can take (FASTNN_WGMMA=all).
step wgmma_check wgmma_check.log env FASTNN_WGMMA=all $PY scripts/gemm_check.py --no-bench
# The TMA wgmma kernel (opt-in): the same correctness checks on every shape it can take,
# then its timings against cuBLAS on the products it takes by default.
step tma_check tma_check.log env FASTNN_WGMMA=tma-all $PY scripts/gemm_check.py --no-bench
step tma_bench tma_bench.log env FASTNN_WGMMA=tma $PY scripts/gemm_check.py
step ops_check ops_check.log $PY scripts/ops_check.py
step fuzz fuzz.log $PY scripts/fuzz_ops.py --device cuda --seconds "${FUZZ_SECONDS:-120}" --out "$OUT/fuzz.jsonl"
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
step memcheck memcheck.log compute-sanitizer --tool memcheck --error-exitcode 1 $PY scripts/sanitize_ops.py
step racecheck racecheck.log compute-sanitizer --tool racecheck --error-exitcode 1 $PY scripts/sanitize_ops.py
step wgmma_memcheck wgmma_memcheck.log env FASTNN_WGMMA=all compute-sanitizer --tool memcheck --error-exitcode 1 $PY scripts/sanitize_ops.py
step wgmma_racecheck wgmma_racecheck.log env FASTNN_WGMMA=all compute-sanitizer --tool racecheck --error-exitcode 1 $PY scripts/sanitize_ops.py
step tma_memcheck tma_memcheck.log env FASTNN_WGMMA=tma-all compute-sanitizer --tool memcheck --error-exitcode 1 $PY scripts/sanitize_ops.py
step tma_racecheck tma_racecheck.log env FASTNN_WGMMA=tma-all compute-sanitizer --tool racecheck --error-exitcode 1 $PY scripts/sanitize_ops.py
unset PYTORCH_NO_CUDA_MEMORY_CACHING
if [ "$MODE" != full ] && { selected bench || selected wmma_bench || selected train || selected train_graph; } && [ -n "${STEPS:-}" ]; then
  echo "== note: bench, wmma_bench, train and train_graph run in full mode only"
fi
if [ "$MODE" = full ]; then
  step bench bench.log $PY -m benchmarks.run --device cuda --out "$OUT/results"
  # the WMMA GEMM (what GPUs other than compute capability 9.0 run) timed against cuBLAS
  step wmma_bench wmma_bench.log env FASTNN_WGMMA=0 $PY scripts/gemm_check.py --no-big
  # MNIST, 5 epochs, native vs fastnn, eager and whole-step CUDA graph (needs the data:
  # FASTNN_DATA pointing at torchvision's layout, MNIST/raw/*.gz).
  if [ -d "${FASTNN_DATA:-/nonexistent}/MNIST/raw" ]; then
    step train train.log $PY -m fastnn.train --impl both --device cuda --no-progress
    step train_graph train_graph.log $PY -m fastnn.train --impl both --device cuda --cuda-graph --no-progress
  elif selected train || selected train_graph; then
    echo "== train: skipped (set FASTNN_DATA to a folder with MNIST/raw)"
  fi
fi
echo "== summary"; for k in "${!status[@]}"; do echo "$k: ${status[$k]}"; done
