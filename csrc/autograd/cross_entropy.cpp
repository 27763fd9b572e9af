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
// Forward mode: loss_t = the loss's gradient applied to x_t, i.e. the sum over the classes
//           (and over all positions when reduced) of cross_entropy_backward(1) * x_t ('mean':
//           that of 'sum' / total_weight, NaN when it is 0 as natively); for
//           the backward op, dx_t = cross_entropy_backward(g_t) + the x-term above with x_t
//           in place of gg (the Hessian of log-sum-exp is symmetric).
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
#include <limits>
#include <optional>
#include <tuple>

#include "fastnn/autograd.h"
#include "fastnn/ops.h"

namespace fastnn {
namespace {

using autograd::AutogradContext;
using autograd::variable_list;

// The class dim of a loss input: (C) or (N, C, ...).
int64_t class_dim(const at::Tensor& x) { return x.dim() == 1 ? 0 : 1; }

// d (reduced) loss / d (per-position) loss applied to a per-element product: summed over
// the classes for reduction 'none' (the loss keeps the positions), else over everything.
at::Tensor sum_over_classes(const at::Tensor& v, const at::Tensor& x, int64_t reduction) {
  return reduction == at::Reduction::None ? v.sum(class_dim(x)) : v.sum();
}

// g / total_weight ('mean'), NaN when total_weight is 0, as the loss itself (mean_of in
// loss_shapes.h) and as natively: g / 0 would be an infinity where label smoothing keeps
// the rest of the term non-zero. Divided in total_weight's dtype (float32 for the half
// types, whose own range it may exceed) and rounded once to g's.
at::Tensor over_total_weight(const at::Tensor& g, const at::Tensor& total_weight) {
  return (g.to(total_weight.scalar_type()) / total_weight)
      .masked_fill(total_weight.eq(0), std::numeric_limits<double>::quiet_NaN())
      .to(g.scalar_type());
}

// The derivative of cross_entropy_backward's output dx in x, applied to v (x's shape): dx
// is soft * p - (terms constant in x), so this is soft * p * (v - sum_c v * p), with
// soft = g ((1 - eps) w[t] + eps / C * sum(w)) (/ total_weight for 'mean'), 0 at ignored
// positions. Symmetric in (v, the gradient it is contracted with), so both the double
// backward (v = gg) and forward mode (v = x_t) use it.
at::Tensor softmax_term(const at::Tensor& g, const at::Tensor& x, const at::Tensor& t,
                        const at::Tensor& w, int64_t reduction, int64_t ignore_index,
                        const at::Tensor& total_weight, double eps, const at::Tensor& v) {
  const int64_t cd = class_dim(x);
  const at::Tensor keep = t.ne(ignore_index);
  const double C = static_cast<double>(x.size(cd));
  at::Tensor soft = reduction == at::Reduction::Mean ? over_total_weight(g, total_weight) : g;
  if (w.defined()) {
    at::Tensor wt = w.take(t.masked_fill(keep.logical_not(), 0)) * (1.0 - eps);
    if (eps != 0) wt = wt + w.sum() * (eps / C);
    soft = soft * wt;
  }
  const at::Tensor p = at::softmax(x, cd);
  // soft is per position (the target's shape), or one value (0-d: 'mean'/'sum' unweighted)
  const at::Tensor soft_b = soft.dim() == 0 ? soft : soft.unsqueeze(cd);
  const at::Tensor d = soft_b * p * (v - (v * p).sum(cd, /*keepdim=*/true));
  return at::where(keep.unsqueeze(cd), d, at::zeros_like(d));
}

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
  autograd::check_weight_not_differentiable("cross_entropy", weight);
  if (autograd::has_tangent(input)) {
    const at::Tensor x = autograd::primal(input);
    auto out = cross_entropy_forward_autograd(x, target, weight, reduction, ignore_index,
                                              label_smoothing);
    const auto& [loss, lse, total_weight] = out;
    autograd::save_duals<CrossEntropyFunction>(
        loss, {input, target, weight.value_or(at::Tensor()), lse, total_weight});
    // 'mean' as the 'sum' tangent over total_weight, so that a zero total weight (every
    // target ignored, or no rows) gives NaN like the loss, as natively.
    const bool mean = reduction == at::Reduction::Mean;
    const at::Tensor per_unit = ops::cross_entropy_backward(
        at::ones_like(loss), x, target, weight, mean ? at::Reduction::Sum : reduction,
        ignore_index, lse, total_weight, label_smoothing);
    const at::Tensor t = sum_over_classes(per_unit * autograd::tangent(input), x, reduction);
    autograd::set_tangent(loss, mean ? over_total_weight(t, total_weight) : t);
    return out;
  }
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
    // (grad_output, input, target, weight, reduction, ignore_index, lse, total_weight,
    //  label_smoothing)
    variable_list out(9);
    if (ctx->needs_input_grad(0)) {
      const at::Tensor per_unit = ops::cross_entropy_backward(
          at::ones_like(g), x, t, autograd::optional_of(w), reduction, ignore_index, lse,
          total_weight, eps);
      out[0] = sum_over_classes(gg * per_unit, x, reduction);
    }
    if (ctx->needs_input_grad(1))
      out[1] = softmax_term(g, x, t, w, reduction, ignore_index, total_weight, eps, gg);
    return out;
  }
};

at::Tensor cross_entropy_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input,
                                           const at::Tensor& target,
                                           const std::optional<at::Tensor>& weight,
                                           int64_t reduction, int64_t ignore_index,
                                           const at::Tensor& lse, const at::Tensor& total_weight,
                                           double label_smoothing) {
  if (autograd::has_tangent(grad_output, input, weight, lse, total_weight)) {
    // lse and total_weight are not differentiable (as natively, nor is w): only the
    // tangents of dy and x move dx.
    const at::Tensor g = autograd::primal(grad_output), x = autograd::primal(input),
                     m = autograd::primal(lse), tw = autograd::primal(total_weight);
    const auto w = autograd::primal(weight);
    at::Tensor grad_input = cross_entropy_backward_autograd(
        g, x, target, w, reduction, ignore_index, m, tw, label_smoothing);
    autograd::save_duals<CrossEntropyBackwardFunction>(
        grad_input, {grad_output, input, target, w.value_or(at::Tensor()), m, tw});
    const at::Tensor g_t = autograd::tangent(grad_output), x_t = autograd::tangent(input);
    at::Tensor t;
    if (g_t.defined())
      t = ops::cross_entropy_backward(g_t, x, target, w, reduction, ignore_index, m, tw,
                                      label_smoothing);
    if (x_t.defined())
      t = autograd::add_tangents(t, softmax_term(g, x, target, w.value_or(at::Tensor()),
                                                 reduction, ignore_index, tw,
                                                 label_smoothing, x_t));
    autograd::set_tangent(grad_input, t);
    return grad_input;
  }
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
