// dtype dispatch for fastnn kernels.
//
// FASTNN_DISPATCH_CPU(dtype, "op", [&] { ... scalar_t ... })   float32, float64, float16, bfloat16
// FASTNN_DISPATCH_CUDA(dtype, "op", [&] { ... scalar_t ... })  the same four
//
// Inside the lambda, `acc_t<scalar_t>` is the accumulation type: float for the
// half types, the type itself otherwise (float64 stays float64).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <type_traits>

namespace fastnn {
template <typename T>
using acc_t = at::opmath_type<T>;

// float16 / bfloat16: stored in 16 bits, computed in float32.
template <typename T>
constexpr bool is_half_v = sizeof(T) == 2;
}  // namespace fastnn

#define FASTNN_DISPATCH_CPU(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

#define FASTNN_DISPATCH_CUDA(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
