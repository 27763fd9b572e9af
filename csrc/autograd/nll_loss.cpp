// fastnn NLLLoss under autograd: the Autograd-key kernels of fastnn::nll_loss_forward and
// fastnn::nll_loss_backward.
//
// Forward:  loss_i = -w[t_i] * x[i, t_i] (0 where t_i == ignore_index), reduced by
//           `reduction`; x (N, C), (C) or (N, C, d1, ...), t of x's shape without C.
//           Also returns total_weight = sum of w[t_i] over non-ignored i (no gradient).
// Backward: dx[i, t_i] = -w[t_i] * g_i (g / total_weight for 'mean'), 0 elsewhere.
//           No gradient flows to the target or to the class weights, as natively.
// Double backward: dx is linear in g and does not depend on x's values, so the gradient
//           towards g is the loss itself applied to dx's gradient, nll_loss_forward(gg, t,
//           w) (as natively), and x gets zeros.
// Forward mode: the loss is linear in x, so loss_t = nll_loss_forward(x_t, t, w) (as
//           natively); for the backward op, dx_t = nll_loss_backward(g_t, ...).
// Saved for backward: x, t, w and total_weight. The device kernels are in
// csrc/cpu/nll_loss.cpp and csrc/cuda/nll_loss.cu.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "fastnn/autograd.h"
#include "fastnn/ops.h"

namespace fastnn {
namespace {

using autograd::AutogradContext;
using autograd::variable_list;

struct NLLLossFunction : public autograd::Function<NLLLossFunction> {
  // The loss is the Function's only output; total_weight leaves through `total_weight_out`.
  // It is computed below autograd, so it carries no history (natively it is not
  // differentiable either), and the node needs no mark_non_differentiable, which
  // compiled autograd does not support in C++ Functions.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            int64_t reduction, int64_t ignore_index, at::Tensor* total_weight_out) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [loss, total_weight] =
        ops::nll_loss_forward(input, target, weight, reduction, ignore_index);
    ctx->save_for_backward({input, target, weight.value_or(at::Tensor()), total_weight});
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["ignore_index"] = ignore_index;
    *total_weight_out = total_weight;
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(6);  // (input, target, weight, reduction, ignore_index, total_weight_out)
    const auto saved = ctx->get_saved_variables();
    out[0] = ops::nll_loss_backward(grads[0], saved[0], saved[1], autograd::optional_of(saved[2]),
                                    ctx->saved_data["reduction"].toInt(),
                                    ctx->saved_data["ignore_index"].toInt(), saved[3]);
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> nll_loss_forward_autograd(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t reduction, int64_t ignore_index) {
  autograd::check_weight_not_differentiable("nll_loss", weight);
  if (autograd::has_tangent(input)) {
    auto out = nll_loss_forward_autograd(autograd::primal(input), target, weight, reduction,
                                         ignore_index);
    autograd::set_tangent(std::get<0>(out),
                          std::get<0>(ops::nll_loss_forward(autograd::tangent(input), target,
                                                            weight, reduction, ignore_index)));
    return out;
  }
  if (!autograd::needs_graph(input)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::nll_loss_forward(input, target, weight, reduction, ignore_index);
  }
  at::Tensor total_weight;
  at::Tensor loss =
      NLLLossFunction::apply(input, target, weight, reduction, ignore_index, &total_weight);
  return {loss, total_weight};
}

struct NLLLossBackwardFunction : public autograd::Function<NLLLossBackwardFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output,
                            const at::Tensor& input, const at::Tensor& target,
                            const std::optional<at::Tensor>& weight, int64_t reduction,
                            int64_t ignore_index, const at::Tensor& total_weight) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({target, weight.value_or(at::Tensor()), input});
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["ignore_index"] = ignore_index;
    return ops::nll_loss_backward(grad_output, input, target, weight, reduction, ignore_index,
                                  total_weight);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // (grad_output, input, target, weight, reduction, ignore_index, total_weight)
    variable_list out(7);
    const auto saved = ctx->get_saved_variables();
    out[0] = std::get<0>(ops::nll_loss_forward(grads[0], saved[0], autograd::optional_of(saved[1]),
                                               ctx->saved_data["reduction"].toInt(),
                                               ctx->saved_data["ignore_index"].toInt()));
    if (ctx->needs_input_grad(1)) out[1] = at::zeros_like(saved[2]);  // zeros, as natively
    return out;
  }
};

at::Tensor nll_loss_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input,
                                      const at::Tensor& target,
                                      const std::optional<at::Tensor>& weight, int64_t reduction,
                                      int64_t ignore_index, const at::Tensor& total_weight) {
  if (autograd::has_tangent(grad_output, input, weight, total_weight)) {
    // Constant in x (and, as natively, in w): only dy's tangent moves dx.
    const auto w = autograd::primal(weight);
    const at::Tensor tw = autograd::primal(total_weight);
    at::Tensor grad_input =
        nll_loss_backward_autograd(autograd::primal(grad_output), autograd::primal(input),
                                   target, w, reduction, ignore_index, tw);
    const at::Tensor dy_t = autograd::tangent(grad_output);
    if (dy_t.defined())
      autograd::set_tangent(grad_input, ops::nll_loss_backward(dy_t, autograd::primal(input),
                                                               target, w, reduction,
                                                               ignore_index, tw));
    return grad_input;
  }
  if (!autograd::needs_graph(grad_output, input)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::nll_loss_backward(grad_output, input, target, weight, reduction, ignore_index,
                                  total_weight);
  }
  return NLLLossBackwardFunction::apply(grad_output, input, target, weight, reduction,
                                        ignore_index, total_weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnn, Autograd, m) {
  m.impl("nll_loss_forward", &nll_loss_forward_autograd);
  m.impl("nll_loss_backward", &nll_loss_backward_autograd);
}

}  // namespace fastnn
