#!/usr/bin/env bash
# The emulated CUDA kernels under AddressSanitizer: a CPU stand-in for compute-sanitizer's
# memcheck (out-of-bounds and use-after-free accesses to global memory, i.e. to tensors).
# Usage: tests/cuda_emu/asan.sh [pytest args]   (from the repository root, after `make build`)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
# libstdc++ too: python is not linked with it, and ASan must find its __cxa_throw at start
LIBASAN="$(${CXX:-g++} -print-file-name=libasan.so) $(${CXX:-g++} -print-file-name=libstdc++.so.6)"
FASTNN_EMU_ASAN=1 ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 LD_PRELOAD="$LIBASAN" \
  "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_emu.py "$@"
