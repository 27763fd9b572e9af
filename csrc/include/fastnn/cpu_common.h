// Helpers shared by fastnn's CPU kernels (csrc/cpu/*.cpp).
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>

namespace fastnn {

// A dense CPU tensor of `like`'s dtype. The same allocation as at::empty, without the
// dispatcher round trip, which matters at the tiny, per-call-overhead-bound sizes.
inline at::Tensor dense_empty(at::IntArrayRef sizes, const at::Tensor& like) {
  return at::Tensor(at::detail::empty_cpu(sizes, like.scalar_type()));
}

// A loss reduction's partial sums over one fixed chunk of positions, kept in double
// and combined in chunk order, so a reduction does not depend on the thread count.
struct LossPartial {
  double loss = 0, weight = 0;
};

// Raises the IndexError for a class index outside [0, C) that is not ignore_index.
[[noreturn]] C10_NOINLINE inline void throw_bad_target(const char* op, int64_t t, int64_t C,
                                                       int64_t ignore_index) {
  TORCH_CHECK_INDEX(false, "fastnn::", op, ": Target ", t,
                    " is out of bounds: class indices must be in [0, ", C - 1,
                    "] (C = ", C, ") or equal ignore_index (", ignore_index, ").");
  std::abort();  // unreachable
}

}  // namespace fastnn
