// Run-time CPU feature detection for the hand-vectorised CPU kernels.
//
// The extension is compiled for the baseline x86-64 ISA; kernels that use AVX2,
// FMA and F16C are compiled with __attribute__((target("avx2,fma,f16c"))) and chosen
// here at run time, so one build runs on every x86-64 CPU (no -march=native).
#pragma once

#include <cstdlib>
#include <cstring>

namespace fastnn {

// False also when ATEN_CPU_CAPABILITY=default, PyTorch's own switch to its portable
// kernels: fastnn then runs its scalar paths too (those every non-x86 CPU runs), which is
// how the test suite covers them on an x86 machine.
inline bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    const char* cap = std::getenv("ATEN_CPU_CAPABILITY");
    if (cap != nullptr && std::strcmp(cap, "default") == 0) return false;
    // F16C (float16 <-> float32 conversions) ships with every AVX2 CPU; checked anyway.
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return has;
#else
  return false;
#endif
}

}  // namespace fastnn

#if defined(__x86_64__) || defined(__i386__)
#define FASTNN_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FASTNN_HAVE_X86 1
#else
#define FASTNN_TARGET_AVX2
#define FASTNN_HAVE_X86 0
#endif
