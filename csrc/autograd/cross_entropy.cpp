// fastnn fused cross-entropy under autograd: the Autograd-key kernels of
// fastnn::cross_entropy_forward and fastnn::cross_entropy_backward.
//
// Forward:  m_i = max_c x[i, c],  lg_i = log(sum_c exp(x[i, c] - m_i))
//           loss_i = -w[t_i] * ((x[i, t_i] - m_i) - lg_i) (0 where t_i == ignore_index),
//           with label smoothing eps: (1 - eps) * that - eps / C * sum_c w[c] *
//           ((x[i, c] - m_i) - lg_i); reduced; x (N, C), (C) or (N, C, d1, ...); also
//           returns lse = the pairs
//           (m_i, lg_i) (shape of t plus a last dim of 2) and total_weight, neither
//           differentiable.
// Backward: dx[i, c] = g_i * w[t_i] * (exp((x[i, c] - m_i) - lg_i) - [c == t_i])
//           (g / total_weight for 'mean'); with eps, (hot + uni * sum(w)) * softmax -
//           hot * onehot - uni * w for hot = g (1 - eps) w[t_i], uni = g eps / C; one
//           kernel, softmax recomputed from lse.
//           No gradient flows to the target or to the class weights, as natively.
// Double backward, for the gradient gg of dx (p = softmax(x) over the class dim):
//           towards g: sum over the classes of gg * dx/dg, with dx/dg = cross_entropy_backward
//           at g = 1; towards x: soft_i * p * (gg - sum_c gg * p), soft_i = g_i * ((1 - eps)
//           w[t_i] + eps / C * sum(w)) (/ total_weight for 'mean'), 0 for ignored rows
//           (the derivative of soft * p; the one-hot and uniform terms are constant in x).
//           In native ops, so that it is differentiable again.
// Saved for backward: x, t, w, lse and total_weight (no log-probabilities). The device
// kernels are in csrc/cpu/cross_entropy.cpp and csrc/cuda/cross_entropy.cu.
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
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

struct CrossEntropyFunction : public autograd::Function<CrossEntropyFunction> {
  // The loss is the Function's only output; lse and total_weight leave through
  // `side_out`. They are computed below autograd, so they carry no history (neither is
  // differentiable), and the node needs no mark_non_differentiable, which compiled
  // autograd does not support in C++ Functions.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            int64_t reduction, int64_t ignore_index, double label_smoothing,
                            std::array<at::Tensor, 2>* side_out) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [loss, lse, total_weight] = ops::cross_entropy_forward(input, target, weight, reduction,
                                                                ignore_index, label_smoothing);
    ctx->save_for_backward({input, target, weight.value_or(at::Tensor()), lse, total_weight});
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["label_smoothing"] = label_smoothing;
    *side_out = {lse, total_weight};
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // (input, target, weight, reduction, ignore_index, label_smoothing, side_out)
    variable_list out(7);
    const auto saved = ctx->get_saved_variables();
    out[0] = ops::cross_entropy_backward(grads[0], saved[0], saved[1],
                                         autograd::optional_of(saved[2]),
                                         ctx->saved_data["reduction"].toInt(),
                                         ctx->saved_data["ignore_index"].toInt(), saved[3],
                                         saved[4],
                                         ctx->saved_data["label_smoothing"].toDouble());
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_forward_autograd(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t reduction, int64_t ignore_index, double label_smoothing) {
  autograd::check_no_forward_ad("cross_entropy", input, weight);
  autograd::check_weight_not_differentiable("cross_entropy", weight);
  if (!autograd::needs_graph(input)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::cross_entropy_forward(input, target, weight, reduction, ignore_index,
                                      label_smoothing);
  }
  std::array<at::Tensor, 2> side;  // lse, total_weight
  at::Tensor loss = CrossEntropyFunction::apply(input, target, weight, reduction, ignore_index,
                                                label_smoothing, &side);
  return {loss, side[0], side[1]};
}

struct CrossEntropyBackwardFunction
    : public autograd::Function<CrossEntropyBackwardFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output,
                            const at::Tensor& input, const at::Tensor& target,
                            const std::optional<at::Tensor>& weight, int64_t reduction,
                            int64_t ignore_index, const at::Tensor& lse,
                            const at::Tensor& total_weight, double label_smoothing) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward(
        {grad_output, input, target, weight.value_or(at::Tensor()), lse, total_weight});
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["label_smoothing"] = label_smoothing;
    return ops::cross_entropy_backward(grad_output, input, target, weight, reduction,
                                       ignore_index, lse, total_weight, label_smoothing);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &g = saved[0], &x = saved[1], &t = saved[2], &w = saved[3],
                     &lse = saved[4], &total_weight = saved[5], &gg = grads[0];
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    const int64_t ignore_index = ctx->saved_data["ignore_index"].toInt();
    const double eps = ctx->saved_data["label_smoothing"].toDouble();
    const int64_t cd = x.dim() == 1 ? 0 : 1;  // the class dim
    // (grad_output, input, target, weight, reduction, ignore_index, lse, total_weight,
    //  label_smoothing)
    variable_list out(9);
    if (ctx->needs_input_grad(0)) {
      const at::Tensor per_unit = ops::cross_entropy_backward(
          at::ones_like(g), x, t, autograd::optional_of(w), reduction, ignore_index, lse,
          total_weight, eps);
      out[0] = reduction == at::Reduction::None ? (gg * per_unit).sum(cd) : (gg * per_unit).sum();
    }
    if (ctx->needs_input_grad(1)) {
      const at::Tensor keep = t.ne(ignore_index);
      const double C = static_cast<double>(x.size(cd));
      at::Tensor soft = reduction == at::Reduction::Mean ? g / total_weight : g;
      if (w.defined()) {
        at::Tensor wt = w.take(t.masked_fill(keep.logical_not(), 0)) * (1.0 - eps);
        if (eps != 0) wt = wt + w.sum() * (eps / C);
        soft = soft * wt;
      }
      const at::Tensor p = at::softmax(x, cd);
      // soft is per position (the target's shape), or one value (0-d: 'mean'/'sum' unweighted)
      const at::Tensor soft_b = soft.dim() == 0 ? soft : soft.unsqueeze(cd);
      const at::Tensor dx2 = soft_b * p * (gg - (gg * p).sum(cd, /*keepdim=*/true));
      out[1] = at::where(keep.unsqueeze(cd), dx2, at::zeros_like(dx2));
    }
    return out;
  }
};

at::Tensor cross_entropy_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input,
                                           const at::Tensor& target,
                                           const std::optional<at::Tensor>& weight,
                                           int64_t reduction, int64_t ignore_index,
                                           const at::Tensor& lse, const at::Tensor& total_weight,
                                           double label_smoothing) {
  autograd::check_no_forward_ad("cross_entropy", grad_output, input, weight);
  if (!autograd::needs_graph(grad_output, input)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::cross_entropy_backward(grad_output, input, target, weight, reduction,
                                       ignore_index, lse, total_weight, label_smoothing);
  }
  return CrossEntropyBackwardFunction::apply(grad_output, input, target, weight, reduction,
                                             ignore_index, lse, total_weight, label_smoothing);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnn, Autograd, m) {
  m.impl("cross_entropy_forward", &cross_entropy_forward_autograd);
  m.impl("cross_entropy_backward", &cross_entropy_backward_autograd);
}

}  // namespace fastnn
