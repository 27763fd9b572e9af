// fastnn CPU Linear, forward and backward, on fastnn's own GEMM (gemm.h).
//
// Forward:  y = x W^T + b
//   x (*, in) viewed as X [M, in] (M = product of the leading dims; 1-D x is
//   one row), W [out, in], b [out] optional  ->  y (*, out), dense.
//   One GEMM: A = X (strides as given), B = W^T (read through W's strides,
//   no transposed copy), bias added in the GEMM epilogue.
// Backward, from dY [M, out] (grad_output viewed like x):
//   dx = dY W        [M, in]   (shape of x)   A = dY,   B = W
//   dW = dY^T X      [out, in]                A = dY^T, B = X
//   db = sum_m dY    [out]                    deterministic column sums
//   Only the entries selected by output_mask are computed; the others are None.
// float16 / bfloat16: the float32 op runs on widened (exact) copies of the operands
// and each result is rounded once (cpu_convert.h), so products accumulate in float32.
// Work split: the GEMM packs B, then splits C into row/column chunk tasks over
// at::parallel_for threads (see gemm.cpp); small problems stay on the calling
// thread. The column sums split columns over threads. Every output element is
// computed by one thread in a fixed order: results are deterministic and do
// not depend on the thread count.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "fastnn/checks.h"
#include "fastnn/cpu_convert.h"
#include "fastnn/dispatch.h"
#include "gemm.h"

namespace fastnn {
namespace {

// Views t (*, F) as 2-D [M, F] without copying when its leading dims can be
// flattened; copies otherwise. Returns a tensor with usable 2-D strides.
at::Tensor as_2d(const at::Tensor& t) {
  const int64_t f = t.size(-1);
  if (t.dim() == 2) return t;
  if (t.dim() == 1) return t.view({1, f});
  // reshape returns a view when the leading dims are collapsible, else a copy.
  // (M is computed explicitly: reshape(-1, 0) is ambiguous.)
  int64_t m = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) m *= t.size(d);
  return t.reshape({m, f});
}

std::vector<int64_t> out_shape(const at::Tensor& input, int64_t out_features) {
  std::vector<int64_t> s(input.sizes().begin(), input.sizes().end());
  s.back() = out_features;
  return s;
}

void check_weight(const char* op, const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2, "fastnn::", op, ": `weight` must be 2-D (out_features, in_features), got shape ",
              weight.sizes(), ".");
  TORCH_CHECK(input.dim() >= 1, "fastnn::", op,
              ": `input` must have at least 1 dimension (*, in_features), got a 0-d tensor.");
  TORCH_CHECK(input.size(-1) == weight.size(1), "fastnn::", op, ": input has ", input.size(-1),
              " features but weight expects ", weight.size(1), " (input shape ", input.sizes(),
              ", weight shape ", weight.sizes(), "); the last dim of input must equal weight.shape[1].");
}

// t widened to float32 when the op reads its values, else a float32 stand-in of t's
// shape (a broadcast zero: no copy) for the shape checks.
at::Tensor widened_if(bool read, const at::Tensor& t) {
  return read ? widened(t) : at::Tensor(at::detail::empty_cpu({}, at::kFloat)).expand(t.sizes());
}

std::optional<at::Tensor> narrowed(const std::optional<at::Tensor>& f, const at::Tensor& like) {
  if (!f.has_value()) return std::nullopt;
  at::Tensor out = dense_empty(f->sizes(), like);
  narrow_into(*f, out);
  return out;
}

}  // namespace

at::Tensor linear_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "linear_forward";
  check_floating(op, "input", input);
  check_floating(op, "weight", weight);
  check_same_dtype(op, "weight", weight, "input", input);
  check_same_device(op, "weight", weight, "input", input);
  check_weight(op, input, weight);
  const bool has_bias = bias.has_value() && bias->defined();
  at::Tensor b;
  if (has_bias) {
    check_floating(op, "bias", *bias);
    check_same_dtype(op, "bias", *bias, "input", input);
    check_same_device(op, "bias", *bias, "input", input);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "fastnn::", op,
                ": `bias` must have shape [", weight.size(0), "] (out_features), got ",
                bias->sizes(), ".");
    b = bias->contiguous();
  }
  if (is_half(input)) {
    const at::Tensor yf = linear_forward_cpu(widened(input), widened(weight),
                                             has_bias ? std::optional<at::Tensor>(widened(b)) : std::nullopt);
    at::Tensor y = dense_empty(yf.sizes(), input);
    narrow_into(yf, y);
    return y;
  }

  const int64_t out_f = weight.size(0), in_f = weight.size(1);
  at::Tensor y = at::empty(out_shape(input, out_f), input.options().memory_format(at::MemoryFormat::Contiguous));
  const at::Tensor x = as_2d(input);
  const int64_t M = x.size(0);
  if (M == 0 || out_f == 0) return y;

  // float32 / float64 here: the half types took the widened path above
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "linear_forward_cpu", [&] {
    gemm<scalar_t>(M, out_f, in_f, x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1),
                   weight.const_data_ptr<scalar_t>(), weight.stride(1), weight.stride(0),
                   y.mutable_data_ptr<scalar_t>(), out_f,
                   has_bias ? b.const_data_ptr<scalar_t>() : nullptr, scalar_t(0));
  });
  return y;
}

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>>
linear_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                    const at::Tensor& weight, std::array<bool, 3> output_mask) {
  constexpr const char* op = "linear_backward";
  check_floating(op, "grad_output", grad_output);
  check_floating(op, "input", input);
  check_floating(op, "weight", weight);
  check_same_dtype(op, "input", input, "grad_output", grad_output);
  check_same_dtype(op, "weight", weight, "grad_output", grad_output);
  check_same_device(op, "input", input, "grad_output", grad_output);
  check_same_device(op, "weight", weight, "grad_output", grad_output);
  check_weight(op, input, weight);
  const int64_t out_f = weight.size(0), in_f = weight.size(1);
  {
    const auto expect = out_shape(input, out_f);
    TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expect), "fastnn::", op,
                ": `grad_output` has shape ", grad_output.sizes(), " but the output of linear has shape ",
                at::IntArrayRef(expect), " (input shape ", input.sizes(), ", weight shape ",
                weight.sizes(), ").");
  }

  if (is_half(input)) {
    // dx reads the weight, dW the input; db only grad_output
    auto [gi, gw, gb] = linear_backward_cpu(widened(grad_output), widened_if(output_mask[1], input),
                                            widened_if(output_mask[0], weight), output_mask);
    return std::make_tuple(narrowed(gi, input), narrowed(gw, input), narrowed(gb, input));
  }

  const auto opts = input.options().memory_format(at::MemoryFormat::Contiguous);
  std::optional<at::Tensor> grad_input, grad_weight, grad_bias;
  const at::Tensor dy = as_2d(grad_output);
  const int64_t M = dy.size(0);

  if (output_mask[0]) {
    at::Tensor gi = at::empty(input.sizes(), opts);
    if (M > 0 && in_f > 0) {
      AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "linear_backward_cpu", [&] {
        // dx[M, in] = dY[M, out] * W[out, in]
        gemm<scalar_t>(M, in_f, out_f, dy.const_data_ptr<scalar_t>(), dy.stride(0), dy.stride(1),
                       weight.const_data_ptr<scalar_t>(), weight.stride(0), weight.stride(1),
                       gi.mutable_data_ptr<scalar_t>(), in_f, nullptr, scalar_t(0));
      });
    }
    grad_input = std::move(gi);
  }
  if (output_mask[1]) {
    at::Tensor gw = at::empty({out_f, in_f}, opts);
    if (out_f > 0 && in_f > 0) {
      const at::Tensor x = as_2d(input);
      AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "linear_backward_cpu", [&] {
        // dW[out, in] = dY^T[out, M] * X[M, in]   (M == 0: zeros)
        gemm<scalar_t>(out_f, in_f, M, dy.const_data_ptr<scalar_t>(), dy.stride(1), dy.stride(0),
                       x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1),
                       gw.mutable_data_ptr<scalar_t>(), in_f, nullptr, scalar_t(0));
      });
    }
    grad_weight = std::move(gw);
  }
  if (output_mask[2]) {
    at::Tensor gb = at::empty({out_f}, opts);
    if (out_f > 0) {
      const at::Tensor d = (M == 0 || dy.stride(1) == 1) ? dy : dy.contiguous();
      AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "linear_backward_cpu", [&] {
        col_sum<scalar_t>(M, out_f, d.const_data_ptr<scalar_t>(), d.stride(0),
                          gb.mutable_data_ptr<scalar_t>());
      });
    }
    grad_bias = std::move(gb);
  }
  return std::make_tuple(std::move(grad_input), std::move(grad_weight), std::move(grad_bias));
}

TORCH_LIBRARY_IMPL(fastnn, CPU, m) {
  m.impl("linear_forward", &linear_forward_cpu);
  m.impl("linear_backward", &linear_backward_cpu);
}

}  // namespace fastnn
