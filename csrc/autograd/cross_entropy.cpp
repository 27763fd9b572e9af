// fastnn fused cross-entropy under autograd: the Autograd-key kernels of
// fastnn::cross_entropy_forward and (once-differentiable) fastnn::cross_entropy_backward.
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
// Saved for backward: x, t, w, lse and total_weight (no log-probabilities). The device
// kernels are in csrc/cpu/cross_entropy.cpp and csrc/cuda/cross_entropy.cu.
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

at::Tensor cross_entropy_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input,
                                           const at::Tensor& target,
                                           const std::optional<at::Tensor>& weight,
                                           int64_t reduction, int64_t ignore_index,
                                           const at::Tensor& lse, const at::Tensor& total_weight,
                                           double label_smoothing) {
  at::Tensor dx = autograd::below_autograd([&] {
    return ops::cross_entropy_backward(grad_output, input, target, weight, reduction,
                                       ignore_index, lse, total_weight, label_smoothing);
  });
  return autograd::once_differentiable({dx}, "cross_entropy", grad_output, input, weight)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnn, Autograd, m) {
  m.impl("cross_entropy_forward", &cross_entropy_forward_autograd);
  m.impl("cross_entropy_backward", &cross_entropy_backward_autograd);
}

}  // namespace fastnn
