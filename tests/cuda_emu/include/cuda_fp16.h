// CUDA emulator (see cuda_runtime.h): __half is c10::Half (IEEE binary16, conversions
// from float round to nearest even, as __float2half_rn does).
#pragma once

#include <c10/util/Half.h>

using __half = c10::Half;
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half_rn(float f) { return __half(f); }

struct alignas(4) __half2 {
  __half x, y;
};
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
