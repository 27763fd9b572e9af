// float16 / bfloat16 <-> float32 for fastnn's CPU kernels.
//
// The CPU kernels compute the half types in float32 and round once at the end. Linear's
// GEMM does so on staged copies (its packing and K-blocked accumulation are float32
// code; the product needs a float32 result to round once); it uses these:
//   widened(t)            a dense float32 copy of t (exact)
//   narrow_into(src, dst) dst (dense, float16 / bfloat16) = src (dense float32),
//                         rounded to nearest even, as c10::Half / c10::BFloat16 do
// Both run over the flat element range split across threads (at::parallel_for, at
// least 64K elements per task), 8 lanes at a time with AVX2 + F16C when the CPU has
// them, else through c10's scalar conversions. Element-wise, so deterministic.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>
#include <type_traits>

#include "fastnn/cpu_common.h"
#include "fastnn/cpu_features.h"
#include "fastnn/cpu_vec.h"

namespace fastnn {
namespace convert_detail {

constexpr int64_t kGrain = 65536;

#if FASTNN_HAVE_X86
template <typename T>
FASTNN_TARGET_AVX2 void widen_avx2(const T* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, std::is_same_v<T, c10::BFloat16> ? vec::bf16_to_ps(h) : vec::f16_to_ps(h));
  }
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <typename T>
FASTNN_TARGET_AVX2 void narrow_avx2(const float* src, T* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(src + i);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     std::is_same_v<T, c10::BFloat16> ? vec::ps_to_bf16(v) : vec::ps_to_f16(v));
  }
  for (; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}
#endif

template <typename T>
void widen(const T* src, float* dst, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
#if FASTNN_HAVE_X86
    if (cpu_has_avx2_fma()) return widen_avx2(src + b, dst + b, e - b);
#endif
    for (int64_t i = b; i < e; ++i) dst[i] = static_cast<float>(src[i]);
  });
}

template <typename T>
void narrow(const float* src, T* dst, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
#if FASTNN_HAVE_X86
    if (cpu_has_avx2_fma()) return narrow_avx2(src + b, dst + b, e - b);
#endif
    for (int64_t i = b; i < e; ++i) dst[i] = static_cast<T>(src[i]);
  });
}

}  // namespace convert_detail

inline bool is_half(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

// A dense float32 copy of t (float16 / bfloat16), same shape.
inline at::Tensor widened(const at::Tensor& t) {
  const c10::MaybeOwned<at::Tensor> src = t.expect_contiguous();
  at::Tensor out = at::Tensor(at::detail::empty_cpu(t.sizes(), at::kFloat));
  if (t.scalar_type() == at::kBFloat16)
    convert_detail::widen(src->const_data_ptr<c10::BFloat16>(), out.data_ptr<float>(), t.numel());
  else
    convert_detail::widen(src->const_data_ptr<c10::Half>(), out.data_ptr<float>(), t.numel());
  return out;
}

// dst (dense, float16 / bfloat16) = src (dense float32, dst's number of elements).
inline void narrow_into(const at::Tensor& src, const at::Tensor& dst) {
  if (dst.scalar_type() == at::kBFloat16)
    convert_detail::narrow(src.const_data_ptr<float>(), dst.data_ptr<c10::BFloat16>(), dst.numel());
  else
    convert_detail::narrow(src.const_data_ptr<float>(), dst.data_ptr<c10::Half>(), dst.numel());
}

}  // namespace fastnn
