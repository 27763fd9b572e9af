// fastnn Linear under autograd: the Autograd-key kernels of fastnn::linear_forward and
// fastnn::linear_backward, and linear_backward's kernel for PyTorch's older batching
// (vectorized jacobians, batched grad_outputs).
//
// Forward:  y = x W^T + b        x (*, in), W (out, in), b (out) optional -> y (*, out)
// Backward: dx = dy W            (shape of x)
//           dW = dy^T x          (out, in), over all leading dims of x
//           db = sum of dy over the leading dims
// One fastnn::linear_backward call computes exactly the gradients autograd asks for
// (its output_mask). Saved for backward, as natively: x only when W requires grad (dW
// reads it), W only when x requires grad (dx reads it). So a frozen layer does not keep
// its input alive, and an in-place change of that input after the forward is legal. An
// operand not saved is passed to linear_backward as a stand-in of the right shape whose
// data is never read.
// Double backward: dx, dW and db are bilinear in (dy, W) / (dy, x) and linear in dy, so
// for gradients gdx, gdW, gdb of them (each may be absent):
//   towards dy: gdx W^T + x gdW^T + gdb = linear(gdx, W) + linear(x, gdW, gdb)
//   towards x:  dy gdW   (linear_backward's dx with gdW as the weight)
//   towards W:  dy^T gdx (linear_backward's dW with gdx as the input)
// all fastnn ops, so differentiable again. A term is only formed when the forward
// computed the output it differentiates, so a stand-in operand is never read.
// Forward mode (tangents x_t, W_t, b_t, dy_t; absent ones are zero):
//   y_t  = x_t W^T + x W_t^T + b_t          = linear(x_t, W, b_t) + linear(x, W_t)
//   dx_t = dy_t W + dy W_t,  dW_t = dy_t^T x + dy^T x_t,  db_t = sum dy_t
// (linear_backward at dy_t, plus its dx with W_t as the weight and its dW with x_t as
// the input), each only for the outputs the call computes.
// The device kernels are in csrc/cpu/linear.cpp and csrc/cuda/linear.cu.
#include <ATen/LegacyVmapTransforms.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "fastnn/autograd.h"
#include "fastnn/ops.h"

namespace fastnn {
namespace {

using autograd::AutogradContext;
using autograd::variable_list;

// A tensor of `shape` with `like`'s dtype and device, for an operand linear_backward
// needs only the shape of: one element, expanded.
at::Tensor shape_only(const at::Tensor& like, at::IntArrayRef shape) {
  return at::empty({}, like.options()).expand(shape);
}

struct LinearFunction : public autograd::Function<LinearFunction> {
  static variable_list saved(const at::Tensor& input, const at::Tensor& weight) {
    return {weight.requires_grad() ? input : at::Tensor(),
            input.requires_grad() ? weight : at::Tensor()};
  }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor output = ops::linear_forward(input, weight, bias);  // checks the shapes
    ctx->save_for_backward(saved(input, weight));
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["in_features"] = weight.size(1);
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const int64_t in_features = ctx->saved_data["in_features"].toInt();
    const at::Tensor& dy = grads[0];
    at::Tensor input = saved[0], weight = saved[1];
    if (!input.defined()) {  // (*, in_features): dy's leading dims
      std::vector<int64_t> shape(dy.sizes().begin(), dy.sizes().end());
      shape.back() = in_features;
      input = shape_only(dy, shape);
    }
    if (!weight.defined()) weight = shape_only(dy, {dy.size(-1), in_features});
    // Autograd's edges count only tensor arguments: the bias is edge 2 when present.
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_bias && ctx->needs_input_grad(2)};
    auto [dx, dw, db] = ops::linear_backward(dy, input, weight, mask);
    return {dx.value_or(at::Tensor()), dw.value_or(at::Tensor()), db.value_or(at::Tensor())};
  }
};

// y_t = linear(x_t, W, b_t) + linear(x, W_t) for output y, absent tangents being zero.
at::Tensor linear_tangent(const at::Tensor& x, const at::Tensor& w, const at::Tensor& x_t,
                          const at::Tensor& w_t, const at::Tensor& b_t, const at::Tensor& y) {
  std::optional<at::Tensor> bias_t = autograd::optional_of(b_t);  // added to one term only
  at::Tensor t;
  if (x_t.defined()) {
    t = ops::linear_forward(x_t, w, bias_t);
    bias_t.reset();
  }
  if (w_t.defined()) {
    t = autograd::add_tangents(t, ops::linear_forward(x, w_t, bias_t));
    bias_t.reset();
  }
  if (bias_t.has_value()) t = bias_t->expand(y.sizes());
  return t;
}

at::Tensor linear_forward_autograd(const at::Tensor& input, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias) {
  if (autograd::has_tangent(input, weight, bias)) {
    const at::Tensor x = autograd::primal(input), w = autograd::primal(weight);
    at::Tensor output = linear_forward_autograd(x, w, autograd::primal(bias));
    autograd::save_duals<LinearFunction>(output, LinearFunction::saved(input, weight));
    autograd::set_tangent(output, linear_tangent(x, w, autograd::tangent(input),
                                                 autograd::tangent(weight),
                                                 autograd::tangent(bias), output));
    return output;
  }
  if (!autograd::needs_graph(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::linear_forward(input, weight, bias);
  }
  return LinearFunction::apply(input, weight, bias);
}

using OptTensor = std::optional<at::Tensor>;

// The outputs output_mask asks for, in the order (dx, dW, db), packed: a C++ Function's
// outputs must all be defined.
variable_list present(const std::tuple<OptTensor, OptTensor, OptTensor>& out) {
  variable_list list;
  for (const OptTensor& t : {std::get<0>(out), std::get<1>(out), std::get<2>(out)})
    if (t.has_value() && t->defined()) list.push_back(*t);
  return list;
}

// The inverse of `present`: (dx, dW, db), absent entries undefined.
std::array<at::Tensor, 3> unpack(const variable_list& list, std::array<bool, 3> mask) {
  std::array<at::Tensor, 3> out;
  size_t k = 0;
  for (size_t i = 0; i < 3; ++i)
    if (mask[i]) out[i] = list[k++];
  return out;
}

struct LinearBackwardFunction : public autograd::Function<LinearBackwardFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output,
                               const at::Tensor& input, const at::Tensor& weight,
                               std::array<bool, 3> output_mask) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({grad_output, input, weight});
    ctx->set_materialize_grads(false);  // an output not used downstream has no gradient
    ctx->saved_data["output_mask"] =
        c10::List<bool>({output_mask[0], output_mask[1], output_mask[2]});
    return present(ops::linear_backward(grad_output, input, weight, output_mask));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &dy = saved[0], &input = saved[1], &weight = saved[2];
    const c10::List<bool> mask = ctx->saved_data["output_mask"].toBoolList();
    const auto [gdx, gdw, gdb] = unpack(grads, {mask[0], mask[1], mask[2]});
    variable_list out(4);  // (grad_output, input, weight, output_mask)
    if (ctx->needs_input_grad(0)) {
      at::Tensor g;
      if (gdw.defined()) {
        g = ops::linear_forward(input, gdw, autograd::optional_of(gdb));
      } else if (gdb.defined()) {
        g = gdb.expand(dy.sizes());
      }
      if (gdx.defined()) {
        at::Tensor t = ops::linear_forward(gdx, weight, std::nullopt);
        g = g.defined() ? g + t : t;
      }
      out[0] = g;
    }
    if (ctx->needs_input_grad(1) && gdw.defined())
      out[1] = *std::get<0>(ops::linear_backward(dy, input, gdw, {true, false, false}));
    if (ctx->needs_input_grad(2) && gdx.defined())
      out[2] = *std::get<1>(ops::linear_backward(dy, gdx, weight, {false, true, false}));
    return out;
  }
};

std::tuple<OptTensor, OptTensor, OptTensor> linear_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  if (autograd::has_tangent(grad_output, input, weight)) {
    const at::Tensor dy = autograd::primal(grad_output), x = autograd::primal(input),
                     w = autograd::primal(weight);
    auto grads = linear_backward_autograd(dy, x, w, output_mask);
    const std::array<OptTensor, 3> out = {std::get<0>(grads), std::get<1>(grads),
                                          std::get<2>(grads)};
    for (const OptTensor& o : out) {
      if (o.has_value()) {  // every output has the node
        autograd::save_duals<LinearBackwardFunction>(*o, {grad_output, input, weight});
        break;
      }
    }
    const at::Tensor dy_t = autograd::tangent(grad_output), x_t = autograd::tangent(input),
                     w_t = autograd::tangent(weight);
    std::array<at::Tensor, 3> t;  // (dx_t, dW_t, db_t)
    if (dy_t.defined()) {
      auto [dx, dw, db] = ops::linear_backward(dy_t, x, w, output_mask);
      t = {dx.value_or(at::Tensor()), dw.value_or(at::Tensor()), db.value_or(at::Tensor())};
    }
    if (output_mask[0] && w_t.defined())
      t[0] = autograd::add_tangents(
          t[0], *std::get<0>(ops::linear_backward(dy, x, w_t, {true, false, false})));
    if (output_mask[1] && x_t.defined())
      t[1] = autograd::add_tangents(
          t[1], *std::get<1>(ops::linear_backward(dy, x_t, w, {false, true, false})));
    for (size_t k = 0; k < 3; ++k)
      if (out[k].has_value()) autograd::set_tangent(*out[k], t[k]);
    return grads;
  }
  if (!autograd::needs_graph(grad_output, input, weight)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::linear_backward(grad_output, input, weight, output_mask);
  }
  const variable_list out = LinearBackwardFunction::apply(grad_output, input, weight, output_mask);
  const auto [dx, dw, db] = unpack(out, output_mask);
  return {autograd::optional_of(dx), autograd::optional_of(dw), autograd::optional_of(db)};
}

// linear_backward under PyTorch's older batching (the Batched key: torch.autograd.grad with
// is_grads_batched=True, torch.autograd.functional.jacobian/hessian with vectorize=True,
// gradcheck's check_batched_grad), whose generic fallback cannot return optional tensors.
// One call per sample (per-sample weight gradients are separate products), stacked. The
// other ops return plain tensors, which that fallback batches itself; torch.func's vmap
// has its own rules (fastnn/_func.py).
std::tuple<OptTensor, OptTensor, OptTensor> linear_backward_batched(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  // Batch dims to the front of all three, aligned and expanded to the same batch shape.
  auto views = at::MultiBatchVmapTransform::logicalToPhysical({grad_output, input, weight});
  const int64_t nb = views[0].numBatchDims();
  const auto batch_shape = views[0].tensor().sizes().slice(0, nb);
  const int64_t samples = c10::multiply_integers(batch_shape);
  std::array<at::Tensor, 3> flat;  // (samples, logical shape...)
  for (size_t k = 0; k < 3; ++k) {
    const at::Tensor& t = views[k].tensor();
    std::vector<int64_t> shape{samples};
    shape.insert(shape.end(), t.sizes().begin() + nb, t.sizes().end());
    flat[k] = t.reshape(shape);
  }
  // Per-sample shapes of dx, dW, db: those of input and weight, and (out_features).
  const auto x_shape = flat[1].sizes().slice(1);
  const auto w_shape = flat[2].sizes().slice(1);
  const std::array<std::vector<int64_t>, 3> shapes = {
      std::vector<int64_t>(x_shape.begin(), x_shape.end()),
      std::vector<int64_t>(w_shape.begin(), w_shape.end()), std::vector<int64_t>{w_shape[0]}};

  std::array<std::vector<at::Tensor>, 3> per_sample;
  for (int64_t i = 0; i < samples; ++i) {
    auto [dx, dw, db] = ops::linear_backward(flat[0][i], flat[1][i], flat[2][i], output_mask);
    per_sample[0].push_back(dx.value_or(at::Tensor()));
    per_sample[1].push_back(dw.value_or(at::Tensor()));
    per_sample[2].push_back(db.value_or(at::Tensor()));
  }
  const auto to_logical = views[0].getPhysicalToLogicalMap();
  std::array<OptTensor, 3> out;
  for (size_t k = 0; k < 3; ++k) {
    if (!output_mask[k]) continue;
    std::vector<int64_t> shape(batch_shape.begin(), batch_shape.end());
    shape.insert(shape.end(), shapes[k].begin(), shapes[k].end());
    at::Tensor stacked = samples > 0 ? at::stack(per_sample[k]).view(shape)
                                     : at::empty(shape, flat[k == 0 ? 1 : 2].options());
    out[k] = to_logical.apply(stacked);
  }
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnn, Autograd, m) {
  m.impl("linear_forward", &linear_forward_autograd);
  m.impl("linear_backward", &linear_backward_autograd);
}

TORCH_LIBRARY_IMPL(fastnn, Batched, m) {
  m.impl("linear_backward", &linear_backward_batched);
}

}  // namespace fastnn
