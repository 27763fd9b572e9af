// fastnn Linear under autograd: the Autograd-key kernels of fastnn::linear_forward and
// (once-differentiable) fastnn::linear_backward.
//
// Forward:  y = x W^T + b        x (*, in), W (out, in), b (out) optional -> y (*, out)
// Backward: dx = dy W            (shape of x)
//           dW = dy^T x          (out, in), over all leading dims of x
//           db = sum of dy over the leading dims
// One fastnn::linear_backward call computes exactly the gradients autograd asks for
// (its output_mask). Saved for backward: x and W. The device kernels are in
// csrc/cpu/linear.cpp and csrc/cuda/linear.cu.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "fastnn/autograd.h"
#include "fastnn/ops.h"

namespace fastnn {
namespace {

using autograd::AutogradContext;
using autograd::variable_list;

struct LinearFunction : public autograd::Function<LinearFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({input, weight});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return ops::linear_forward(input, weight, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // Autograd's edges count only tensor arguments: the bias is edge 2 when present.
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_bias && ctx->needs_input_grad(2)};
    auto [dx, dw, db] = ops::linear_backward(grads[0], saved[0], saved[1], mask);
    return {dx.value_or(at::Tensor()), dw.value_or(at::Tensor()), db.value_or(at::Tensor())};
  }
};

at::Tensor linear_forward_autograd(const at::Tensor& input, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias) {
  autograd::check_no_forward_ad("linear", input, weight, bias);
  if (!autograd::needs_graph(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::linear_forward(input, weight, bias);
  }
  return LinearFunction::apply(input, weight, bias);
}

using OptTensor = std::optional<at::Tensor>;

std::tuple<OptTensor, OptTensor, OptTensor> linear_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  auto [dx, dw, db] = autograd::below_autograd(
      [&] { return ops::linear_backward(grad_output, input, weight, output_mask); });
  auto out = autograd::once_differentiable(
      {dx.value_or(at::Tensor()), dw.value_or(at::Tensor()), db.value_or(at::Tensor())},
      "linear", grad_output, input, weight);
  return {autograd::optional_of(out[0]), autograd::optional_of(out[1]),
          autograd::optional_of(out[2])};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnn, Autograd, m) {
  m.impl("linear_forward", &linear_forward_autograd);
  m.impl("linear_backward", &linear_backward_autograd);
}

}  // namespace fastnn
