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
// them (vec::Half16x8), else through c10's scalar conversions. Element-wise, so
// deterministic.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>


#include "fastnn/cpu_common.h"
#include "fastnn/cpu_features.h"
#include "fastnn/cpu_vec.h"

namespace fastnn {
namespace convert_detail {

constexpr int64_t kGrain = 65536;

// Src -> Dst, one of them float and the other T (float16 / bfloat16): Half16x8's loads
// and stores of T widen and round; its loads and stores of float are plain.
#if FASTNN_HAVE_X86
template <typename T, typename Src, typename Dst>
FASTNN_TARGET_AVX2 void convert_avx2(const Src* src, Dst* dst, int64_t n) {
  using A = vec::Half16x8<T>;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) A::store(dst + i, A::load(src + i));
  for (; i < n; ++i) dst[i] = static_cast<Dst>(src[i]);
}
#endif

template <typename T, typename Src, typename Dst>
void convert(const Src* src, Dst* dst, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
#if FASTNN_HAVE_X86
    if (cpu_has_avx2_fma()) return convert_avx2<T>(src + b, dst + b, e - b);
#endif
    for (int64_t i = b; i < e; ++i) dst[i] = static_cast<Dst>(src[i]);
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
    convert_detail::convert<c10::BFloat16>(src->const_data_ptr<c10::BFloat16>(), out.data_ptr<float>(), t.numel());
  else
    convert_detail::convert<c10::Half>(src->const_data_ptr<c10::Half>(), out.data_ptr<float>(), t.numel());
  return out;
}

// dst (dense, float16 / bfloat16) = src (dense float32, dst's number of elements).
inline void narrow_into(const at::Tensor& src, const at::Tensor& dst) {
  if (dst.scalar_type() == at::kBFloat16)
    convert_detail::convert<c10::BFloat16>(src.const_data_ptr<float>(), dst.data_ptr<c10::BFloat16>(), dst.numel());
  else
    convert_detail::convert<c10::Half>(src.const_data_ptr<float>(), dst.data_ptr<c10::Half>(), dst.numel());
}

}  // namespace fastnn
