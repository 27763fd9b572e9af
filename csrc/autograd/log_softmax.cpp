// fastnn LogSoftmax under autograd: the Autograd-key kernels of
// fastnn::log_softmax_forward and fastnn::log_softmax_backward.
//
// Forward:  y = x - log(sum(exp(x), dim))        any shape, any dim
// Backward: dx = dy - exp(y) * sum(dy, dim)      from the saved output y
// Double backward (native's formulas, in native ops), for the gradient g of dx:
//           towards dy: g - sum(g * exp(y), dim);  towards y: -sum(dy, dim) * exp(y) * g
// Forward mode: y_t = x_t - sum(x_t * softmax(x), dim) (native's formula); for the backward op,
//           dx_t = log_softmax_backward(dy_t, y) - exp(y) * y_t * sum(dy, dim).
// Saved for backward: y and dim. The device kernels are in csrc/cpu/log_softmax.cpp
// and csrc/cuda/log_softmax.cu.
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include "fastnn/autograd.h"
#include "fastnn/ops.h"

namespace fastnn {
namespace {

using autograd::AutogradContext;
using autograd::variable_list;

struct LogSoftmaxFunction : public autograd::Function<LogSoftmaxFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, int64_t dim) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor output = ops::log_softmax_forward(input, dim);
    ctx->save_for_backward({output});
    ctx->saved_data["dim"] = dim;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // (input, dim): no gradient for dim.
    return {ops::log_softmax_backward(grads[0], ctx->get_saved_variables()[0],
                                      ctx->saved_data["dim"].toInt()),
            at::Tensor()};
  }
};

at::Tensor log_softmax_forward_autograd(const at::Tensor& input, int64_t dim) {
  if (autograd::has_tangent(input)) {
    const at::Tensor x = autograd::primal(input), x_t = autograd::tangent(input);
    at::Tensor output = log_softmax_forward_autograd(x, dim);
    // softmax from x, not exp(output): a tangent computed from the output would hold the
    // output's node, which (below) saves the output with that tangent: a reference cycle.
    autograd::set_tangent(output, x_t - (x_t * at::softmax(x, dim)).sum(dim, /*keepdim=*/true));
    autograd::save_duals<LogSoftmaxFunction>(output, {output});
    return output;
  }
  if (!autograd::needs_graph(input)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::log_softmax_forward(input, dim);
  }
  return LogSoftmaxFunction::apply(input, dim);
}

struct LogSoftmaxBackwardFunction : public autograd::Function<LogSoftmaxBackwardFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output,
                            const at::Tensor& output, int64_t dim) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({grad_output, output});
    ctx->saved_data["dim"] = dim;
    return ops::log_softmax_backward(grad_output, output, dim);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &dy = saved[0], &y = saved[1], &g = grads[0];
    const int64_t dim = ctx->saved_data["dim"].toInt();
    const at::Tensor p = y.exp();
    // (grad_output, output, dim)
    return {g - (g * p).sum(dim, /*keepdim=*/true), -(dy.sum(dim, /*keepdim=*/true) * p * g),
            at::Tensor()};
  }
};

at::Tensor log_softmax_backward_autograd(const at::Tensor& grad_output, const at::Tensor& output,
                                         int64_t dim) {
  if (autograd::has_tangent(grad_output, output)) {
    const at::Tensor dy = autograd::primal(grad_output), y = autograd::primal(output);
    at::Tensor grad_input = log_softmax_backward_autograd(dy, y, dim);
    autograd::save_duals<LogSoftmaxBackwardFunction>(grad_input, {grad_output, output});
    const at::Tensor dy_t = autograd::tangent(grad_output), y_t = autograd::tangent(output);
    at::Tensor t;
    if (dy_t.defined()) t = ops::log_softmax_backward(dy_t, y, dim);
    if (y_t.defined()) t = autograd::add_tangents(t, -(dy.sum(dim, /*keepdim=*/true) * y.exp() * y_t));
    autograd::set_tangent(grad_input, t);
    return grad_input;
  }
  if (!autograd::needs_graph(grad_output, output)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::log_softmax_backward(grad_output, output, dim);
  }
  return LogSoftmaxBackwardFunction::apply(grad_output, output, dim);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnn, Autograd, m) {
  m.impl("log_softmax_forward", &log_softmax_forward_autograd);
  m.impl("log_softmax_backward", &log_softmax_backward_autograd);
}

}  // namespace fastnn
