// Output layout of fastnn's elementwise ops (relu_forward, relu_backward), on every device.
//
// As native elementwise ops do, the output takes its input's layout the way
// torch.empty_like(input) gives it: the same strides when the input is non-overlapping and
// dense (contiguous, transposed, channels_last, ...), else a dense tensor in the input's
// suggested memory format. The operands are then brought to the output's strides (no copy
// when they already have them), so a kernel walks all of them linearly over
// [data_ptr, data_ptr + numel).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

namespace fastnn {

// An uninitialised output with `input`'s layout. `empty_contiguous` makes the common
// contiguous case (a device's cheapest allocation, no dispatcher round trip).
template <class EmptyContiguous>
at::Tensor empty_with_layout_of(const at::Tensor& input, EmptyContiguous empty_contiguous) {
  return input.is_contiguous() ? empty_contiguous() : at::empty_like(input);
}

// `t` with the strides of `out` (a dense tensor of t's shape): t itself when it has them,
// else a copy in out's layout.
inline at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& out) {
  if ((t.is_contiguous() && out.is_contiguous()) || t.strides() == out.strides()) return t;
  at::Tensor copy = at::empty_like(out);
  copy.copy_(t);
  return copy;
}

}  // namespace fastnn
